"""The orchestrator: runs a night of cycles within its bounds and records all of it.

Shape of a night: import the scenario, build components, open (or resume) the night in
the ledger, start ``parallel`` workers that pull cycle numbers from a queue, and for each
cycle run attempts until one is final. Bounds (cycle count, deadline, signal) stop new
work from starting; a signal also cancels what is running. Every record is committed to
the ledger before it is shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import socket
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..components import Component
from ..config import ProtectedSettings
from ..errors import InfraError, LedgerUnavailable, UsageError
from ..ledger import Ledger, ops, queries
from ..ledger.ownership import NightClaim
from ..redaction import RedactingFormatter, redact
from ..runtime import CallScope, current_call
from ..verdicts import RETRYABLE, Verdict, classify, error_type_name
from .context import CycleContext, CycleInput, NightContext
from .gate import Gate
from .journal import EventKind, Journal
from .loading import (
    build_components,
    build_fault_driver,
    check_agent_settings,
    config_where,
    git_commit,
    import_scenario,
    scenario_shortcuts,
)
from .plan import Plan, compute_deadline, new_night_id
from .progress import LogProgress, ProgressSink
from .services import NightService, StopBound, stop_within
from .stopping import Stopping

if TYPE_CHECKING:
    from ..agent import RepairAgent
    from ..faults.driver import FaultDriver

log = logging.getLogger("overnight")

_TRACEBACK_MAX = 20_000
_CONNECT_TIMEOUT_S = 60.0
# After a signal or at the end, everything that winds down (the agent, injected faults,
# components) is bounded, so a night always ends within seconds of being told to.
_CLOSE_TIMEOUT_S = 5.0
# Undoing a fault may start a stopped server: longer than other stops, bounded.
_FAULTS_STOP = StopBound(
    60.0,
    "undoing injected faults took over %.0f s; see the fault events",
    "undoing injected faults failed: %s",
)
_AGENT_STOP = StopBound(
    5.0, "the repair agent took over %.0f s to stop; left behind", "stopping the repair agent failed: %s"
)
# How often the night checks that it still owns itself (a PostgreSQL lock connection).
_CLAIM_CHECK_S = 15.0


class ScenarioExited(RuntimeError):
    """The scenario raised SystemExit or KeyboardInterrupt: a harness error of that
    attempt, never the end of the night."""


class CycleTimeout(TimeoutError):
    """The cycle ran past its ``cycle_timeout`` and was cancelled."""


@dataclass
class NightOutcome:
    night_id: str
    status: str  # completed | stopped | interrupted
    reason: str
    night_path: Path
    signal: int | None = None


class Orchestrator:
    """Runs one night (new or resumed). Use ``await Orchestrator(...).run()``."""

    def __init__(
        self,
        plan: Plan,
        ledger: Ledger,
        *,
        progress: ProgressSink | None = None,
        resume: dict[str, Any] | None = None,
        deadline_override: tuple[float | None, str | None] | None = None,
        clock: Callable[[], float] = time.time,
        handle_signals: bool = True,
        keep_claim: bool = False,
    ) -> None:
        self.plan = plan
        self.ledger = ledger
        self.progress = progress or LogProgress()
        self.resume = resume
        self.deadline_override = deadline_override
        self.clock = clock
        self.gate = Gate()
        self.loaded = plan.load_config()
        where = config_where(self.loaded)
        self.scenario = import_scenario(plan.scenario, self.loaded.base_dir, where)
        setup = self.loaded.config.setup
        self.setup = import_scenario(setup, self.loaded.base_dir, where, key="setup") if setup else None
        self.is_async = inspect.iscoroutinefunction(self.scenario)
        self.shortcuts = scenario_shortcuts(self.scenario, self.loaded.config.components, where)
        self.settings = ProtectedSettings(self.loaded.config.settings, on_write=self._settings_written)
        self.fingerprint = self.settings.fingerprint
        self.night_dir = Path(plan.night_dir)
        self.components = build_components(self.loaded, self.night_dir)
        check_agent_settings(self.loaded, self.components)
        self.handles: Mapping[str, Any] = MappingProxyType({n: c.handle for n, c in self.components.items()})
        self.night_id = resume["id"] if resume else new_night_id(clock())
        self.night_path = self.night_dir / self.night_id
        self.journal = Journal(ledger, self.night_id, clock)
        self.faults: FaultDriver | None = None
        if plan.faults:
            self.faults = build_fault_driver(
                plan, self.loaded, self.components, ledger, self.night_id, self.night_path, clock
            )
        self._cycles = CycleSource(0, frozenset())
        self.keep_claim = keep_claim
        self.claim: NightClaim | None = None
        self.stopping = Stopping(self.progress, clock, handle_signals)
        self._attempts_used: dict[int, tuple[int, int]] = {}
        self._session = 0
        self._log_handler: logging.Handler | None = None
        self.deadline: float | None = None
        self.fatal: BaseException | None = None
        self.setup_error: str | None = None
        self.agent: RepairAgent | None = None
        self.started_at = 0.0

    # -- the night --------------------------------------------------------------------

    async def run(self) -> NightOutcome:
        loop = asyncio.get_running_loop()
        # Sync scenarios run in threads; give every parallel slot one so --parallel N
        # really means N at once (the default pool is sized by CPU count).
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self.plan.parallel + 4, thread_name_prefix="overnight-cycle"
            )
        )
        # From the very start a signal stops the night (startup included); a second one
        # exits at once.
        self.stopping.install_signals(loop)
        try:
            return await self._run_owned(loop)
        finally:
            self.stopping.remove_signals(loop)

    async def _run_owned(self, loop: asyncio.AbstractEventLoop) -> NightOutcome:
        # Own the night before touching it: a second process is refused here, naming us.
        self.claim = await asyncio.to_thread(self.ledger.claim, self.night_id)
        try:
            self.night_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._release_claim()
            raise UsageError(f"--night-dir: cannot create {self.night_path}: {exc.strerror or exc}") from None
        self._attach_log()
        watch = asyncio.create_task(self._watch_claim(), name="night-claim")
        try:
            await self._open_night()
            # Connecting and the setup hook may take long: a signal cancels them.
            startup = asyncio.create_task(self._start(), name="night-startup")
            with self.stopping.cancellable(startup):
                try:
                    started = await startup
                except asyncio.CancelledError:
                    if not self.stopping.interrupted:
                        raise
                    started = False
            if started and not self.stopping.stop_starting:
                await self._run_workers(loop)
            await self._stop_services()
            return await self._close_night()
        finally:
            watch.cancel()
            # Injected faults are undone whatever happened (Ctrl-C, abort, our own error).
            await self._stop_services()
            await self._close_components()
            self._detach_log()
            if not self.keep_claim:
                self._release_claim()

    async def _start(self) -> bool:
        """Faults prepared, components connected, the agent started, the setup hook run,
        faults armed. False when the setup hook failed or the night was stopped."""
        if self.stopping.stop_starting:
            return False
        if self.faults is not None:
            await self.faults.prepare()
        await self._connect_components()
        await self._start_agent()
        if not await self._run_setup():
            return False
        if self.faults is not None:
            if self.agent is not None:
                self.agent.incident_listeners.append(self.faults.incident_closed)
            await self.faults.start(self.started_at, bool(self.resume))
        return True

    async def _run_workers(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline_handle = self.stopping.arm_deadline(loop, self.deadline)
        try:
            self.progress.night_started(
                self.night_id,
                self.plan.cycles_to_run,
                self.plan.parallel,
                await asyncio.to_thread(self._verdict_counts),
                bool(self.resume),
            )
            workers = [asyncio.create_task(self._worker()) for _ in range(self.plan.parallel)]
            await asyncio.gather(*workers)
        finally:
            if deadline_handle is not None:
                deadline_handle.cancel()
            self.progress.close()

    async def _watch_claim(self) -> None:
        """A night that lost its ownership (its PostgreSQL lock connection dropped and
        another process took the lock) stops at once rather than run beside the other."""
        while True:
            await asyncio.sleep(_CLAIM_CHECK_S)
            if self.claim is None:
                continue
            try:
                async with asyncio.timeout(_CLAIM_CHECK_S):
                    lost = await asyncio.to_thread(self.claim.check)
            except TimeoutError:
                continue  # the server is slow; the ledger's own writes will say more
            if lost:
                log.error("%s", lost)
                self.fatal = self.fatal or LedgerUnavailable(lost)
                self.interrupt(lost)
                return

    def _release_claim(self) -> None:
        if self.claim is not None:
            self.claim.release()

    async def _open_night(self) -> None:
        now = self.clock()
        plan = self.plan
        self.started_at = self.resume["started_at"] if self.resume else now
        if self.resume is None:
            self.deadline = compute_deadline(now, plan.max_hours, plan.until)
            row = {
                "id": self.night_id,
                "scenario": plan.scenario,
                "started_at": now,
                "status": "running",
                "seed": plan.seed,
                "planned_cycles": plan.cycles_to_run,
                "parallel": plan.parallel,
                "deadline": self.deadline,
                "plan": plan.to_json(),
                "config_path": plan.config_path,
                "config_fingerprint": self.loaded.fingerprint,
                "protected_fingerprint": self.fingerprint,
                "night_dir": str(self.night_dir),
                "hostname": socket.gethostname(),
                "dry_run": plan.dry_run,
            }
            await self.ledger.write(ops.create_night, row)
        else:
            # What we were asked to resume may have moved on before we owned it.
            fresh = await asyncio.to_thread(self._read_night)
            if fresh is None or fresh["status"] not in (*queries.RESUMABLE, "stopped"):
                state = fresh["status"] if fresh else "gone"
                raise UsageError(f"night {self.night_id} is {state} now; there is nothing to resume")
            self.resume = fresh
            if self.resume["protected_fingerprint"] != self.fingerprint:
                raise UsageError(
                    f"night {self.night_id}: its protected settings differ from when it started "
                    "(an environment variable changed?); refusing to resume a different night"
                )
            self.deadline = self.resume["deadline"]
            if self.deadline_override is not None:
                self.deadline = compute_deadline(now, *self.deadline_override)
                await self.ledger.write(ops.set_deadline, self.night_id, self.deadline)
            elif self.deadline is not None and self.deadline <= now:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.deadline))
                raise UsageError(
                    f"night {self.night_id}: its time bound passed at {when}; "
                    "give --max-hours or --until to resume it with a new one"
                )
            closed = await self.ledger.write(ops.recover_interrupted, self.night_id)
            if closed:
                log.info("closed %d attempt(s) left running by the previous session", closed)
        self._session = await self.ledger.write(
            ops.start_session, self.night_id, now, os.getpid(), socket.gethostname()
        )
        await self.journal.event(
            EventKind.NIGHT_RESUMED if self.resume else EventKind.NIGHT_STARTED,
            f"session {self._session}, pid {os.getpid()}",
            {
                "cycles": self.plan.cycles_to_run,
                "parallel": self.plan.parallel,
                "deadline": self.deadline,
                "dry_run": self.plan.dry_run,
                "git_commit": await git_commit(self.loaded.base_dir),
                # The values, not only their hash (redacted at the ledger's door).
                "settings": self.settings.to_dict(),
                "plan_choices": dict(self.plan.choices),
            },
        )
        done = await asyncio.to_thread(self._done_cycles)
        self._attempts_used = await asyncio.to_thread(self._read_attempts_used)
        self._cycles = CycleSource(self.plan.cycles_to_run, frozenset(done))
        log.info(
            "%s night %s (session %d): %d cycles planned, %d to run, parallel %d, deadline %s",
            "resumed" if self.resume else "started",
            self.night_id,
            self._session,
            self.plan.cycles_to_run,
            self._cycles.remaining,
            self.plan.parallel,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.deadline)) if self.deadline else "none",
        )
        if self.deadline is not None and self.deadline <= now:
            self.stopping.stop("time bound already reached")

    async def _close_night(self) -> NightOutcome:
        now = self.clock()
        if self.ledger.broken is not None:
            # Nothing more can be recorded; the night stays "running" in the ledger and
            # --resume carries on from what was committed.
            self.fatal = self.fatal or self.ledger.broken
            return NightOutcome(
                self.night_id, "aborted", str(self.ledger.broken), self.night_path, self.stopping.signal
            )
        remaining = self.plan.cycles_to_run - len(await asyncio.to_thread(self._done_cycles))
        if self.fatal is not None or self.setup_error is not None or self.stopping.abort_reason is not None:
            status = "aborted"
        elif self.stopping.interrupted:
            status = "interrupted"
        elif remaining > 0:
            status = "stopped"
            self.stopping.reason = self.stopping.reason or f"{remaining} cycles did not finish"
        else:
            status = "completed"
        reason = self.stopping.reason or "all planned cycles ran"
        # Cycles that did not run because the gate held them when the night ended: the
        # report must never call such a night a clean pass.
        held = dict(self.gate.reasons) if remaining > 0 and not self.gate.is_open else {}
        if held and status != "aborted":
            reason = f"{reason}; held at the gate: {'; '.join(held.values())}"
        fp_end = self.settings.fingerprint
        if fp_end != self.fingerprint:
            await self.journal.event(
                EventKind.PROTECTED_FINGERPRINT_MISMATCH,
                "protected settings changed during the night",
                {"start": self.fingerprint, "end": fp_end},
            )
        await self.ledger.write(ops.finish_night, self.night_id, now, status, reason, fp_end)
        await self.ledger.write(ops.end_session, self.night_id, self._session, now, status)
        await self.journal.event(
            EventKind.NIGHT_ENDED,
            f"{status}: {reason}",
            {"remaining_cycles": remaining, "held_at_gate": held},
        )
        log.info("night %s %s: %s", self.night_id, status, reason)
        return NightOutcome(self.night_id, status, reason, self.night_path, self.stopping.signal)

    # -- workers and cycles -----------------------------------------------------------

    async def _worker(self) -> None:
        while not self.stopping.stop_starting:
            cycle = self._cycles.next()
            if cycle is None:
                return
            try:
                await self._run_cycle(cycle)
            except Exception as exc:
                # Our own failure (most likely the ledger is unreachable). Stop cleanly:
                # running cycles are cancelled and stay pending, so resume reruns them.
                if isinstance(exc, LedgerUnavailable):
                    log.debug("cycle %d: %s", cycle, exc)
                else:
                    log.exception("internal error while running cycle %d", cycle)
                if self.fatal is None:
                    self.fatal = exc
                self.interrupt(f"internal error: {type(exc).__name__}: {redact(str(exc))}")
                return

    async def _run_cycle(self, cycle: int) -> None:
        plan = self.plan
        cycle_input = CycleInput.derive(plan.seed, cycle)
        last_no, counted = self._attempts_used.get(cycle, (0, 0))
        budget = 1 + plan.retry_attempts
        await self._wait_gate()
        if self.stopping.stop_starting:
            return  # never started: nothing written, a later session runs it
        await self.ledger.write(
            ops.cycle_started,
            self.night_id,
            cycle,
            str(cycle_input.seed),
            self.clock(),
            self.fingerprint,
        )
        # A cycle recorded as started runs its first attempt even when the time bound
        # lands during that write: otherwise it would stay "started" with nothing run.
        first = True
        while True:
            if not first:
                await self._wait_gate()
            if self.stopping.interrupted or (self.stopping.stop_starting and not first):
                # Nothing new starts once the night is stopping; a cycle held at the gate
                # stays pending (resume runs it) rather than failing for want of time.
                return
            first = False
            for service in self._services():
                await service.before_cycle(cycle)  # once per cycle: it meets its faults
            attempt = last_no = last_no + 1
            verdict, result, error, meta, fallbacks = await self._run_attempt(cycle, attempt, cycle_input)
            if verdict is Verdict.INTERRUPTED:
                await self.ledger.write(ops.attempt_finished, self.night_id, cycle, attempt, result, False)
                self.progress.attempt_finished(
                    cycle, attempt, verdict.value, False, result["duration_s"], None
                )
                return
            counted += 1
            # A product check that failed while a declared fallback served the cycle says
            # nothing trustworthy about the product: rerun on the primary (promise 2).
            # Only a failure on primaries is a product failure, final (promise 1).
            on_fallback = verdict is Verdict.FAILED and bool(fallbacks)
            final = (
                (verdict not in RETRYABLE and not on_fallback)
                or counted >= budget
                or self.stopping.stop_starting
            )
            cycle_verdict = Verdict.FAILED_ON_FALLBACK if on_fallback and final else verdict
            fields = {"protected_fingerprint": self.fingerprint, **meta, "verdict": cycle_verdict.value}
            await self.ledger.write(
                ops.attempt_finished, self.night_id, cycle, attempt, result, final, fields
            )
            why = "" if final else " (retrying)"
            if on_fallback:
                then = "cycle failed_on_fallback" if final else "rerun on the primary once it is back"
                why = f" on the {', '.join(fallbacks)} fallback: {then}"
            log.info(
                "cycle %d attempt %d: %s in %.3fs%s%s",
                cycle,
                attempt,
                verdict.value,
                result["duration_s"],
                why,
                f" — {error}" if error else "",
                extra={"attempt_line": True},
            )
            self.progress.attempt_finished(
                cycle, attempt, cycle_verdict.value, final, result["duration_s"], error
            )
            if final:
                return
            if on_fallback:
                if not await self._wait_primary(fallbacks):
                    # The night stopped before the primary was back: no product verdict.
                    await self.ledger.write(
                        ops.finish_cycle,
                        self.night_id,
                        cycle,
                        result,
                        fields | {"verdict": Verdict.FAILED_ON_FALLBACK.value},
                    )
                    log.info(
                        "cycle %d: failed_on_fallback — %s not back on its primary before the night "
                        "stopped (%s)",
                        cycle,
                        ", ".join(fallbacks),
                        self.stopping.reason,
                    )
                    self.progress.attempt_finished(
                        cycle, attempt, Verdict.FAILED_ON_FALLBACK.value, True, result["duration_s"], error
                    )
                    return
                continue
            await self._backoff(counted)

    async def _run_attempt(
        self, cycle: int, attempt: int, cycle_input: CycleInput
    ) -> tuple[Verdict, dict[str, Any], str | None, dict[str, Any], list[str]]:
        """Run one attempt. Returns its verdict, its attempt row, its error message, the
        cycle's fields should it be final, and the components whose fallback touched it."""
        started = self.clock()
        # The knob values this attempt ran with, and whether any fallback touched it.
        knobs = {name: comp.knobs.values() for name, comp in self.components.items() if comp.knobs.values()}
        fallbacks: set[str] = set()
        knobs_off: dict[str, dict[str, list[Any]]] = {}
        await self.ledger.write(ops.attempt_started, self.night_id, cycle, attempt, self._session, started)
        ctx = CycleContext(
            night_id=self.night_id,
            cycle=cycle,
            attempt=attempt,
            input=cycle_input,
            settings=self.settings,
            components=self.handles,
            cycle_dir=self.night_path / "cycles" / f"{cycle:03d}",
            ledger=self.ledger,
            logger=logging.getLogger(f"overnight.scenario.c{cycle}"),
            on_step=self.progress.step_changed,
        )
        self.progress.attempt_started(cycle, attempt)
        t0 = time.perf_counter()
        scope = CallScope(self.night_id, cycle, attempt, ctx._steps)
        task = asyncio.create_task(self._call_scenario(ctx, scope), name=f"cycle-{cycle}-attempt-{attempt}")
        try:
            with self.stopping.cancellable(task):
                await asyncio.wait({task})
        finally:
            ctx._closed = True
        duration = time.perf_counter() - t0
        if self.agent is not None:
            # Any fallback that was active, and any knob a repair had moved off its
            # configured value, at any moment of the attempt marks it (and the cycle).
            fallbacks |= set(self.agent.fallbacks_during(started, started + duration))
            knobs_off = self.agent.knobs_off_during(started, started + duration)
        meta: dict[str, Any] = {"knobs": knobs, "fallback": bool(fallbacks), "knobs_off": knobs_off}
        exc: BaseException | None
        if task.cancelled():
            verdict, exc = Verdict.INTERRUPTED, None
        else:
            exc = task.exception()
            if isinstance(exc, LedgerUnavailable):
                # Our failure, not the scenario's: no verdict; the night ends (exit 3) and
                # the attempt stays open for resume to close and rerun.
                raise exc
            verdict = Verdict.PASSED if exc is None else classify(exc)
        result: dict[str, Any] = {
            "ended_at": started + duration,
            "duration_s": duration,
            "verdict": verdict.value,
            "step": ctx._step_for(exc)
            if exc is not None
            else (ctx._cancelled_step if task.cancelled() else None),
            "fallback": bool(fallbacks),
            "knobs_off": knobs_off,
            "calls": scope.calls,
        }
        message = None
        if verdict is Verdict.INTERRUPTED:
            result["error_message"] = f"stopped: {self.stopping.reason or 'interrupted'}"
        elif exc is not None:
            message = redact(str(exc)) or type(exc).__name__
            result.update(
                error_type=error_type_name(exc),
                error_message=message,
                traceback="".join(traceback.format_exception(exc))[-_TRACEBACK_MAX:],
            )
            if isinstance(exc, InfraError):
                result.update(fault_component=exc.component, fault_kind=exc.kind)
        return verdict, result, message, meta, sorted(fallbacks)

    async def _call_scenario(self, ctx: CycleContext, scope: CallScope) -> None:
        # Component handles read this to attribute usage and faults to cycle and step;
        # the list is ctx's own step stack, so it follows the scenario as it moves on.
        current_call.set(scope)
        timeout = self.plan.cycle_timeout
        try:
            async with asyncio.timeout(timeout) as cm:
                if self.is_async:
                    await self.scenario(ctx)
                else:
                    # A thread cannot be cancelled: on timeout the attempt ends here and
                    # the thread is abandoned; ctx is closed so it records nothing more.
                    result = await asyncio.to_thread(self.scenario, ctx)
                    if inspect.isawaitable(result):
                        await result
        except TimeoutError:
            if cm.expired():
                raise CycleTimeout(f"cycle exceeded its timeout of {timeout:g} s") from None
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            # Left alone, these would stop the event loop and the whole night: they are
            # the scenario's doing (our own signals arrive through the loop's handlers).
            what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
            raise ScenarioExited(f"the scenario raised {what}") from None

    async def _wait_gate(self) -> None:
        if not self.gate.is_open:
            log.info("gate closed (%s); holding new attempts", "; ".join(self.gate.reasons.values()))
            waiter = asyncio.create_task(self.gate.wait())
            stopper = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    async def _wait_primary(self, components: list[str]) -> bool:
        """Wait until each component's fallback has ended on a healthy probe of its
        primary, or the night stops (its time bound, a signal, an abort: ``stopping``).
        True when the cycle may rerun on the primary."""
        if self.agent is None:
            return not self.stopping.stop_starting
        log.info("waiting for %s to be back on the primary", ", ".join(components))
        waiter = asyncio.create_task(self.agent.primary_back(components))
        stopper = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        return not self.stopping.stop_starting

    async def _backoff(self, counted: int) -> None:
        delay = min(self.plan.retry_backoff * (2 ** (counted - 1)), 60.0)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    # -- stopping -------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """End the night now with a clear reason (the agent's ``abort`` escalation)."""
        self.stopping.abort(reason)

    def interrupt(self, reason: str, signum: int | None = None) -> None:
        """Stop starting cycles and cancel the running ones (Ctrl-C, SIGTERM)."""
        self.stopping.interrupt(reason, signum)

    def _settings_written(self, key: str, value: Any) -> None:
        """A scenario, hook or strategy tried to change a protected setting: record it."""
        scope = current_call.get()
        by = f"cycle {scope.cycle} (step {scope.step or '-'})" if scope else "a hook or strategy"
        if self.ledger is None or self._session == 0:
            return
        self.journal.submit(
            EventKind.DEGRADATION_BLOCKED,
            f"{by} tried to set {key} = {value!r}: refused ({key} is a protected setting)",
            {"by": by, "attempted": f"set {key} = {value!r}", "reason": "protected setting"},
        )

    def _services(self) -> list[NightService]:
        """What runs beside the cycles, in the order it stops: injected faults are undone
        while the agent still watches."""
        return [s for s in (self.faults, self.agent) if s is not None]

    async def _start_agent(self) -> None:
        cfg = self.loaded.config.agent
        if not cfg.enabled or not self.components:
            return
        from ..agent import RepairAgent

        self.agent = RepairAgent(
            self.components,
            self.ledger,
            self.night_id,
            self.night_dir,
            self.gate,
            cfg,
            on_abort=self.abort,
            clock=self.clock,
            shortcuts=self.shortcuts,
        )
        await self.agent.start(self.started_at, bool(self.resume))

    async def _stop_services(self) -> None:
        """Stop every service, each within its bound. The agent is stopped once (it is
        dropped first); undoing faults is idempotent and tried again on the way out."""
        reason = self.stopping.reason or "the night ended"
        agent, self.agent = self.agent, None
        for service, bound in ((self.faults, _FAULTS_STOP), (agent, _AGENT_STOP)):
            if service is not None:
                await stop_within(service, reason, bound)

    async def _run_setup(self) -> bool:
        """Run the config's ``setup`` hook once for this session. False if it failed."""
        if self.setup is None:
            return True
        night = NightContext(
            night_id=self.night_id,
            night_path=self.night_path,
            settings=self.settings,
            components=self.handles,
            log=logging.getLogger("overnight.scenario.setup"),
            resumed=bool(self.resume),
        )
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.plan.cycle_timeout):
                result = self.setup(night)
                if inspect.isawaitable(result):
                    await result
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # the hook's, never the night's end
            detail = f"{type(exc).__name__}: {redact(str(exc))}"
            tb = "".join(traceback.format_exception(exc))[-_TRACEBACK_MAX:]
            await self.journal.event(
                EventKind.SETUP_FAILED, detail, {"traceback": tb, "verdict": classify(exc).value}
            )
            log.error("setup failed: %s", detail)
            self.setup_error = detail
            self.stopping.fail_start(f"setup failed: {detail}")
            return False
        await self.journal.event(
            EventKind.SETUP_DONE, None, {"duration_s": round(time.perf_counter() - t0, 4)}
        )
        return True

    # -- components -------------------------------------------------------------------

    async def _connect_components(self) -> None:
        for comp in self.components.values():
            comp.bind(self.journal.recorder)

        async def one(name: str, comp: Component) -> None:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await comp.connect()
                # Declared after connecting: only then is the target known (a sandbox
                # component learns its URL on connect).
                await self.journal.event(
                    EventKind.COMPONENT_DECLARED, comp.type_name, comp.describe(), component=name
                )
                await self.journal.event(EventKind.COMPONENT_CONNECTED, None, component=name)
            except Exception as exc:
                # Not fatal: cycles that use it will fail as infra errors, and say so.
                await self.journal.event(
                    EventKind.COMPONENT_DECLARED, comp.type_name, comp.describe(), component=name
                )
                await self.journal.event(
                    EventKind.COMPONENT_CONNECT_FAILED, f"{type(exc).__name__}: {exc}", component=name
                )
                log.warning("component %s failed to connect: %s", name, redact(str(exc)))

        await asyncio.gather(*(one(n, c) for n, c in self.components.items()))

    async def _close_components(self) -> None:
        async def one(name: str, comp: Component) -> None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await comp.close()
            except Exception as exc:
                log.warning("component %s failed to close: %s", name, redact(str(exc)) or type(exc).__name__)

        await asyncio.gather(*(one(n, c) for n, c in self.components.items()))

    # -- helpers ---------------------------------------------------------------------

    def _read_night(self) -> dict[str, Any] | None:
        with self.ledger.read() as conn:
            return queries.get_night(conn, self.night_id)

    def _done_cycles(self) -> set[int]:
        with self.ledger.read() as conn:
            return queries.done_cycles(conn, self.night_id)

    def _read_attempts_used(self) -> dict[int, tuple[int, int]]:
        with self.ledger.read() as conn:
            return queries.attempts_used(conn, self.night_id)

    def _verdict_counts(self) -> Counter[str]:
        with self.ledger.read() as conn:
            return Counter(
                c["verdict"] for c in queries.cycles_of(conn, self.night_id) if c["status"] == "done"
            )

    def _attach_log(self) -> None:
        handler = QuietFileHandler(self.night_path / "orchestrator.log", encoding="utf-8")
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        # The progress sink's lines repeat what the orchestrator logs; keep the file lean.
        handler.addFilter(lambda r: not r.name.startswith("overnight.progress"))
        root = logging.getLogger("overnight")
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("overnight").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


class QuietFileHandler(logging.FileHandler):
    """orchestrator.log on a full disk: lines are lost, but no traceback reaches the
    console (the ledger's own error ends the night with one line)."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


class CycleSource:
    """Cycle numbers 1..N not yet done, handed out in order, in constant memory: a plan
    of any size starts at once (only the done set of a resumed night is held)."""

    def __init__(self, total: int, done: frozenset[int]) -> None:
        self.total = total
        self.done = done
        self._next = 1

    @property
    def remaining(self) -> int:
        return self.total - sum(1 for c in self.done if 1 <= c <= self.total)

    def next(self) -> int | None:
        while self._next <= self.total and self._next in self.done:
            self._next += 1
        if self._next > self.total:
            return None
        cycle, self._next = self._next, self._next + 1
        return cycle
