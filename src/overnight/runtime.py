"""Per-attempt context shared between the engine and the components, without either
importing the other: which night, cycle, attempt and step a call belongs to, and where a
component records what it observed (usage, errors).

The engine sets ``current_call`` for every attempt's task (asyncio copies it into child
tasks and ``to_thread``); component handles read it to attribute token usage and errors
to the right cycle and step.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class CallScope:
    night_id: str
    cycle: int
    attempt: int
    steps: list[str]
    # step -> component -> calls: which components the attempt really used, per step
    # (a component declared but replayed or skipped shows as unused in the report).
    calls: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def step(self) -> str | None:
        return self.steps[-1] if self.steps else None

    def count(self, component: str) -> None:
        per_step = self.calls.setdefault(self.step or "-", {})
        per_step[component] = per_step.get(component, 0) + 1


current_call: ContextVar[CallScope | None] = ContextVar("overnight_current_call", default=None)


class Recorder(Protocol):
    """Where components write what they observe. The engine provides the ledger-backed one."""

    def event(
        self,
        kind: str,
        message: str | None = None,
        data: Any = None,
        *,
        component: str | None = None,
    ) -> None: ...


class NullRecorder:
    """Used before a component is bound to a night (e.g. ``overnight doctor``)."""

    def event(
        self,
        kind: str,
        message: str | None = None,
        data: Any = None,
        *,
        component: str | None = None,
    ) -> None:
        return None
