"""What runs beside the cycles for the whole night: the repair agent, the fault driver.

Each is started with the night, told when a cycle is about to start, and stopped at the
end within a bound, whatever happened (a signal, an abort, our own error).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from ..redaction import redact

log = logging.getLogger("overnight")


class NightService(Protocol):
    async def start(self, started_at: float, resumed: bool) -> None:
        """The night (new or resumed) has started at ``started_at``."""

    async def before_cycle(self, cycle: int) -> None:
        """``cycle`` is about to run its first attempt of this session."""

    async def stop(self, reason: str) -> None:
        """The night is ending, for ``reason``."""


@dataclass(frozen=True)
class StopBound:
    """How long a service may take to stop, and what is logged when it takes longer
    (``late``, given the seconds) or fails (``failed``, given the error)."""

    seconds: float
    late: str
    failed: str


class Stoppable(Protocol):
    async def stop(self, reason: str) -> None: ...


async def stop_within(service: Stoppable, reason: str, bound: StopBound) -> None:
    """Stop ``service``; never raises and never waits past the bound, so a night always
    ends within seconds of being told to."""
    try:
        async with asyncio.timeout(bound.seconds):
            await service.stop(reason)
    except TimeoutError:
        log.error(bound.late, bound.seconds)
    except Exception as exc:
        log.error(bound.failed, redact(str(exc)), exc_info=exc)


# After a signal or at the end, everything that winds down is bounded, so a night always
# ends within seconds of being told to. Undoing a fault may start a stopped server: longer
# than other stops, still bounded.
FAULTS_STOP = StopBound(
    60.0,
    "undoing injected faults took over %.0f s; see the fault events",
    "undoing injected faults failed: %s",
)
# Workers are asked to leave, then killed: each within its bound, all at once.
EXECUTOR_STOP = StopBound(
    30.0, "stopping the workers took over %.0f s; left behind", "stopping the workers failed: %s"
)
AGENT_STOP = StopBound(
    5.0, "the repair agent took over %.0f s to stop; left behind", "stopping the repair agent failed: %s"
)
# Exporting traces bounds its own final flush (``[export] otlp_timeout`` + 2 s); this is the
# net under it.
EXPORT_STOP = StopBound(
    70.0, "the trace export took over %.0f s to stop; left behind", "stopping the trace export failed: %s"
)
METRICS_STOP = StopBound(
    5.0,
    "closing the metrics endpoint took over %.0f s; its port may stay open until exit",
    "closing the metrics endpoint failed: %s",
)
