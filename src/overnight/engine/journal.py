"""The night's journal: every event the engine writes, and the queue components write to.

The engine's own events (the night's start and end, the setup hook, components
connecting) are awaited: each is committed before the night goes on. What components and
protected settings observe is queued instead, in order and never awaited, so a handle
never waits on the ledger and works from a scenario's thread too.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ..ledger import Ledger, ops
from ..runtime import current_call


class EventKind(StrEnum):
    """Every event kind the engine writes. The values are what the ledger stores and the
    report reads: never rename one."""

    NIGHT_STARTED = "night_started"
    NIGHT_RESUMED = "night_resumed"
    NIGHT_ENDED = "night_ended"
    SETUP_DONE = "setup_done"
    SETUP_FAILED = "setup_failed"
    COMPONENT_DECLARED = "component_declared"
    COMPONENT_CONNECTED = "component_connected"
    COMPONENT_CONNECT_FAILED = "component_connect_failed"
    PROTECTED_FINGERPRINT_MISMATCH = "protected_fingerprint_mismatch"
    DEGRADATION_BLOCKED = "degradation_blocked"
    METRIC = "metric"


class Journal:
    """Writes one night's events to its ledger."""

    def __init__(self, ledger: Ledger, night_id: str, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.night_id = night_id
        self.clock = clock
        # What components record through (``Component.bind``): the queued form.
        self.recorder = _QueuedRecorder(self)

    async def event(
        self,
        kind: EventKind,
        message: str | None = None,
        data: Any = None,
        *,
        component: str | None = None,
    ) -> None:
        """An event of the night itself (no cycle, no attempt), committed before it returns."""
        await self.ledger.write(
            ops.add_event, self.night_id, self.clock(), kind.value, message, data, None, None, component
        )

    def submit(
        self,
        kind: str,
        message: str | None = None,
        data: Any = None,
        *,
        component: str | None = None,
    ) -> None:
        """Queue an event, attributed to the cycle and attempt of the call it comes from
        (``current_call``), if any. Never awaited; the writer commits in order."""
        scope = current_call.get()
        self.ledger.submit(
            ops.add_event,
            self.night_id,
            self.clock(),
            str(kind),
            message,
            data,
            scope.cycle if scope else None,
            scope.attempt if scope else None,
            component,
        )


class _QueuedRecorder:
    """``runtime.Recorder`` over a journal: components see only ``event``."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def event(
        self,
        kind: str,
        message: str | None = None,
        data: Any = None,
        *,
        component: str | None = None,
    ) -> None:
        self._journal.submit(kind, message, data, component=component)
