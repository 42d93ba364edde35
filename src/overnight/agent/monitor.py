"""One component's monitor: the Kubernetes probe model (period, timeout, failure and
success thresholds, startup grace), woken at once when a cycle's call fails (the
component's classifier signals it), so a fault a cycle hits is detected in milliseconds,
not at the next period. It opens the component's incidents and works them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import tenacity

from ..components import Component, KnobRefused, ProbeResult, describe_error
from ..errors import ProtectedSettingError
from ..ledger import ops
from ..numbers import plural, span
from .loophold import BLOCKING_S, LoopHold
from .playbooks import DEGRADING_SHORTCUTS, playbook_for
from .settings import MonitorSettings
from .states import MonitorState
from .strategies import RepairContext, RepairFailed, Strategy

if TYPE_CHECKING:
    from .agent import RepairAgent

log = logging.getLogger("overnight.agent")


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
        self.state = MonitorState.HEALTHY
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
        if self.comp.critical and self.state in (MonitorState.HEALTHY, MonitorState.SUSPECT):
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
                self.set_state(MonitorState.HEALTHY, "probe healthy")
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
                self.set_state(
                    MonitorState.SUSPECT, f"probe failed ({self._failures}/{self.settings.failure_threshold})"
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
        self.set_state(MonitorState.UNHEALTHY, f"{incident.kind}")
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
                self.set_state(MonitorState.HEALTHY, "recovered")
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
        self.set_state(MonitorState.REPAIRING, strategy.name)
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
            self.set_state(MonitorState.HEALTHY, f"verified after {strategy.name}")
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
        self.set_state(
            MonitorState.FALLBACK, f"repairs failed; using the declared {self.settings.fallback} fallback"
        )
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
                self.set_state(MonitorState.HEALTHY, "back on the primary")
                # Only now, with the primary verified: cycles that failed on the fallback
                # may rerun on it.
                self.primary.set()
                return

    async def _escalate(self, incident: _Incident, why: str) -> None:
        mode = self.settings.escalation
        self.set_state(MonitorState.FAILED, why)
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
                self.set_state(MonitorState.HEALTHY, "recovered")
                self._open_gate()
                return
            if time.monotonic() >= next_round and self._budget_left():
                if await self._repair_round(incident):
                    return
                self.set_state(MonitorState.FAILED, why)
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
