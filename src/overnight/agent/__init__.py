"""The repair agent: monitoring, incidents, bounded repairs, fallbacks, the guard."""

from .agent import RepairAgent
from .guard import Guard
from .monitor import ComponentMonitor
from .playbooks import DEGRADING_SHORTCUTS, playbook_for, register_playbook
from .settings import MonitorSettings
from .strategies import (
    BUILTIN_STRATEGIES,
    FreeOwnSpace,
    RaiseTimeout,
    RebuildPool,
    Reconnect,
    RefreshToken,
    RepairContext,
    RepairFailed,
    RepairSkipped,
    RestartCommand,
    RotateKey,
    Strategy,
    SwitchModel,
    WaitRetryAfter,
)

__all__ = [
    "BUILTIN_STRATEGIES",
    "DEGRADING_SHORTCUTS",
    "ComponentMonitor",
    "FreeOwnSpace",
    "Guard",
    "MonitorSettings",
    "RaiseTimeout",
    "RebuildPool",
    "Reconnect",
    "RefreshToken",
    "RepairAgent",
    "RepairContext",
    "RepairFailed",
    "RepairSkipped",
    "RestartCommand",
    "RotateKey",
    "Strategy",
    "SwitchModel",
    "WaitRetryAfter",
    "playbook_for",
    "register_playbook",
]
