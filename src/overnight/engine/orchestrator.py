"""The orchestrator: runs a night of cycles within its bounds and records all of it.

Shape of a night: load the scenario and components (``loading``), own and open (or
resume) the night in the ledger, start its services and the setup hook, then run
``parallel`` workers that take cycle numbers in turn (``cycles``) and run each cycle's
attempts until one is final (``attempts``). Bounds (cycle count, deadline, signal:
``stopping``) stop new work from starting; a signal also cancels what is running. Every
record is committed to the ledger (``journal``) before it is shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..config import ProtectedSettings
from ..errors import LedgerUnavailable, UsageError
from ..export import OtlpExport, otlp_export
from ..ledger import Ledger, ops, queries
from ..ledger.ownership import NightClaim
from ..runtime import current_call
from ..weakening.code import compare_project, summary, unavailable
from .attempts import CycleRunner
from .context import NightContext
from .cycles import CycleSource
from .executors import AttemptEnv, Executor, InlineExecutor
from .gate import Gate
from .journal import EventKind, Journal, NightLog
from .loading import (
    build_components,
    build_fault_driver,
    check_agent_settings,
    close_components,
    config_where,
    connect_components,
    git_commit,
    import_scenario,
    imported_files,
    run_setup_hook,
    scenario_shortcuts,
)
from .plan import Plan, compute_deadline, new_night_id
from .progress import LogProgress, ProgressSink
from .pytest_suite import PytestSuite, pytest_path, suite_files
from .resume import reopen
from .services import (
    AGENT_STOP,
    EXECUTOR_STOP,
    EXPORT_STOP,
    FAULTS_STOP,
    METRICS_STOP,
    NightService,
    stop_within,
)
from .stopping import Stopping
from .workers import WorkerStartFailed, check_executor, check_worker_components, worker_pool

if TYPE_CHECKING:
    from ..agent import RepairAgent
    from ..faults.driver import FaultDriver
    from .metrics import MetricsEndpoint

log = logging.getLogger("overnight")

# Git's part of the code checks at a night's start, all its calls together; the whole
# comparison (the ledger read included) gets a little more.
CODE_CHECKS_GIT_S = 20.0
CODE_CHECKS_S = CODE_CHECKS_GIT_S + 5.0
NO_PREVIOUS_NIGHT = "no previous ended night of this scenario"


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
        metrics: MetricsEndpoint | None = None,
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
        # A pytest suite (``pytest:PATH``) is a scenario of the engine's own.
        suite_path = pytest_path(plan.scenario)
        self.suite: PytestSuite | None = None
        if suite_path is not None:
            self.suite = PytestSuite(suite_path, self.loaded, plan.pytest_args, where)
            self.scenario = self.suite.cycle
        else:
            self.scenario = import_scenario(plan.scenario, self.loaded.base_dir, where)
        setup = self.loaded.config.setup
        self.setup = import_scenario(setup, self.loaded.base_dir, where, key="setup") if setup else None
        self.shortcuts = scenario_shortcuts(self.scenario, self.loaded.config.components, where)
        self.settings = ProtectedSettings(self.loaded.config.settings, on_write=self._settings_written)
        self.fingerprint = self.settings.fingerprint
        self.night_dir = Path(plan.night_dir)
        check_executor(plan, self.suite is not None, where)
        self.components = build_components(self.loaded, self.night_dir)
        check_worker_components(plan, self.components, where, self.loaded.key_prefix)
        check_agent_settings(self.loaded, self.components)
        self.handles: Mapping[str, Any] = MappingProxyType({n: c.handle for n, c in self.components.items()})
        if self.suite is not None:
            self.suite.attach(self.components, ledger, self.night_dir)
        self.night_id = resume["id"] if resume else new_night_id(clock())
        self.night_path = self.night_dir / self.night_id
        self.journal = Journal(ledger, self.night_id, clock)
        self.faults: FaultDriver | None = None
        if plan.faults:
            self.faults = build_fault_driver(
                plan, self.loaded, self.components, ledger, self.night_id, self.night_path, clock
            )
        # Traces to an OpenTelemetry collector, when configured (it reads the ledger).
        self.export: OtlpExport | None = otlp_export(
            self.loaded.config.export, ledger, self.night_id, plan.scenario
        )
        self._cycles = CycleSource(0, frozenset())
        self.keep_claim = keep_claim
        self.claim: NightClaim | None = None
        self.stopping = Stopping(self.progress, clock, handle_signals)
        self._attempts_used: dict[int, tuple[int, int, int]] = {}
        self._session = 0
        self.night_log = NightLog()
        self.deadline: float | None = None
        self.fatal: BaseException | None = None
        self.setup_error: str | None = None
        self.agent: RepairAgent | None = None
        self.started_at = 0.0
        # /metrics, already listening (bound by the caller, so a port in use is said before
        # the night starts); closed when run() returns, whatever ended the night.
        self.metrics = metrics

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
            if self.metrics is not None:
                await stop_within(self.metrics, self.stopping.reason or "the night ended", METRICS_STOP)

    async def _run_owned(self, loop: asyncio.AbstractEventLoop) -> NightOutcome:
        # Own the night before touching it: a second process is refused here, naming us.
        self.claim = await asyncio.to_thread(self.ledger.claim, self.night_id)
        try:
            self.night_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._release_claim()
            raise UsageError(f"--night-dir: cannot create {self.night_path}: {exc.strerror or exc}") from None
        self.night_log.attach(self.night_path / "orchestrator.log")
        watch = asyncio.create_task(
            self.stopping.watch_claim(self.claim, lambda lost: self._fail(LedgerUnavailable(lost), lost)),
            name="night-claim",
        )
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
            await close_components(self.components)
            self.night_log.detach()
            if not self.keep_claim:
                self._release_claim()

    async def _start(self) -> bool:
        """Faults prepared, components connected, the agent started, the setup hook run,
        faults armed. False when the setup hook failed or the night was stopped."""
        if self.stopping.stop_starting:
            return False
        if self.faults is not None:
            await self.faults.prepare()
        await connect_components(self.components, self.journal)
        await self._start_agent()
        await self._start_metrics()
        if self.export is not None:
            await self.export.start(self.started_at, bool(self.resume))
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
                await asyncio.to_thread(self.journal.verdict_counts),
                bool(self.resume),
            )
            runner = CycleRunner(
                plan=self.plan,
                ledger=self.ledger,
                night_id=self.night_id,
                session=self._session,
                fingerprint=self.fingerprint,
                components=self.components,
                gate=self.gate,
                stopping=self.stopping,
                progress=self.progress,
                clock=self.clock,
                agent=self.agent,
                services=self._services(),
                attempts_used=self._attempts_used,
                fail=self._fail,
            )
            executor = self._executor()
            try:
                starting = asyncio.create_task(executor.start(), name="executor-start")
                with self.stopping.cancellable(starting):  # joining a cluster may take long
                    await asyncio.wait({starting})
                try:
                    if starting.cancelled():
                        return
                    starting.result()
                except WorkerStartFailed as exc:
                    # No cycle can run: the night ends aborted, saying why (as a failed setup).
                    log.error("%s", exc)
                    self.setup_error = str(exc)
                    self.stopping.fail_start(str(exc))
                    return
                slots = [executor.slot(i) for i in range(self.plan.parallel)]
                await asyncio.gather(*(runner.work(self._cycles, slot) for slot in slots))
            finally:
                await stop_within(executor, self.stopping.reason or "the night ended", EXECUTOR_STOP)
        finally:
            if deadline_handle is not None:
                deadline_handle.cancel()
            self.progress.close()

    def _executor(self) -> Executor:
        env = AttemptEnv(
            night_id=self.night_id,
            night_path=self.night_path,
            seed=self.plan.seed,
            scenario=self.scenario,
            settings=self.settings,
            handles=self.handles,
            ledger=self.ledger,
            cycle_timeout=self.plan.cycle_timeout,
            on_step=self.progress.step_changed,
        )
        if self.plan.executor == "inline":
            return InlineExecutor(env, self.stopping)
        return worker_pool(
            self.plan,
            self.loaded,
            self.night_path,
            self.components,
            self.ledger,
            lambda: self.agent,
            self.progress,
            self.stopping,
        )

    def _fail(self, exc: BaseException, reason: str) -> None:
        """Our own failure (the ledger, a lost claim, a bug): the night ends (exit 3);
        running cycles are cancelled and stay pending, so resume reruns them."""
        self.fatal = self.fatal or exc
        self.interrupt(reason)

    def _release_claim(self) -> None:
        if self.claim is not None:
            self.claim.release()

    async def _open_night(self) -> None:
        now = self.clock()
        plan = self.plan
        self.started_at = self.resume["started_at"] if self.resume else now
        if self.resume is None:
            self.deadline = compute_deadline(now, plan.max_hours, plan.until)
            row = plan.night_row(self.night_id, now, self.deadline, self.loaded.fingerprint, self.fingerprint)
            await self.ledger.write(ops.create_night, row)
        else:
            self.resume, self.deadline = await reopen(
                self.journal, self.fingerprint, self.deadline_override, now
            )
        self._session = await self.ledger.write(
            ops.start_session, self.night_id, now, os.getpid(), socket.gethostname()
        )
        commit = await git_commit(self.loaded.base_dir)
        await self.journal.event(
            EventKind.NIGHT_RESUMED if self.resume else EventKind.NIGHT_STARTED,
            f"session {self._session}, pid {os.getpid()}",
            {
                "cycles": self.plan.cycles_to_run,
                "parallel": self.plan.parallel,
                "deadline": self.deadline,
                "dry_run": self.plan.dry_run,
                "git_commit": commit,
                # The values, not only their hash (redacted at the ledger's door).
                "settings": self.settings.to_dict(),
                "plan_choices": dict(self.plan.choices),
            },
        )
        if self.resume is None:
            await self._record_code_checks(commit)
        done = await asyncio.to_thread(self.journal.done_cycles)
        self._attempts_used = await asyncio.to_thread(self.journal.attempts_used)
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

    async def _record_code_checks(self, commit: str | None) -> None:
        """Check lines removed from the scenario's code since the previous ended night of
        its scenario (``weakening.code``), recorded as ``code_checks`` as a new night
        opens. It never fails or holds the night: git runs in a thread within its bound,
        an interrupt cancels the wait, and whatever goes wrong is recorded as
        ``not_available`` with its reason."""
        previous: dict[str, Any] | None = None

        async def compare() -> dict[str, Any]:
            nonlocal previous
            night = {"id": self.night_id, "scenario": self.plan.scenario, "started_at": self.started_at}
            previous = await asyncio.to_thread(self._previous_night, night)
            if previous is None and commit is not None:
                return unavailable(NO_PREVIOUS_NIGHT, None, commit)
            before = previous["night_started"].get("git_commit") if previous else None
            specs = [
                s for s in (self.plan.scenario, self.loaded.config.setup) if s and pytest_path(s) is None
            ]
            return await asyncio.to_thread(
                compare_project,
                self.loaded.base_dir,
                before if isinstance(before, str) else None,
                commit,
                imported_files(specs) + suite_files(self.plan.scenario, self.loaded.base_dir),
                names=(
                    f"the previous night {previous['id']}" if previous else "the previous night",
                    "this night",
                ),
                timeout=CODE_CHECKS_GIT_S,
            )

        work = asyncio.create_task(compare(), name="code-checks")
        with self.stopping.cancellable(work):
            try:
                async with asyncio.timeout(CODE_CHECKS_S):
                    result = await work
            except TimeoutError:
                result = unavailable(f"the comparison took longer than {CODE_CHECKS_S:g} s", None, commit)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                result = unavailable("the night was interrupted before the comparison ended", None, commit)
            except Exception as exc:  # our bug, or the ledger's: recorded, never the night's end
                detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
                result = unavailable(f"the comparison failed: {detail}", None, commit)
        if previous is not None:
            if result["before_commit"] is None:  # a branch above that did not get to compare
                result["before_commit"] = previous["night_started"].get("git_commit")
            result["previous_night_id"] = previous["id"]
        else:
            result["previous_night_id"] = None
        message = summary(result)
        await self.journal.event(EventKind.CODE_CHECKS, message, result)
        log.info("%s", message)

    def _previous_night(self, night: dict[str, Any]) -> dict[str, Any] | None:
        with self.ledger.read() as conn:
            return queries.previous_ended_night(conn, night)

    async def _close_night(self) -> NightOutcome:
        now = self.clock()
        if self.ledger.broken is not None:
            # Nothing more can be recorded; the night stays "running" in the ledger and
            # --resume carries on from what was committed.
            self.fatal = self.fatal or self.ledger.broken
            return NightOutcome(
                self.night_id, "aborted", str(self.ledger.broken), self.night_path, self.stopping.signal
            )
        remaining = self.plan.cycles_to_run - len(await asyncio.to_thread(self.journal.done_cycles))
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

    async def _start_metrics(self) -> None:
        if self.metrics is None:
            return
        from .metrics import NightView

        view = NightView(
            self.night_id,
            self.plan.cycles_to_run,
            self.gate,
            self.progress,
            tuple(self.components),
            self.agent,
            self.ledger,
            self.clock,
        )
        self.metrics.watch(view)
        await self.metrics.start(self.started_at, bool(self.resume))

    async def _stop_services(self) -> None:
        """Stop every service, each within its bound. The agent and the export are
        stopped once (they are dropped first), the export last, so it sends what the others
        recorded; undoing faults is idempotent and tried again on the way out."""
        reason = self.stopping.reason or "the night ended"
        agent, self.agent = self.agent, None
        export, self.export = self.export, None
        for service, bound in ((self.faults, FAULTS_STOP), (agent, AGENT_STOP), (export, EXPORT_STOP)):
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
        failed = await run_setup_hook(self.setup, night, self.plan.cycle_timeout, self.journal)
        if failed is None:
            return True
        self.setup_error = failed
        self.stopping.fail_start(f"setup failed: {failed}")
        return False
