"""One component's monitor: the Kubernetes probe model (period, timeout, failure and
success thresholds, startup grace), woken at once when a cycle's call fails (the
component's classifier signals it), so a fault a cycle hits is detected in milliseconds,
not at the next period. An incident is opened on detection, diagnosed by a probe and
worked: repairs within bounds (``repairs``), then the declared fallback or escalation
(``escalation``); it is closed only when a probe says healthy again (``incidents``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..components import Component, ProbeResult, describe_error
from ..ledger import ops
from .escalation import Escalation
from .incidents import Incident, IncidentBook, Signal
from .knobs import KnobReturn
from .loophold import BLOCKING_S, LoopHold
from .repairs import Repairs
from .settings import MonitorSettings
from .states import MonitorState

if TYPE_CHECKING:
    from .agent import RepairAgent

log = logging.getLogger("overnight.agent")


class ComponentMonitor:
    """Probes one component, opens and works its incidents."""

    def __init__(self, agent: RepairAgent, comp: Component, settings: MonitorSettings) -> None:
        self.agent = agent
        self.comp = comp
        self.settings = settings
        self.state = MonitorState.HEALTHY
        self.last_probe: ProbeResult | None = None
        self.fallback_id: int | None = None
        self.fallback_periods: list[tuple[float, float | None]] = []
        self._pending: list[Signal] = []
        self._wake = asyncio.Event()
        self._failures = 0
        # When this component's escalation began holding cycles (monotonic), or None: a
        # pause is bounded by max_pause, across restarts of the monitor.
        self.pause_since: float | None = None
        # Set while the component runs on its primary; cleared while a fallback serves it.
        # Cycles that failed on the fallback wait on it to rerun on the primary.
        self.primary = asyncio.Event()
        self.primary.set()
        self.knobs = KnobReturn(comp, agent.guard, agent.clock, settings.knob_quiet_period)
        self.incidents = IncidentBook(agent, comp, settings.flap_window, self.knobs)
        self.repairs = Repairs(agent, comp, settings, self.incidents, self)
        self.escalation = Escalation(agent, comp, settings, self.incidents, self.repairs, self)

    @property
    def incident(self) -> Incident | None:
        """The open incident, if any (kept across restarts of the monitor)."""
        return self.incidents.current

    # -- signals from cycles (any thread) -------------------------------------------

    def signal(self, kind: str, ts: float, details: dict[str, Any]) -> None:
        """Called in the loop thread: a cycle's call to this component just failed."""
        self._pending.append(Signal(kind, ts, details))
        self.knobs.unquiet_at = max(self.knobs.unquiet_at, ts)
        if self.comp.critical and self.state in (MonitorState.HEALTHY, MonitorState.SUSPECT):
            # Hold new attempts now; the probe that follows decides how long.
            self.agent.gate.close(self.comp.name, f"{self.comp.name}: {kind}")
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, restarted: bool = False) -> None:
        # The next probe comes at once, not after a period: the first one (after the
        # grace), since a night must know where it starts; then only for a fault a cycle
        # signalled since the last verified recovery, or with knobs just back to their
        # configured values. An incident worked or closed does not hurry it, whatever
        # opened the incident: a probe verified the component healthy as it closed.
        probe_now = True
        if self.incident is not None:
            # Restarted by the supervisor in the middle of an incident: carry on with it.
            if self.fallback_id is not None:
                await self.escalation.back_to_primary(self.incident)
            else:
                await self._work(self.incident)
            probe_now = False
        if self.settings.startup_grace and not self._pending and not restarted:
            await self._wait(self.settings.startup_grace)
        while True:
            if not probe_now and not self._fresh_signals():
                await self._wait(self._next_period())
            probe_now = False
            signals = self._fresh_signals()
            self._pending = []
            trigger = "signal" if signals else "periodic"
            try:
                result = await self.probe(trigger)
            except BaseException:
                # The monitor is crashing (or stopping): the faults cycles reported stay
                # pending, so the restarted monitor still opens their incident.
                self._pending[:0] = signals
                raise
            if result.healthy:
                self._failures = 0
                if signals:
                    # The cycle saw a real fault, but the dependency answers again: a
                    # transient incident, verified by this probe, with nothing to repair.
                    sig = signals[0]
                    incident = await self.incidents.open(sig.kind, "signal", sig.ts, sig.details, result)
                    await self.incidents.close(
                        incident, "transient", "verified healthy by the next probe; no repair needed"
                    )
                if self._fresh_signals():
                    # A cycle hit a fault while this probe ran: the probe cannot answer for
                    # it, nor reopen the gate the signal closed. The next probe (at once) does.
                    continue
                self.set_state(MonitorState.HEALTHY, "probe healthy")
                self.open_gate()
                probe_now = self.knobs.restore()  # probe at once with the configured values back
                continue
            self._failures += 1
            # Faults a cycle hit while this probe ran count too: detection is when the
            # first of them was signalled (and the gate closed), not when the probe ended.
            signals += self._fresh_signals()
            self._pending = []
            if not signals and self._failures < self.settings.failure_threshold:
                self.set_state(
                    MonitorState.SUSPECT, f"probe failed ({self._failures}/{self.settings.failure_threshold})"
                )
                continue
            cause = signals[0] if signals else None
            kind = result.fault_kind or (cause.kind if cause else "unavailable")
            detected = cause.ts if cause else time.time()
            # The probe's facts are the freshest (a Retry-After counts from now).
            details = {**(cause.details if cause else {}), **result.details}
            incident = await self.incidents.open(
                kind, "signal" if cause else "probe", detected, details, result
            )
            await self._work(incident)

    def _fresh_signals(self) -> list[Signal]:
        """The faults cycles signalled since the last verified recovery: those before it
        belong to the incident that was just closed and must not open another one."""
        return [sig for sig in self._pending if sig.ts > self.incidents.verified_at]

    async def _work(self, incident: Incident) -> None:
        """Repair within bounds until verified; then fallback or escalation."""
        self.set_state(MonitorState.UNHEALTHY, f"{incident.kind}")
        if self.comp.critical:
            self.agent.gate.close(self.comp.name, f"{self.comp.name}: {incident.kind}")
        if self.incidents.recent() >= self.settings.flap_threshold:
            await self.agent.event(
                "flapping",
                f"{self.comp.name}: {self.incidents.recent()} incidents "
                f"within {self.settings.flap_window:g} s",
                {"incident_id": incident.id},
            )
            await self.escalation.escalate(incident, "flapping: the component keeps failing after repairs")
            return
        if await self.repairs.round(incident):
            return
        if self.settings.fallback and await self.escalation.start_fallback(incident):
            return
        if await self.escalation.settled(incident):
            return
        await self.escalation.escalate(incident, "repairs did not restore the component")

    def open_gate(self) -> None:
        # Verified healthy (or on a fallback): whatever pause this component caused is over.
        self.pause_since = None
        self.agent.gate.open(self.comp.name)

    def pause_left(self) -> float | None:
        """Seconds before this component's pause reaches max_pause; None when not paused."""
        if self.pause_since is None:
            return None
        return self.settings.max_pause - (time.monotonic() - self.pause_since)

    def _next_period(self) -> float:
        """The next periodic probe: within a probe period, and no later than the end of
        the quiet period while a knob is off, so the knob returns on time."""
        if self.incident is not None or not self.knobs.to_restore():
            return self.settings.probe_period
        return min(self.settings.probe_period, max(self.knobs.quiet_left(), 0.0))

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def wait_next_probe(self, seconds: float) -> None:
        """While an incident is worked: wait for the next probe (``seconds``, or less if a
        cycle's call fails meanwhile). What cycles signalled belongs to that incident."""
        await self._wait(seconds)
        self._pending.clear()

    async def probe(self, trigger: str) -> ProbeResult:
        t0 = time.perf_counter()
        hold: LoopHold[ProbeResult] | None = None
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                hold = LoopHold(self.comp.probe())
                result = await hold
        except TimeoutError:
            result = ProbeResult(
                False,
                time.perf_counter() - t0,
                "timeout",
                f"probe ran past {self.settings.probe_timeout:g} s",
            )
        except NotImplementedError as exc:
            result = ProbeResult(False, 0.0, None, str(exc))
        except Exception as exc:  # a probe must report, not raise; a bug in one is still a fault
            result = ProbeResult(
                False,
                time.perf_counter() - t0,
                self.comp.classify(exc) or "unavailable",
                describe_error(exc),
                details=self.comp.fault_details(exc),
            )
        except BaseException as exc:
            # A CancelledError (or SystemExit) that is not the agent stopping: the monitor
            # crashes and restarts. Record the probe as failed first, so the component is
            # never shown healthy on the strength of an earlier probe.
            if not self.agent.stopping:
                self._record_probe(
                    ProbeResult(
                        False,
                        time.perf_counter() - t0,
                        None,
                        f"the probe raised {type(exc).__name__} (a bug in the probe)",
                    ),
                    trigger,
                )
            raise
        finally:
            if hold is not None:
                self.note_hold(hold, "probe", time.perf_counter() - t0)
        self.last_probe = result
        if not result.healthy:
            self.knobs.unquiet_at = self.agent.clock()
        await self.agent.write(ops.record_probe, *self._probe_row(result, trigger))
        return result

    def _probe_row(self, result: ProbeResult, trigger: str) -> tuple[Any, ...]:
        """The arguments of ``ops.record_probe`` after the connection, for one probe."""
        return (
            self.agent.night_id,
            self.comp.name,
            result.checked_at,
            result.healthy,
            result.latency_s,
            result.fault_kind,
            result.detail,
            trigger,
        )

    def _record_probe(self, result: ProbeResult, trigger: str) -> None:
        self.last_probe = result
        self.knobs.unquiet_at = self.agent.clock()
        with contextlib.suppress(Exception):
            self.agent.ledger.submit(ops.record_probe, *self._probe_row(result, trigger))

    def note_hold(self, hold: LoopHold[Any], by: str, wall: float, strategy: str | None = None) -> None:
        """A probe or repair that held the event loop in one stretch for BLOCKING_S or
        more froze every cycle meanwhile: record who, so the report names it."""
        if hold.longest < BLOCKING_S:
            return
        what = f"{by} {strategy}" if strategy else by
        log.warning(
            "the %s of %s blocked the event loop for %.2f s (a blocking call in async code)",
            what,
            self.comp.name,
            hold.longest,
        )
        with contextlib.suppress(Exception):
            self.agent.event_nowait(
                "loop_blocked",
                f"the {what} of {self.comp.name} blocked the event loop for {hold.longest:.2f} s",
                {
                    "by": by,
                    "strategy": strategy,
                    "longest_s": round(hold.longest, 4),
                    "held_s": round(hold.held, 4),
                    "wall_s": round(wall, 4),
                },
                component=self.comp.name,
            )

    def set_state(self, state: MonitorState, reason: str) -> None:
        if state == self.state:
            return
        old, self.state = self.state, state
        self.agent.event_nowait(
            "component_state",
            f"{self.comp.name}: {old} → {state} ({reason})",
            {"from": old, "to": state, "reason": reason},
            component=self.comp.name,
        )
