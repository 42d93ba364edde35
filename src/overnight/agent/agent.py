"""The repair agent: watches every component beside the cycles and restores what breaks.

One monitor task per component runs the Kubernetes probe model (period, timeout, failure
and success thresholds, startup grace) and is woken at once when a cycle's call fails
(the component's classifier signals it), so a fault a cycle hits is detected in
milliseconds, not at the next period. An incident is opened on detection, diagnosed by a
probe, repaired by the component's playbook within bounds (cooldown, backoff with
jitter, a cap per hour, flapping detection), and closed only when a probe says healthy
again. While a critical component is unhealthy the orchestrator's gate is closed. When
repairs fail: the declared fallback, else escalation (pause or abort, and notify).

The agent itself is supervised: a crash inside a monitor (whatever a probe, repair or
strategy raised, a stray CancelledError included) is recorded and the monitor restarts
with backoff; one that keeps crashing escalates like a component that cannot be repaired.
A pause is bounded too (``max_pause``): then the night ends aborted, naming the component.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import tenacity

from ..components import Component, KnobRefused, ProbeResult, describe_error
from ..config import AgentConfig, agent_settings_for
from ..errors import ConfigError, ProtectedSettingError
from ..ledger import Ledger, ops
from ..numbers import plural, span
from ..redaction import redact
from .guard import Guard
from .loophold import BLOCKING_S, LoopHold
from .playbooks import DEGRADING_SHORTCUTS, parse_repairs, playbook_for
from .strategies import RepairContext, RepairFailed, Strategy

log = logging.getLogger("overnight.agent")

STATES = ("healthy", "suspect", "unhealthy", "repairing", "fallback", "failed")
# A monitor that crashed this many times within the window has a deterministic bug (each
# restart probes the same component the same way, after 1, 2, 4, 8 × the base delay):
# restarting it again only leaves the component unwatched, so it escalates instead. Five
# lets a rare race survive; the window is the default flap window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
_RESTART_DELAY_MAX_S = 60.0


@dataclass
class MonitorSettings:
    probe_period: float
    probe_timeout: float
    failure_threshold: int
    success_threshold: int
    startup_grace: float
    cooldown: float
    max_backoff: float
    max_repairs_per_hour: int
    flap_threshold: int
    flap_window: float
    repair_timeout: float
    escalation: str
    max_pause: float = 1800.0
    # Healthy this long after its last fault, a component gets back the knob values it
    # was configured with (a repair's change is a fix of the client, not a new baseline).
    knob_quiet_period: float = 30.0
    fallback: str | None = None
    repairs: dict[str, list[Strategy]] = field(default_factory=dict)

    @classmethod
    def for_component(cls, comp: Component, defaults: AgentConfig) -> MonitorSettings:
        opts = comp.spec.options
        where = f"components.{comp.name}"
        cfg = agent_settings_for(defaults, opts, where)
        fallback = opts.get("fallback")
        if fallback is not None and fallback != "cache":
            raise ConfigError(f"{where}.fallback: the only declared fallback kind is 'cache'")
        return cls(
            probe_period=cfg.probe_period,
            probe_timeout=cfg.probe_timeout,
            failure_threshold=cfg.failure_threshold,
            success_threshold=cfg.success_threshold,
            startup_grace=cfg.startup_grace,
            cooldown=cfg.cooldown,
            max_backoff=cfg.max_backoff,
            max_repairs_per_hour=cfg.max_repairs_per_hour,
            flap_threshold=cfg.flap_threshold,
            flap_window=cfg.flap_window,
            repair_timeout=cfg.repair_timeout,
            escalation=cfg.escalation,
            max_pause=cfg.max_pause,
            knob_quiet_period=(
                cfg.knob_quiet_period if cfg.knob_quiet_period is not None else 3 * cfg.probe_period
            ),
            fallback=fallback,
            repairs=parse_repairs(opts.get("repairs"), f"{where}.repairs"),
        )


class _FallbackOwner(Protocol):
    """A component that can be switched to its declared fallback (the websearch component)."""

    fallback_active: bool


@dataclass
class _Signal:
    kind: str
    ts: float
    details: dict[str, Any]


@dataclass
class _Incident:
    id: int
    kind: str
    detected_at: float
    details: dict[str, Any]
    repairs: int = 0
    verified_repair: bool = False
    escalated: bool = False  # recorded and notified once, even if its monitor restarts
    on_fallback: bool = False  # its component's declared fallback served cycles meanwhile


class ComponentMonitor:
    """Probes one component, opens and works its incidents."""

    def __init__(self, agent: RepairAgent, comp: Component, settings: MonitorSettings) -> None:
        self.agent = agent
        self.comp = comp
        self.settings = settings
        self.state = "healthy"
        self.last_probe: ProbeResult | None = None
        self.incident: _Incident | None = None
        self.fallback_id: int | None = None
        self.fallback_periods: list[tuple[float, float | None]] = []
        self._pending: list[_Signal] = []
        self._wake = asyncio.Event()
        self._failures = 0
        self._verified_at = 0.0
        self._repair_times: deque[float] = deque()
        self._incident_times: deque[float] = deque()
        # When this component's escalation began holding cycles (monotonic), or None: a
        # pause is bounded by max_pause, across restarts of the monitor.
        self.pause_since: float | None = None
        # Set while the component runs on its primary; cleared while a fallback serves it.
        # Cycles that failed on the fallback wait on it to rerun on the primary.
        self.primary = asyncio.Event()
        self.primary.set()
        # Knobs a repair moved: the last fault seen (agent clock) starts the quiet period
        # after which they return; which incident moved each; refused returns are not retried.
        self._unquiet_at = 0.0
        self.knob_incident: dict[str, int | None] = {}
        self._restored_at: float | None = None
        self._quiet_factor = 1
        self._restore_refused: set[str] = set()

    # -- signals from cycles (any thread) -------------------------------------------

    def signal(self, kind: str, ts: float, details: dict[str, Any]) -> None:
        """Called in the loop thread: a cycle's call to this component just failed."""
        self._pending.append(_Signal(kind, ts, details))
        self._unquiet_at = max(self._unquiet_at, ts)
        if self.comp.critical and self.state in ("healthy", "suspect"):
            # Hold new attempts now; the probe that follows decides how long.
            self.agent.gate.close(self.comp.name, f"{self.comp.name}: {kind}")
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, restarted: bool = False) -> None:
        if self.incident is not None:
            # Restarted by the supervisor in the middle of an incident: carry on with it.
            if self.fallback_id is not None:
                await self._back_to_primary(self.incident)
            else:
                await self._work(self.incident)
        if self.settings.startup_grace and not self._pending and not restarted:
            await self._wait(self.settings.startup_grace)
        first = True  # probe at once (after the grace): a night must know where it starts
        while True:
            if not self._pending and not first:
                await self._wait(self._next_period())
            first = False
            # Faults a cycle hit before the last verified recovery belong to the incident
            # that was just closed; they must not open another one.
            signals = [sig for sig in self._pending if sig.ts > self._verified_at]
            self._pending = []
            trigger = "signal" if signals else "periodic"
            try:
                result = await self._probe(trigger)
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
                    incident = await self._open(sig.kind, "signal", sig.ts, sig.details, result)
                    await self._close(
                        incident, "transient", "verified healthy by the next probe; no repair needed"
                    )
                    first = True  # after a cycle's fault, the next probe comes at once
                if any(sig.ts > self._verified_at for sig in self._pending):
                    # A cycle hit a fault while this probe ran: the probe cannot answer for
                    # it, nor reopen the gate the signal closed. The next probe (at once) does.
                    continue
                self._set_state("healthy", "probe healthy")
                self._open_gate()
                if self._restore_knobs():
                    first = True  # probe at once with the configured values back
                continue
            self._failures += 1
            # Faults a cycle hit while this probe ran count too: detection is when the
            # first of them was signalled (and the gate closed), not when the probe ended.
            signals += [sig for sig in self._pending if sig.ts > self._verified_at]
            self._pending = []
            if not signals and self._failures < self.settings.failure_threshold:
                self._set_state(
                    "suspect", f"probe failed ({self._failures}/{self.settings.failure_threshold})"
                )
                continue
            cause = signals[0] if signals else None
            kind = result.fault_kind or (cause.kind if cause else "unavailable")
            detected = cause.ts if cause else time.time()
            # The probe's facts are the freshest (a Retry-After counts from now).
            details = {**(cause.details if cause else {}), **result.details}
            incident = await self._open(kind, "signal" if cause else "probe", detected, details, result)
            await self._work(incident)
            first = cause is not None  # after a cycle's fault, the next probe comes at once

    def _open_gate(self) -> None:
        # Verified healthy (or on a fallback): whatever pause this component caused is over.
        self.pause_since = None
        self.agent.gate.open(self.comp.name)

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _probe(self, trigger: str) -> ProbeResult:
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
                self._note_hold(hold, "probe", time.perf_counter() - t0)
        self.last_probe = result
        if not result.healthy:
            self._unquiet_at = self.agent.clock()
        await self.agent.write(
            ops.record_probe,
            self.agent.night_id,
            self.comp.name,
            result.checked_at,
            result.healthy,
            result.latency_s,
            result.fault_kind,
            result.detail,
            trigger,
        )
        return result

    def _record_probe(self, result: ProbeResult, trigger: str) -> None:
        self.last_probe = result
        self._unquiet_at = self.agent.clock()
        with contextlib.suppress(Exception):
            self.agent.ledger.submit(
                ops.record_probe,
                self.agent.night_id,
                self.comp.name,
                result.checked_at,
                result.healthy,
                result.latency_s,
                result.fault_kind,
                result.detail,
                trigger,
            )

    def _note_hold(self, hold: LoopHold[Any], by: str, wall: float, strategy: str | None = None) -> None:
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

    # -- incidents ---------------------------------------------------------------------

    async def _open(
        self, kind: str, trigger: str, detected_at: float, details: dict[str, Any], probe: ProbeResult
    ) -> _Incident:
        incident_id = await self.agent.write(
            ops.open_incident, self.agent.night_id, self.comp.name, kind, trigger, detected_at, probe.detail
        )
        await self.agent.write(ops.update_incident, incident_id, {"diagnosed_at": time.time()})
        self.incident = _Incident(incident_id, kind, detected_at, details)
        now = time.time()
        self._incident_times.append(now)
        while self._incident_times and self._incident_times[0] < now - self.settings.flap_window:
            self._incident_times.popleft()
        log.warning(
            "incident %d opened: %s %s (detected by %s)",
            incident_id,
            self.comp.name,
            kind,
            "a cycle's failed call" if trigger == "signal" else "a probe",
        )
        since_restored = None if self._restored_at is None else self.agent.clock() - self._restored_at
        if since_restored is not None and since_restored < self._quiet_period():
            # The fault came back soon after knobs returned to their configured values:
            # wait longer before the next return, so a return cannot keep the component
            # flapping all night.
            self._quiet_factor = min(self._quiet_factor * 2, 64)
            log.info(
                "%s failed again %s after its knobs returned to their configured values; "
                "the next return waits %s of quiet",
                self.comp.name,
                span(since_restored),
                span(self._quiet_period()),
            )
            self._restored_at = None
        return self.incident

    async def _close(self, incident: _Incident, state: str, detail: str) -> None:
        self._verified_at = self.agent.clock()
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
        self._unquiet_at = self._verified_at
        log.info(
            "incident %d closed: %s %s %s after %s, %s (%s)",
            incident.id,
            self.comp.name,
            incident.kind,
            state,
            span(max(self._verified_at - incident.detected_at, 0.0)),
            plural(incident.repairs, "repair"),
            detail,
        )
        self.incident = None
        for listener in self.agent.incident_listeners:
            try:
                listener(self.comp.name, state, incident.detected_at)
            except Exception:  # a listener's bug must not stop the monitor
                log.exception("incident listener failed")

    async def _work(self, incident: _Incident) -> None:
        """Repair within bounds until verified; then fallback or escalation."""
        self._set_state("unhealthy", f"{incident.kind}")
        if self.comp.critical:
            self.agent.gate.close(self.comp.name, f"{self.comp.name}: {incident.kind}")
        if len(self._incident_times) >= self.settings.flap_threshold:
            await self.agent.event(
                "flapping",
                f"{self.comp.name}: {len(self._incident_times)} incidents "
                f"within {self.settings.flap_window:g} s",
                {"incident_id": incident.id},
            )
            await self._escalate(incident, "flapping: the component keeps failing after repairs")
            return
        if await self._repair_round(incident):
            return
        if self.settings.fallback and await self._start_fallback(incident):
            return
        if await self._settled(incident):
            return
        await self._escalate(incident, "repairs did not restore the component")

    async def _settled(self, incident: _Incident) -> bool:
        """Look twice more, sooner than a probe period, before escalating: a burst that
        outlasted the verifying probe (two 500s in a row) is over by then, and must not
        page anyone, hold the night for a period or abort it."""
        for wait in (self.settings.cooldown, 2 * self.settings.cooldown):
            await asyncio.sleep(min(wait, self.settings.probe_period))
            if (await self._probe("verify")).healthy:
                await self._close(
                    incident, "recovered", "answered again soon after the repairs; verified by probe"
                )
                self._set_state("healthy", "recovered")
                self._open_gate()
                return True
        return False

    async def _repair_round(self, incident: _Incident) -> bool:
        """One pass through the playbook. True once a repair is verified."""
        strategies = list(playbook_for(self.comp.type_name, incident.kind, self.settings.repairs))
        tried: set[str] = set()
        attempt = 0
        while strategies:
            strategy = strategies.pop(0)
            if strategy.name in tried:
                continue
            tried.add(strategy.name)
            ctx = RepairContext(
                component=self.comp,
                incident_id=incident.id,
                fault_kind=incident.kind,
                details=incident.details,
                guard=self.agent.guard,
                night_dir=self.agent.night_dir,
                current_night=self.agent.night_id,
            )
            if not strategy.applicable(ctx):
                continue
            if not self._budget_left():
                await self.agent.event(
                    "repair_skipped",
                    f"{self.comp.name}: {self.settings.max_repairs_per_hour} repair attempts "
                    "in the last hour",
                    {"incident_id": incident.id, "strategy": strategy.name},
                )
                return False
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            kind = incident.kind
            if await self._attempt(incident, strategy, ctx):
                return True
            if incident.kind != kind:
                # Re-diagnosed by the verifying probe: go on with the new kind's playbook.
                strategies = list(playbook_for(self.comp.type_name, incident.kind, self.settings.repairs))
        return False

    async def _attempt(self, incident: _Incident, strategy: Strategy, ctx: RepairContext) -> bool:
        self._set_state("repairing", strategy.name)
        self._repair_times.append(time.time())
        started = time.time()
        repair_id = await self.agent.write(
            ops.start_repair, self.agent.night_id, incident.id, self.comp.name, strategy.name, started
        )
        t0 = time.perf_counter()
        # "done" says the action ran to its end, nothing more: only a healthy probe after
        # it (``verified``) says it restored the component.
        result, detail = "done", ""
        hold: LoopHold[str] | None = None
        try:
            async with asyncio.timeout(self.settings.repair_timeout):
                hold = LoopHold(strategy.run(ctx))
                detail = await hold
        except RepairFailed as exc:
            result, detail = "failed", str(exc)
        except (KnobRefused, ProtectedSettingError) as exc:
            result, detail = "refused", str(exc)
        except TimeoutError:
            result, detail = "failed", f"ran past {self.settings.repair_timeout:g} s"
        except Exception as exc:
            result, detail = "failed", describe_error(exc)
        except BaseException as exc:
            # A stray CancelledError (or SystemExit) from the strategy crashes the monitor,
            # which restarts; the repair's row is closed first, never left half-written.
            with contextlib.suppress(Exception):
                self.agent.ledger.submit(
                    ops.finish_repair,
                    repair_id,
                    time.perf_counter() - t0,
                    "failed",
                    ctx.knobs_changed,
                    "stopped: the night is ending"
                    if self.agent.stopping
                    else f"the strategy raised {type(exc).__name__}",
                )
            raise
        finally:
            if hold is not None:
                self._note_hold(hold, "repair", time.perf_counter() - t0, strategy.name)
        duration = time.perf_counter() - t0
        await self.agent.write(ops.finish_repair, repair_id, duration, result, ctx.knobs_changed, detail)
        incident.repairs += 1
        self.agent.repairs_done += 1
        if result != "done":
            log.info("repair %s of %s: %s (%s)", strategy.name, self.comp.name, result, detail)
            return False
        if await self._verify(incident):
            await self.agent.write(ops.verify_repair, repair_id)
            self.agent.repairs_verified += 1
            log.info("repair %s of %s: done, verified healthy (%s)", strategy.name, self.comp.name, detail)
            incident.verified_repair = True
            await self._close(incident, "repaired", f"{strategy.name}: {detail}")
            self._set_state("healthy", f"verified after {strategy.name}")
            self._open_gate()
            return True
        log.info(
            "repair %s of %s: done, not verified: the component is still unhealthy (%s)",
            strategy.name,
            self.comp.name,
            detail,
        )
        return False

    async def _verify(self, incident: _Incident) -> bool:
        for _ in range(self.settings.success_threshold):
            result = await self._probe("verify")
            if not result.healthy:
                # The next strategy in the round works from what the server says now.
                incident.details.update(result.details)
                await self._rediagnose(incident, result)
                return False
        return True

    async def _rediagnose(self, incident: _Incident, result: ProbeResult) -> None:
        """The first diagnosis is what the first failure looked like (a server being
        stopped first drops connections, then refuses them): a probe that now sees
        another kind of fault corrects it, on the record."""
        if result.fault_kind is None or result.fault_kind == incident.kind:
            return
        old, incident.kind = incident.kind, result.fault_kind
        await self.agent.write(ops.update_incident, incident.id, {"fault_kind": incident.kind})
        await self.agent.event(
            "rediagnosed",
            f"{self.comp.name}: {old} → {incident.kind} (verifying probe: {result.detail})",
            {"incident_id": incident.id, "from": old, "to": incident.kind},
            component=self.comp.name,
        )
        log.info("incident %d: %s re-diagnosed %s → %s", incident.id, self.comp.name, old, incident.kind)

    def _budget_left(self) -> bool:
        horizon = time.time() - 3600
        while self._repair_times and self._repair_times[0] < horizon:
            self._repair_times.popleft()
        return len(self._repair_times) < self.settings.max_repairs_per_hour

    def _backoff(self, attempt: int) -> float:
        """Cooldown plus exponential backoff with full jitter (tenacity's strategy)."""
        wait = tenacity.wait_fixed(self.settings.cooldown) + tenacity.wait_random_exponential(
            multiplier=self.settings.cooldown, max=self.settings.max_backoff
        )
        # The wait strategies read only attempt_number; the Retrying is there for the type.
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(wait(state))

    # -- knobs back to their configured values ---------------------------------------

    def _quiet_period(self) -> float:
        return self.settings.knob_quiet_period * self._quiet_factor

    def _knobs_to_restore(self) -> dict[str, list[Any]]:
        return {k: v for k, v in self.comp.knobs.off().items() if k not in self._restore_refused}

    def _next_period(self) -> float:
        """The next periodic probe: within a probe period, and no later than the end of
        the quiet period while a knob is off, so the knob returns on time."""
        if self.incident is not None or not self._knobs_to_restore():
            return self.settings.probe_period
        left = self._quiet_period() - (self.agent.clock() - self._unquiet_at)
        return min(self.settings.probe_period, max(left, 0.0))

    def _restore_knobs(self) -> bool:
        """After a healthy probe: return every knob a repair changed to its configured
        value once the component has been healthy for the quiet period. True if any was."""
        off = self._knobs_to_restore()
        quiet = self.agent.clock() - self._unquiet_at
        if not off or quiet < self._quiet_period():
            return False
        for name in off:
            try:
                self.agent.guard.restore_knob(
                    self.comp,
                    name,
                    by=f"the agent, after {span(quiet)} healthy",
                    incident_id=self.knob_incident.get(name),
                )
            except KnobRefused as exc:  # recorded by the guard; not tried again
                self._restore_refused.add(name)
                log.warning(
                    "knob %s.%s could not return to its configured value: %s", self.comp.name, name, exc
                )
        self._restored_at = self.agent.clock()
        return True

    # -- fallback and escalation -----------------------------------------------------

    async def _start_fallback(self, incident: _Incident) -> bool:
        if not hasattr(self.comp, "fallback_active") or getattr(self.comp, "fallback", None) is None:
            await self.agent.event(
                "fallback_unavailable",
                f"{self.comp.name}: no usable {self.settings.fallback} fallback",
                {"incident_id": incident.id},
            )
            return False
        self.comp.fallback_active = True
        incident.on_fallback = True
        self.primary.clear()
        self.fallback_periods.append((self.agent.clock(), None))
        self.fallback_id = await self.agent.write(
            ops.start_fallback,
            self.agent.night_id,
            self.comp.name,
            incident.id,
            self.settings.fallback,
            time.time(),
        )
        await self.agent.write(ops.update_incident, incident.id, {"state": "fallback"})
        self._set_state("fallback", f"repairs failed; using the declared {self.settings.fallback} fallback")
        log.warning(
            "fallback started: %s is served by its declared %s fallback (incident %d): "
            "repairs did not restore the primary",
            self.comp.name,
            self.settings.fallback,
            incident.id,
        )
        self._open_gate()
        await self._back_to_primary(incident)
        return True

    async def _back_to_primary(self, incident: _Incident) -> None:
        """Keep probing the primary; return to it as soon as it is healthy again."""
        while True:
            await self._wait(self.settings.probe_period)
            self._pending.clear()
            if (await self._probe("periodic")).healthy:
                # Only reached once _start_fallback found the component has one.
                cast(_FallbackOwner, self.comp).fallback_active = False
                self.fallback_periods[-1] = (self.fallback_periods[-1][0], self.agent.clock())
                if self.fallback_id is not None:
                    await self.agent.write(ops.end_fallback, self.fallback_id, time.time())
                    self.fallback_id = None
                start, end = self.fallback_periods[-1]
                log.info(
                    "fallback ended: %s is back on its primary after %s on the %s fallback "
                    "(probed healthy; incident %d)",
                    self.comp.name,
                    span((end or start) - start),
                    self.settings.fallback,
                    incident.id,
                )
                await self._close(incident, "recovered", "primary probed healthy; fallback ended")
                self._set_state("healthy", "back on the primary")
                # Only now, with the primary verified: cycles that failed on the fallback
                # may rerun on it.
                self.primary.set()
                return

    async def _escalate(self, incident: _Incident, why: str) -> None:
        mode = self.settings.escalation
        self._set_state("failed", why)
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
        if self.comp.critical and self.pause_since is None:
            self.pause_since = time.monotonic()
        rounds = 1
        next_round = time.monotonic() + self._backoff(rounds)
        while True:
            left = self.pause_left()
            if left is not None and left <= 0:
                await self._end_pause(incident)
            await self._wait(
                self.settings.probe_period if left is None else min(self.settings.probe_period, left)
            )
            self._pending.clear()
            if (await self._probe("periodic")).healthy:
                await self._close(incident, "recovered", "probed healthy again while paused")
                self._set_state("healthy", "recovered")
                self._open_gate()
                return
            if time.monotonic() >= next_round and self._budget_left():
                if await self._repair_round(incident):
                    return
                self._set_state("failed", why)
                rounds += 1
                next_round = time.monotonic() + self._backoff(rounds)

    def pause_left(self) -> float | None:
        """Seconds before this component's pause reaches max_pause; None when not paused."""
        if self.pause_since is None:
            return None
        return self.settings.max_pause - (time.monotonic() - self.pause_since)

    async def _end_pause(self, incident: _Incident) -> None:
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

    def _set_state(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        old, self.state = self.state, state
        self.agent.event_nowait(
            "component_state",
            f"{self.comp.name}: {old} → {state} ({reason})",
            {"from": old, "to": state, "reason": reason},
            component=self.comp.name,
        )


class _MonitorExit(Exception):
    """A BaseException raised inside a monitor by code that was not asked to stop (a
    stray CancelledError; SystemExit or KeyboardInterrupt, which asyncio would let out of
    the loop): carried
    out as a crash of that monitor, with its traceback, never the night's end."""


async def _guarded(run: Any) -> None:
    try:
        await run
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real request to cancel this run: the supervisor decides what it means
        raise _MonitorExit(describe_error(exc)) from exc
    except (SystemExit, GeneratorExit, KeyboardInterrupt) as exc:
        # Our own Ctrl-C arrives through the loop's signal handler, never as this.
        raise _MonitorExit(describe_error(exc)) from exc


class RepairAgent:
    """Runs the monitors; the orchestrator starts it with the night and stops it after."""

    def __init__(
        self,
        components: Mapping[str, Component],
        ledger: Ledger,
        night_id: str,
        night_dir: Path,
        gate: Any,
        config: AgentConfig,
        *,
        on_abort: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        shortcuts: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.ledger = ledger
        # component name -> the scenario's own {shortcut, harm}; else the type's default
        self.shortcuts = {name: dict(s) for name, s in (shortcuts or {}).items()}
        self.night_id = night_id
        self.night_dir = night_dir
        self.gate = gate
        self.config = config
        self.on_abort = on_abort
        self.clock = clock
        self.components = dict(components)
        self.guard = Guard(self.event_nowait, on_knob=self._knob_moved)
        # (component, knob) -> [(agent clock, value set)]: which values were in force
        # when, so every attempt can be marked with the knobs off their configured value.
        self._knob_history: dict[tuple[str, str], list[tuple[float, Any]]] = {}
        self.repairs_done = 0
        self.repairs_verified = 0
        # Without a probe nothing can be verified, so nothing is monitored or repaired:
        # such components are listed as unmonitored, never shown as healthy.
        self.monitors = {
            name: ComponentMonitor(self, comp, MonitorSettings.for_component(comp, config))
            for name, comp in components.items()
            if comp.has_probe
        }
        self.unmonitored = [name for name, comp in components.items() if not comp.has_probe]
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarts = 0
        # Set by stop(): from then on a CancelledError is the agent's own, not a bug.
        self.stopping = False
        # 8 bytes a sample (10 a second): about 2 MB over an 8-hour night, not 9 MB of floats.
        self.lag_samples: array[float] = array("d")
        # Called with (component, state, detected_at) when an incident is closed verified.
        self.incident_listeners: list[Callable[[str, str, float], None]] = []
        for comp in components.values():
            comp.on_error(self._from_component)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, started_at: float, resumed: bool) -> None:
        self._loop = asyncio.get_running_loop()
        watched = ", ".join(
            f"{name} (probe every {span(m.settings.probe_period)}{', critical' if m.comp.critical else ''})"
            for name, m in self.monitors.items()
        )
        log.info(
            "repair agent started: monitoring %s; not monitored (no probe): %s",
            watched or "nothing",
            ", ".join(self.unmonitored) or "none",
        )
        for name in self.unmonitored:
            self.event_nowait(
                "unmonitored", f"{name} has no probe: not monitored, not repaired", component=name
            )
        for monitor in self.monitors.values():
            self._tasks.append(
                asyncio.create_task(self._supervise(monitor), name=f"monitor-{monitor.comp.name}")
            )
        self._tasks.append(asyncio.create_task(self._measure_lag(), name="agent-lag"))

    async def before_cycle(self, cycle: int) -> None:
        """Nothing to do per cycle: the monitors keep their own periods."""

    async def stop(self, reason: str = "the night ended") -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for monitor in self.monitors.values():
            if monitor.fallback_id is not None:
                await self.write(ops.end_fallback, monitor.fallback_id, self.clock())
                monitor.fallback_id = None
        still_open = [f"{m.comp.name} #{m.incident.id}" for m in self.monitors.values() if m.incident]
        knobs_off = [f"{m.comp.name}.{k}" for m in self.monitors.values() for k in m.comp.knobs.off()]
        log.info(
            "repair agent stopped: %s%s, %s (%d verified), %s",
            plural(len(still_open), "incident") + " open",
            f" ({', '.join(still_open)})" if still_open else "",
            plural(self.repairs_done, "repair") + " done",
            self.repairs_verified,
            f"knobs still off their configured values: {', '.join(knobs_off)}"
            if knobs_off
            else "every knob at its configured value",
        )
        if self.lag_samples:
            data = sorted(self.lag_samples)
            p99 = data[min(len(data) - 1, int(len(data) * 0.99))]
            await self.event(
                "loop_lag",
                f"event loop lag p99 {p99 * 1000:.1f} ms, max {data[-1] * 1000:.1f} ms",
                {"p99_s": p99, "max_s": data[-1], "samples": len(data)},
            )

    async def _supervise(self, monitor: ComponentMonitor) -> None:
        """Run the monitor; restart it whenever it ends, whatever it raised.

        Each run is a task of its own, so whatever user code does inside it (raise
        CancelledError, cancel its own task) cannot reach this one: here a cancellation
        only ever comes from stop(), and it ends the monitor.
        """
        name = monitor.comp.name
        crashes: deque[float] = deque()
        gave_up = False
        # Restarting is probing again: the first restart comes within one probe period.
        base = min(1.0, monitor.settings.probe_period)
        restarted = False
        while True:
            run = asyncio.create_task(_guarded(monitor.run(restarted)), name=f"monitor-run-{name}")
            try:
                await asyncio.wait({run})
            except asyncio.CancelledError:
                run.cancel()
                # A run whose user code swallows its cancellation is left behind, not awaited.
                await asyncio.wait({run}, timeout=1.0)
                raise
            if self.stopping:
                return
            if run.cancelled():
                exc: BaseException = asyncio.CancelledError("the monitor's task was cancelled from within")
            else:
                exc = run.exception() or RuntimeError("the monitor returned")
            restarted = True
            now = time.monotonic()
            crashes.append(now)
            while crashes and crashes[0] < now - RESTART_WINDOW_S:
                crashes.popleft()
            if len(crashes) < MAX_RESTARTS:
                gave_up = False
            delay = min(base * 2 ** (len(crashes) - 1), _RESTART_DELAY_MAX_S)
            self.restarts += 1
            cause = exc.__cause__ if isinstance(exc, _MonitorExit) and exc.__cause__ is not None else exc
            tb = "".join(traceback.format_exception(cause))[-8000:]
            log.error("monitor of %s crashed (%s); restarting in %.1f s", name, describe_error(cause), delay)
            with contextlib.suppress(Exception):
                await self.event(
                    "agent_restarted",
                    f"monitor of {name} crashed: {describe_error(cause)}",
                    {"traceback": tb, "backoff_s": delay, "crashes_in_window": len(crashes)},
                    component=name,
                )
            if len(crashes) >= MAX_RESTARTS and not gave_up:
                gave_up = True
                if not await self._monitor_lost(monitor, len(crashes), cause):
                    return  # abort: the night is ending
            left = monitor.pause_left()
            if left is not None:
                if left <= 0:
                    bound = f"max_pause {span(monitor.settings.max_pause)}"
                    with contextlib.suppress(Exception):
                        await self.event(
                            "escalated",
                            f"{name}: still not watched after a pause of {bound} → abort",
                            {"mode": "abort", "monitor": True, "max_pause_s": monitor.settings.max_pause},
                            component=name,
                        )
                    held = span(monitor.settings.max_pause - left)
                    self.abort(
                        f"{name} not watched for {held}: its monitor kept crashing "
                        f"({describe_error(cause)}); cycles were held until {bound}"
                    )
                    return
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def _monitor_lost(self, monitor: ComponentMonitor, crashes: int, exc: BaseException) -> bool:
        """A monitor that keeps crashing escalates as its component is configured. With
        'abort' the night ends (False); with 'pause' a critical component holds the gate,
        bounded by max_pause, while the monitor is restarted less and less often (True)."""
        name = monitor.comp.name
        mode = monitor.settings.escalation
        why = (
            f"its monitor crashed {crashes} times within {span(RESTART_WINDOW_S)} "
            f"({describe_error(exc)}): the component cannot be watched"
        )
        monitor._set_state("failed", why)
        if monitor.incident is not None:
            monitor.incident.escalated = True
            with contextlib.suppress(Exception):
                await self.write(
                    ops.update_incident,
                    monitor.incident.id,
                    {"state": "escalated", "escalation": f"{mode}: {why}"},
                )
        with contextlib.suppress(Exception):
            await self.event(
                "escalated", f"{name}: {why} → {mode}", {"mode": mode, "monitor": True}, component=name
            )
        await self.notify(
            {
                "event": "escalated",
                "component": name,
                "fault_kind": monitor.incident.kind if monitor.incident else None,
                "escalation": mode,
                "reason": why,
                "night_id": self.night_id,
            }
        )
        if mode == "abort":
            self.abort(f"aborted by escalation: {name}: {why}")
            return False
        if monitor.comp.critical:
            # Unwatched, a critical component cannot be vouched for: hold the cycles, as a
            # pause does, until a restarted monitor probes it healthy or max_pause ends it.
            self.gate.close(name, f"{name}: its monitor keeps crashing")
            if monitor.pause_since is None:
                monitor.pause_since = time.monotonic()
        return True

    async def _measure_lag(self, interval: float = 0.1) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            self.lag_samples.append(max(time.perf_counter() - t0 - interval, 0.0))

    # -- signals ---------------------------------------------------------------------

    def _from_component(self, comp: Component, kind: str, exc: BaseException) -> None:
        """The component listener: may run in a scenario thread; hop onto the loop."""
        details = comp.fault_details(exc)
        ts = self.clock()
        monitor = self.monitors.get(comp.name)
        if monitor is None or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            monitor.signal(kind, ts, details)
        else:
            self._loop.call_soon_threadsafe(monitor.signal, kind, ts, details)

    # -- recording ---------------------------------------------------------------------

    async def write(self, op: Any, *args: Any) -> Any:
        return await self.ledger.write(op, *args)

    async def event(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        await self.ledger.write(
            ops.add_event, self.night_id, self.clock(), kind, message, data, None, None, component
        )

    def event_nowait(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        self.ledger.submit(
            ops.add_event, self.night_id, self.clock(), kind, message, data, None, None, component
        )

    def abort(self, reason: str) -> None:
        self.on_abort(reason)

    async def notify(self, payload: dict[str, Any]) -> None:
        """Tell people (hook command, webhook). A failure is recorded, never fatal."""
        body = json.dumps(payload, default=str)
        if self.config.notify_command:
            try:
                proc = await asyncio.create_subprocess_shell(
                    self.config.notify_command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                async with asyncio.timeout(30):
                    _, err = await proc.communicate(body.encode())
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"exit {proc.returncode}: {redact(err.decode(errors='replace').strip())[:200]}"
                    )
                await self.event("notified", "notify command ran", {"channel": "command"})
            except Exception as exc:
                await self.event(
                    "notify_failed", f"notify command: {describe_error(exc)}", {"channel": "command"}
                )
        if self.config.notify_webhook:
            try:
                import httpx

                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.post(
                        self.config.notify_webhook, content=body, headers={"Content-Type": "application/json"}
                    )
                    response.raise_for_status()
                await self.event(
                    "notified", "webhook answered", {"channel": "webhook", "status": response.status_code}
                )
            except Exception as exc:
                await self.event("notify_failed", f"webhook: {describe_error(exc)}", {"channel": "webhook"})

    # -- views ---------------------------------------------------------------------------

    def fallbacks_during(self, t0: float, t1: float) -> list[str]:
        """Components whose fallback was active at any moment between t0 and t1."""
        out = []
        for name, m in self.monitors.items():
            for start, end in m.fallback_periods:
                if start <= t1 and (end is None or end >= t0):
                    out.append(name)
                    break
        return out

    async def primary_back(self, names: list[str]) -> None:
        """Return once each named component runs on its primary again: its fallback ended,
        which the monitor does only after a healthy probe of the primary. Not bounded
        here: the caller waits on it together with the night's stop."""
        for name in names:
            monitor = self.monitors.get(name)
            if monitor is not None:
                await monitor.primary.wait()

    def knobs_off_during(self, t0: float, t1: float) -> dict[str, dict[str, list[Any]]]:
        """Knobs off their configured value at any moment between t0 and t1:
        ``{component: {knob: [configured, value]}}`` (the last off value in force)."""
        out: dict[str, dict[str, list[Any]]] = {}
        for (comp_name, knob), changes in self._knob_history.items():
            configured = self.components[comp_name].knobs.configured(knob)
            in_force = [configured]
            for ts, value in changes:
                if ts <= t0:
                    in_force = [value]
                elif ts <= t1:
                    in_force.append(value)
            off = [v for v in in_force if v != configured]
            if off:
                out.setdefault(comp_name, {})[knob] = [configured, off[-1]]
        return out

    def _knob_moved(
        self, comp: Component, knob: str, old: Any, new: Any, by: str, incident_id: int | None
    ) -> None:
        """The guard changed a knob (a repair, or its return): keep its history, log it."""
        self._knob_history.setdefault((comp.name, knob), []).append((self.clock(), new))
        configured = comp.knobs.configured(knob)
        monitor = self.monitors.get(comp.name)
        if new == configured:
            log.info(
                "knob returned: %s.%s %r → %r, its configured value (by %s; incident %s)",
                comp.name, knob, old, new, by, incident_id,
            )  # fmt: skip
            return
        if monitor is not None:
            monitor.knob_incident[knob] = incident_id
        log.info(
            "knob changed: %s.%s %r → %r (configured %r; by %s; incident %s)",
            comp.name, knob, old, new, configured, by, incident_id,
        )  # fmt: skip

    def active_fallbacks(self) -> list[str]:
        return [name for name, m in self.monitors.items() if m.state == "fallback"]

    def states(self) -> dict[str, str]:
        return {name: m.state for name, m in self.monitors.items()}
