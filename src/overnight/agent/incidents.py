"""Incidents: one episode of a component being unhealthy, opened on detection and closed
only when a probe verified it healthy again, each step on the record (ledger row, event,
log line) with its timestamps, so time-to-detect and time-to-repair are measured. A
closed incident that a repair of ours fixed says which degrading shortcut it avoided.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..components import Component, ProbeResult
from ..ledger import ops
from ..numbers import plural, span
from .knobs import KnobReturn
from .playbooks import DEGRADING_SHORTCUTS

if TYPE_CHECKING:
    from .agent import RepairAgent

log = logging.getLogger("overnight.agent")


@dataclass
class Signal:
    """A cycle's call to the component failed: what it was, when (agent clock)."""

    kind: str
    ts: float
    details: dict[str, Any]


@dataclass
class Incident:
    id: int
    kind: str
    detected_at: float
    details: dict[str, Any]
    repairs: int = 0
    verified_repair: bool = False
    escalated: bool = False  # recorded and notified once, even if its monitor restarts
    on_fallback: bool = False  # its component's declared fallback served cycles meanwhile


class IncidentBook:
    """One component's incidents: the open one, when the last was verified closed, and how
    many were opened within the flap window."""

    def __init__(self, agent: RepairAgent, comp: Component, flap_window: float, knobs: KnobReturn) -> None:
        self.agent = agent
        self.comp = comp
        self.flap_window = flap_window
        self.knobs = knobs
        self.current: Incident | None = None
        # When the last incident was verified closed (agent clock): faults a cycle hit
        # before then belong to it.
        self.verified_at = 0.0
        self._opened: deque[float] = deque()

    def recent(self) -> int:
        """Incidents opened within the flap window (the last one included)."""
        return len(self._opened)

    async def open(
        self, kind: str, trigger: str, detected_at: float, details: dict[str, Any], probe: ProbeResult
    ) -> Incident:
        incident_id = await self.agent.write(
            ops.open_incident, self.agent.night_id, self.comp.name, kind, trigger, detected_at, probe.detail
        )
        await self.agent.write(ops.update_incident, incident_id, {"diagnosed_at": time.time()})
        self.current = Incident(incident_id, kind, detected_at, details)
        now = time.time()
        self._opened.append(now)
        while self._opened and self._opened[0] < now - self.flap_window:
            self._opened.popleft()
        log.warning(
            "incident %d opened: %s %s (detected by %s)",
            incident_id,
            self.comp.name,
            kind,
            "a cycle's failed call" if trigger == "signal" else "a probe",
        )
        self.knobs.incident_opened()
        return self.current

    async def close(self, incident: Incident, state: str, detail: str) -> None:
        self.verified_at = self.agent.clock()
        values: dict[str, Any] = {"verified_at": time.time(), "state": state}
        shortcut = self.agent.shortcuts.get(self.comp.name) or DEGRADING_SHORTCUTS.get(self.comp.type_name)
        # A shortcut "not taken" would contradict a fallback that was taken (cached search
        # results are recorded results): nothing to claim for an incident the fallback served.
        if state in ("repaired", "recovered") and shortcut is not None and not incident.on_fallback:
            values["degradation_avoided"] = {**shortcut, "instead": detail}
        await self.agent.write(ops.update_incident, incident.id, values)
        await self.agent.event(
            "incident_closed",
            f"{self.comp.name} {incident.kind}: {state} ({detail})",
            {"incident_id": incident.id, "state": state},
        )
        self.knobs.unquiet_at = self.verified_at
        log.info(
            "incident %d closed: %s %s %s after %s, %s (%s)",
            incident.id,
            self.comp.name,
            incident.kind,
            state,
            span(max(self.verified_at - incident.detected_at, 0.0)),
            plural(incident.repairs, "repair"),
            detail,
        )
        self.current = None
        for listener in self.agent.incident_listeners:
            try:
                listener(self.comp.name, state, incident.detected_at)
            except Exception:  # a listener's bug must not stop the monitor
                log.exception("incident listener failed")
