"""When repairs did not restore a component: its declared fallback, served only until the
primary probes healthy again; else two more looks, then escalation as configured (pause
or abort, and notify). A pause keeps probing and repairing, later each round, and is
bounded by max_pause: then the night ends aborted, naming the component.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from ..components import Component, FallbackOwner, ProbeResult
from ..ledger import ops
from ..numbers import span
from .incidents import Incident, IncidentBook
from .repairs import Repairs
from .settings import MonitorSettings
from .states import MonitorState

if TYPE_CHECKING:
    from .agent import RepairAgent

log = logging.getLogger("overnight.agent")


class Watch(Protocol):
    """What the fallback and escalation need of the component's monitor: the state the
    agent reads (fallback periods, the primary's event, the pause) and its probe."""

    fallback_id: int | None
    fallback_periods: list[tuple[float, float | None]]
    primary: asyncio.Event
    pause_since: float | None

    def set_state(self, state: MonitorState, reason: str) -> None: ...

    def open_gate(self) -> None: ...

    async def probe(self, trigger: str) -> ProbeResult: ...

    async def wait_next_probe(self, seconds: float) -> None: ...

    def pause_left(self) -> float | None: ...


class Escalation:
    """Works one component's incident once a repair round did not restore it."""

    def __init__(
        self,
        agent: RepairAgent,
        comp: Component,
        settings: MonitorSettings,
        incidents: IncidentBook,
        repairs: Repairs,
        watch: Watch,
    ) -> None:
        self.agent = agent
        self.comp = comp
        self.settings = settings
        self.incidents = incidents
        self.repairs = repairs
        self.watch = watch

    async def settled(self, incident: Incident) -> bool:
        """Look twice more, sooner than a probe period, before escalating: a burst that
        outlasted the verifying probe (two 500s in a row) is over by then, and must not
        page anyone, hold the night for a period or abort it."""
        for wait in (self.settings.cooldown, 2 * self.settings.cooldown):
            await asyncio.sleep(min(wait, self.settings.probe_period))
            if (await self.watch.probe("verify")).healthy:
                await self.incidents.close(
                    incident, "recovered", "answered again soon after the repairs; verified by probe"
                )
                self.watch.set_state(MonitorState.HEALTHY, "recovered")
                self.watch.open_gate()
                return True
        return False

    # -- fallback ----------------------------------------------------------------------

    async def start_fallback(self, incident: Incident) -> bool:
        if not isinstance(self.comp, FallbackOwner) or self.comp.fallback is None:
            await self.agent.event(
                "fallback_unavailable",
                f"{self.comp.name}: no usable {self.settings.fallback} fallback",
                {"incident_id": incident.id},
            )
            return False
        self.comp.fallback_active = True
        incident.on_fallback = True
        self.watch.primary.clear()
        self.watch.fallback_periods.append((self.agent.clock(), None))
        self.watch.fallback_id = await self.agent.write(
            ops.start_fallback,
            self.agent.night_id,
            self.comp.name,
            incident.id,
            self.settings.fallback,
            time.time(),
        )
        await self.agent.write(ops.update_incident, incident.id, {"state": "fallback"})
        self.watch.set_state(
            MonitorState.FALLBACK, f"repairs failed; using the declared {self.settings.fallback} fallback"
        )
        log.warning(
            "fallback started: %s is served by its declared %s fallback (incident %d): "
            "repairs did not restore the primary",
            self.comp.name,
            self.settings.fallback,
            incident.id,
        )
        self.watch.open_gate()
        await self.back_to_primary(incident)
        return True

    async def back_to_primary(self, incident: Incident) -> None:
        """Keep probing the primary; return to it as soon as it is healthy again."""
        while True:
            await self.watch.wait_next_probe(self.settings.probe_period)
            if (await self.watch.probe("periodic")).healthy:
                if isinstance(self.comp, FallbackOwner):  # start_fallback found it is one
                    self.comp.fallback_active = False
                self.watch.fallback_periods[-1] = (self.watch.fallback_periods[-1][0], self.agent.clock())
                if self.watch.fallback_id is not None:
                    await self.agent.write(ops.end_fallback, self.watch.fallback_id, time.time())
                    self.watch.fallback_id = None
                start, end = self.watch.fallback_periods[-1]
                log.info(
                    "fallback ended: %s is back on its primary after %s on the %s fallback "
                    "(probed healthy; incident %d)",
                    self.comp.name,
                    span((end or start) - start),
                    self.settings.fallback,
                    incident.id,
                )
                await self.incidents.close(incident, "recovered", "primary probed healthy; fallback ended")
                self.watch.set_state(MonitorState.HEALTHY, "back on the primary")
                # Only now, with the primary verified: cycles that failed on the fallback
                # may rerun on it.
                self.watch.primary.set()
                return

    # -- escalation ----------------------------------------------------------------------

    async def escalate(self, incident: Incident, why: str) -> None:
        mode = self.settings.escalation
        self.watch.set_state(MonitorState.FAILED, why)
        reason = f"{self.comp.name} {incident.kind}: {why}"
        if not incident.escalated:  # a restarted monitor carries on; it does not page again
            incident.escalated = True
            await self.agent.write(
                ops.update_incident, incident.id, {"state": "escalated", "escalation": f"{mode}: {why}"}
            )
            await self.agent.event(
                "escalated", f"{reason} → {mode}", {"incident_id": incident.id, "mode": mode}
            )
            await self.agent.notify(
                {
                    "event": "escalated",
                    "component": self.comp.name,
                    "fault_kind": incident.kind,
                    "escalation": mode,
                    "reason": why,
                    "night_id": self.agent.night_id,
                }
            )
        if mode == "abort":
            await self._abort_night(f"aborted by escalation: {reason}")
        # pause: cycles stay held (a critical component), at most max_pause; keep probing,
        # and repair again within the bounds, each round later than the last (backoff
        # with jitter).
        if self.comp.critical and self.watch.pause_since is None:
            self.watch.pause_since = time.monotonic()
        rounds = 1
        next_round = time.monotonic() + self.repairs.backoff(rounds)
        while True:
            left = self.watch.pause_left()
            if left is not None and left <= 0:
                await self._end_pause(incident)
            await self.watch.wait_next_probe(
                self.settings.probe_period if left is None else min(self.settings.probe_period, left)
            )
            if (await self.watch.probe("periodic")).healthy:
                await self.incidents.close(incident, "recovered", "probed healthy again while paused")
                self.watch.set_state(MonitorState.HEALTHY, "recovered")
                self.watch.open_gate()
                return
            if time.monotonic() >= next_round and self.repairs.budget_left():
                if await self.repairs.round(incident):
                    return
                self.watch.set_state(MonitorState.FAILED, why)
                rounds += 1
                next_round = time.monotonic() + self.repairs.backoff(rounds)

    async def _end_pause(self, incident: Incident) -> None:
        """The pause reached max_pause and the component is still down: end the night."""
        down = self.agent.clock() - incident.detected_at
        bound = f"max_pause {span(self.settings.max_pause)}"
        await self.agent.write(
            ops.update_incident,
            incident.id,
            {"escalation": f"pause, then abort: down for {span(down)}, past {bound}"},
        )
        await self.agent.event(
            "escalated",
            f"{self.comp.name} {incident.kind}: still down after a pause of {bound} → abort",
            {"incident_id": incident.id, "mode": "abort", "max_pause_s": self.settings.max_pause},
        )
        await self.agent.notify(
            {
                "event": "escalated",
                "component": self.comp.name,
                "fault_kind": incident.kind,
                "escalation": "abort",
                "reason": f"still down after a pause of {bound}",
                "night_id": self.agent.night_id,
            }
        )
        await self._abort_night(
            f"{self.comp.name} {incident.kind} for {span(down)}; repairs did not restore it ({bound})"
        )

    async def _abort_night(self, reason: str) -> None:
        self.agent.abort(reason)
        # Stay here: the night is ending; no further repairs.
        await asyncio.Event().wait()
