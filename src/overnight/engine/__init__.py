"""The engine: plans, the orchestrator, cycle contexts, the gate and progress sinks."""

from .context import CycleContext, CycleInput
from .gate import Gate
from .orchestrator import NightOutcome, Orchestrator
from .plan import Plan, compute_deadline

__all__ = [
    "CycleContext",
    "CycleInput",
    "Gate",
    "NightOutcome",
    "Orchestrator",
    "Plan",
    "compute_deadline",
]
