"""The night's journal: every event the engine writes, the queue components write to,
what the engine reads back of its night, and the night's own log file.

The engine's own events (the night's start and end, the setup hook, components
connecting) are awaited: each is committed before the night goes on. What components and
protected settings observe is queued instead, in order and never awaited, so a handle
never waits on the ledger and works from a scenario's thread too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..ledger import Ledger, ops, queries
from ..redaction import RedactingFormatter
from ..runtime import current_call

# How much of a traceback an attempt or the setup hook keeps (its end).
TRACEBACK_MAX = 20_000


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
    # Check lines removed from the scenario's code since the previous night (weakening.code).
    CODE_CHECKS = "code_checks"
    # A test of a pytest-suite night that did not pass: pytest's report of it (the step
    # keeps its outcome and message; this, what CI shows of a failure).
    TEST_REPORT = "test_report"


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

    # -- reading the night back (sync: call through asyncio.to_thread) -------------------

    def read_night(self) -> dict[str, Any] | None:
        with self.ledger.read() as conn:
            return queries.get_night(conn, self.night_id)

    def done_cycles(self) -> set[int]:
        with self.ledger.read() as conn:
            return queries.done_cycles(conn, self.night_id)

    def attempts_used(self) -> dict[int, tuple[int, int, int]]:
        with self.ledger.read() as conn:
            return queries.attempts_used(conn, self.night_id)

    def verdict_counts(self) -> Counter[str]:
        with self.ledger.read() as conn:
            return Counter(
                c["verdict"] for c in queries.cycles_of(conn, self.night_id) if c["status"] == "done"
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


class NightLog:
    """The night's ``orchestrator.log``: every ``overnight`` log line of this session,
    redacted, beside the night's other files."""

    def __init__(self) -> None:
        self._handler: logging.Handler | None = None

    def attach(self, path: Path) -> None:
        handler = QuietFileHandler(path, encoding="utf-8")
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        # The progress sink's lines repeat what the orchestrator logs; keep the file lean.
        handler.addFilter(lambda r: not r.name.startswith("overnight.progress"))
        root = logging.getLogger("overnight")
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._handler = handler

    def detach(self) -> None:
        if self._handler is not None:
            logging.getLogger("overnight").removeHandler(self._handler)
            self._handler.close()
            self._handler = None


class QuietFileHandler(logging.FileHandler):
    """orchestrator.log on a full disk: lines are lost, but no traceback reaches the
    console (the ledger's own error ends the night with one line)."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None
