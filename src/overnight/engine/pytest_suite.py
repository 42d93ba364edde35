"""A pytest suite as the night's cycle: ``scenario = "pytest:tests/e2e"``.

Each attempt of a cycle is one pytest process (``sys.executable -m pytest -p
overnight_pytest PATH ARGS``), in a process group of its own, started afresh: nothing the
tests import or change outlives it. Its plugin (``pytest_child/overnight_pytest.py``)
streams each test's result as pytest's hooks report it; here each test becomes a step of
the attempt, named by its node id, with its outcome and duration, through ``ctx.step``
like any scenario's step.

A test's outcome (its step's):

- ``passed``, ``skipped``, ``xfailed``, ``xpassed``: as pytest says (a skip or an xfail is
  never counted as a pass);
- ``failed``: an ``AssertionError`` or ``pytest.fail`` in the test's call (or a strict
  xpass): the product is wrong, final;
- ``infra_error``: an error a declared component's classifier recognised, the component
  found by the host and port in the error or by ``[pytest.components]``; the repair agent
  is told at once, as a handle's failure tells it;
- ``timeout``: a ``TimeoutError`` tied to no component;
- ``harness_error``: anything else: an error in a fixture, a bug in the test, a file that
  could not be collected, the interpreter dying under the test.

The attempt's verdict, over the latest outcome of every test of the cycle (a test not run
again keeps its earlier one): ``failed`` if a test failed; else ``infra_error`` if one met
an infrastructure error; else ``timeout``; else ``harness_error`` if a test, or the pytest
session itself (a crash, an interrupted or misused pytest, nothing collected), had one;
else ``harness_error`` when no test passed (all skipped or xfailed: a cycle that tested
nothing is not a pass); else ``passed``.

Retries (the engine's: after the gate opens, on the same input): the next attempt runs
again only the tests whose latest outcome is ``infra_error`` or ``timeout``, or that were
cut short or never reached; every other test keeps its outcome and is deselected. Which
is which is read from the ledger, so a resumed night knows it as well. A product failure
is final, but the tests that met the infrastructure beside it still get their attempt
(``ProductFailure.rerun_others``): the cycle's verdict stays ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..components import Component, RemoteError
from ..config import PYTEST_SCENARIO, LoadedConfig
from ..errors import ConfigError, InfraError, ProductFailure
from ..ledger import ops, queries
from ..redaction import redact
from .context import CycleContext, Step
from .journal import EventKind

if TYPE_CHECKING:
    from ..ledger import Ledger

PLUGIN = "overnight_pytest"
PLUGIN_DIR = Path(__file__).resolve().parent / "pytest_child"
FDS_ENV = "OVERNIGHT_PYTEST_FDS"
# Plugins a cycle's pytest runs without: the cache would carry state from one cycle to
# the next (--lf, --sw); rerunfailures would retry a product failure into a pass inside
# the session (promise 1: only the night retries, and only infrastructure failures);
# xdist would run the tests in workers where the plugin does not see their exceptions.
DISABLED_PLUGINS = ("cacheprovider", "xdist", "rerunfailures")
OUTPUT_ARTIFACT = "pytest-output.txt"
OUTPUT_MAX = 1_000_000  # bytes of pytest's output kept (its tail) as the attempt's artifact
KILL_WAIT_S = 5.0  # for a killed pytest to be reaped
DRAIN_S = 5.0  # for its last results and output once it exited
COLLECTION = "<collection>"  # the step of a collection error pytest names no node for
# ``test_report`` events recorded per test and outcome in a session: a test that fails on
# every cycle of a long night has its first reports kept, not one per cycle.
REPORTS_PER_TEST = 10

PASSING = frozenset({"passed", "xpassed"})
# The outcomes a later attempt runs again: the dependency's, or none of the test's own.
RERUN = frozenset({"infra_error", "timeout", "cancelled", "interrupted", "running"})
_EXIT = {
    2: "was interrupted",
    3: "had an internal error",
    4: "was given arguments it does not take",
    5: "collected no test",
}


def pytest_path(scenario: str) -> str | None:
    """The PATH of ``pytest:PATH``; None for a ``module:function`` scenario."""
    if not scenario.startswith(PYTEST_SCENARIO):
        return None
    return scenario[len(PYTEST_SCENARIO) :].strip()


def suite_files(scenario: str, base_dir: Path) -> list[Path]:
    """The Python files of a suite (for the weakening watch): its test modules and
    conftests under PATH, or the one file it names."""
    path = pytest_path(scenario)
    if path is None:
        return []
    target = Path(path.split("::", 1)[0])
    target = target if target.is_absolute() else base_dir / target
    if target.is_file():
        return [target]
    return sorted(p for p in target.rglob("*.py") if "__pycache__" not in p.parts) if target.is_dir() else []


class SuiteError(RuntimeError):
    """A test of the attempt, or its pytest session, had a harness error."""


class SuiteTimeout(TimeoutError):
    """A test of the attempt timed out by itself (no component was tied to it)."""


@dataclass
class TestOutcome:
    """A test's latest outcome in its cycle: this attempt's, or kept from an earlier one."""

    __test__ = False  # (not a test class, for pytest collecting this package's tests)

    nodeid: str
    outcome: str
    attempt: int
    error_type: str | None = None
    message: str | None = None  # what the step records (the component and fault kind first)
    longrepr: str | None = None
    component: str | None = None
    kind: str | None = None
    duration: float | None = None  # pytest's, of all its phases
    error_message: str | None = None  # the exception's own message
    details: dict[str, Any] = field(default_factory=dict)  # the fault's, for a repair

    @property
    def headline(self) -> str:
        """The message's first line (for a line of the log, or of a list)."""
        return (self.message or self.outcome).strip().splitlines()[0]


def outcome_of(msg: Mapping[str, Any], attempt: int) -> TestOutcome:
    """A ``test`` message of the plugin as the step's outcome (redacted here, first)."""
    pytest_outcome = str(msg.get("outcome"))
    error: Mapping[str, Any] = msg.get("error") or {}
    infra: Mapping[str, Any] = error.get("infra") or {}
    message = redact(msg.get("message") or error.get("message") or None)
    location = msg.get("location")
    location = str(location) if location else None
    if pytest_outcome in ("passed", "skipped", "xfailed", "xpassed"):
        outcome = pytest_outcome
    elif infra.get("component") and infra.get("kind"):
        outcome = "infra_error"
    elif pytest_outcome == "failed" and (error.get("assertion") or not error):
        outcome = "failed"  # an assertion, pytest.fail, or a strict xpass (no exception)
    elif error.get("timeout"):
        outcome = "timeout"
    else:
        outcome = "harness_error"
    if message and location and outcome not in ("skipped", "xfailed"):
        message = f"{message} ({location})"
    if outcome == "infra_error":
        message = f"{infra['component']}: {infra['kind']}: {message or ''}".rstrip(": ")
    error_type = error.get("type") or (
        None if outcome in PASSING | {"skipped", "xfailed"} else pytest_outcome
    )
    return TestOutcome(
        nodeid=str(msg.get("nodeid")),
        outcome=outcome,
        attempt=attempt,
        error_type=str(error_type) if error_type else None,
        message=message,
        longrepr=redact(msg.get("longrepr") or None),
        component=str(infra["component"]) if infra.get("component") else None,
        kind=str(infra["kind"]) if infra.get("kind") else None,
        duration=float(msg["duration"]) if isinstance(msg.get("duration"), int | float) else None,
        error_message=redact(error.get("message") or None),
        details=dict(infra.get("details") or {}),
    )


class PytestSuite:
    """The scenario of a pytest-suite night: ``cycle(ctx)`` runs the suite's tests once
    in a fresh pytest process (see the module's docstring)."""

    def __init__(self, path: str, loaded: LoadedConfig, extra_args: Sequence[str], where: str) -> None:
        self.path = path
        self.base_dir = loaded.base_dir
        self.loaded = loaded
        self.args = [*loaded.config.pytest.args, *extra_args]
        self.mapping = dict(loaded.config.pytest.components)
        target = Path(path.split("::", 1)[0])
        if not (target if target.is_absolute() else self.base_dir / target).exists():
            raise ConfigError(
                f"{where}: scenario: pytest:{path}: no such file or folder (relative to {self.base_dir})"
            )
        self.components: Mapping[str, Component] = {}
        self.ledger: Ledger | None = None
        self.night_dir = Path(".")
        self.reported: dict[tuple[str, str], int] = {}  # (node id, outcome) -> test_report events

    def attach(self, components: Mapping[str, Component], ledger: Ledger, night_dir: Path) -> None:
        """The night's components (to signal the agent and describe them to the tests) and
        ledger (to read a cycle's earlier attempts)."""
        self.components = components
        self.ledger = ledger
        self.night_dir = night_dir

    def command(self) -> list[str]:
        disabled = [arg for name in DISABLED_PLUGINS for arg in ("-p", f"no:{name}")]
        return [sys.executable, "-m", "pytest", "-p", PLUGIN, *disabled, self.path, *self.args]

    async def cycle(self, ctx: CycleContext) -> None:
        """One attempt: run the tests that have no final outcome yet in this cycle, each a
        step; then raise what the attempt's verdict is (nothing for a pass)."""
        carried = await self._earlier(ctx) if ctx.attempt > 1 else {}
        run = _Attempt(self, ctx, carried)
        try:
            await run.execute()
        finally:
            run.save_output()
        run.conclude()

    async def _earlier(self, ctx: CycleContext) -> dict[str, TestOutcome]:
        """The tests of this cycle with a final outcome from an earlier attempt."""
        if self.ledger is None:
            return {}
        ledger = self.ledger

        def read() -> list[dict[str, Any]]:
            with ledger.read() as conn:
                return queries.cycle_steps(conn, ctx.night_id, ctx.cycle, ctx.attempt)

        latest: dict[str, TestOutcome] = {}
        for row in await asyncio.to_thread(read):
            latest[row["name"]] = TestOutcome(
                row["name"], row["outcome"], row["attempt"], row["error_type"], row["error_message"]
            )
        return {name: o for name, o in latest.items() if o.outcome not in RERUN}

    def session(self, ctx: CycleContext, deselect: Sequence[str]) -> dict[str, Any]:
        """What the plugin is told (over a pipe, never written down: it holds secrets)."""
        declared = self.loaded.config.components
        components: dict[str, Any] = {}
        for name, comp in self.components.items():
            try:
                facts = comp.connection()
            except Exception:  # a custom component's bug: no facts, not the cycle's end
                facts = {}
            cc = declared.get(name)
            components[name] = {
                "type": cc.type if cc else comp.type_name,
                "critical": comp.critical,
                "options": dict(cc.model_extra or {}) if cc else {},
                "facts": {"type": comp.type_name, "target": redact(comp.target) or "", **facts},
            }
        return {
            "night_id": ctx.night_id,
            "cycle": ctx.cycle,
            "attempt": ctx.attempt,
            "input_seed": str(ctx.input.seed),
            "components": components,
            "map": self.mapping,
            "deselect": list(deselect),
            "base_dir": str(self.base_dir),
            "night_dir": str(self.night_dir),
        }

    def environment(self, ctx: CycleContext, fds: str) -> dict[str, str]:
        env = dict(os.environ)
        # The plugin's folder first (it imports nothing of overnight to load), then the
        # overnight this night runs (the plugin's classifiers import it, when needed).
        ours = str(Path(__file__).resolve().parents[2])
        paths = [str(PLUGIN_DIR), ours, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env[FDS_ENV] = fds
        env["OVERNIGHT_NIGHT_ID"] = ctx.night_id
        env["OVERNIGHT_CYCLE"] = str(ctx.cycle)
        env["OVERNIGHT_ATTEMPT"] = str(ctx.attempt)
        env["OVERNIGHT_INPUT_SEED"] = str(ctx.input.seed)
        return env


class _Attempt:
    """One pytest process: started, its results turned into steps as they arrive, ended
    (killed with its whole process group if the attempt is cancelled), concluded."""

    def __init__(self, suite: PytestSuite, ctx: CycleContext, carried: dict[str, TestOutcome]) -> None:
        self.suite = suite
        self.ctx = ctx
        self.carried = carried
        self.results: dict[str, TestOutcome] = {}
        self.open: dict[str, Step] = {}
        self.last_finished: str | None = None
        self.exitstatus: int | None = None
        self.returncode: int | None = None
        self.collected: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.output = bytearray()
        self.cut = False  # the output's head was dropped to keep its tail
        self.spawn_error: str | None = None

    # -- running ------------------------------------------------------------------------

    async def execute(self) -> None:
        loop = asyncio.get_running_loop()
        session_r, session_w = os.pipe()
        results_r, results_w = os.pipe()
        ctx, suite = self.ctx, self.suite
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *suite.command(),
                cwd=suite.base_dir,
                env=suite.environment(ctx, f"{session_r},{results_w}"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(session_r, results_w),
                start_new_session=True,  # its own process group: killed whole
            )
        except OSError as exc:
            os.close(session_w)
            os.close(results_r)
            self.spawn_error = f"pytest could not be started: {type(exc).__name__}: {exc}"
            return
        finally:
            os.close(session_r)
            os.close(results_w)
        proc = self.proc
        session_pipe = os.fdopen(session_w, "wb", buffering=0)
        results_pipe = os.fdopen(results_r, "rb", buffering=0)
        tasks: list[asyncio.Task[Any]] = []
        writer: asyncio.WriteTransport | None = None
        reader_transport: asyncio.ReadTransport | None = None
        try:
            # Kept open while the attempt runs: its end of file tells the plugin the night
            # is gone (a kill -9), and the pytest process group then ends itself.
            writer, _ = await loop.connect_write_pipe(asyncio.Protocol, session_pipe)
            deselect = sorted(self.carried)
            writer.write(json.dumps(suite.session(ctx, deselect), default=str).encode() + b"\n")
            reader = asyncio.StreamReader(limit=1 << 24)
            reader_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), results_pipe
            )
            assert proc.stdout is not None
            output = asyncio.create_task(self._keep_output(proc.stdout))
            waiter = asyncio.create_task(proc.wait())
            consumer = asyncio.create_task(self._consume(reader))
            tasks = [output, waiter, consumer]
            await asyncio.wait({consumer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if consumer.done() and consumer.exception() is not None:
                consumer.result()  # our own failure (the ledger): not after the whole suite
            await waiter  # (the results ended: pytest is exiting; the cycle timeout bounds it)
            self.returncode = proc.returncode
            _kill_group(proc.pid)  # whatever the tests left running in its group
            await asyncio.wait({consumer}, timeout=DRAIN_S)
            if consumer.done():
                consumer.result()  # our own failure (the ledger) ends the night, not the cycle
            await asyncio.wait({output}, timeout=DRAIN_S)
            await self._close_open_steps()
        finally:
            if proc.returncode is None:
                # Cancelled (the cycle's timeout, the night stopping) or our own failure:
                # the whole process group goes, and is reaped within a bound.
                _kill_group(proc.pid)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT_S)
            for task in tasks:
                task.cancel()
            for step in list(self.open.values()):
                # Cut short: the step is settled by the attempt's verdict (timeout, interrupted).
                cancelled = asyncio.CancelledError()
                await step.__aexit__(type(cancelled), cancelled, None)
            self.open.clear()
            for transport in (writer, reader_transport):
                if transport is not None:
                    transport.close()
            if writer is None:
                session_pipe.close()
            if reader_transport is None:
                results_pipe.close()

    async def _keep_output(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.output += chunk
            if len(self.output) > OUTPUT_MAX:
                del self.output[: len(self.output) - OUTPUT_MAX]
                self.cut = True

    async def _consume(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # (not ours: nothing else writes to this pipe)
            if isinstance(msg, dict):
                await self._handle(msg)

    async def _handle(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "start":
            await self._start(str(msg.get("nodeid")))
        elif event == "test":
            await self._finish(outcome_of(msg, self.ctx.attempt))
        elif event == "collect_error":
            name = str(msg.get("nodeid") or COLLECTION)
            skipped = msg.get("outcome") == "skipped"
            await self._start(name)
            await self._finish(
                TestOutcome(
                    name,
                    "skipped" if skipped else "harness_error",
                    self.ctx.attempt,
                    None if skipped else "CollectError",
                    redact(msg.get("message") or None),
                    redact(msg.get("longrepr") or None),
                )
            )
        elif event == "collected":
            self.collected = int(msg.get("count") or 0)
        elif event == "session_finish":
            self.exitstatus = int(msg.get("exitstatus") or 0)

    async def _start(self, nodeid: str) -> None:
        if nodeid in self.open:
            return
        step = self.ctx.step(nodeid)
        await step.__aenter__()
        self.open[nodeid] = step

    async def _finish(self, result: TestOutcome) -> None:
        await self._start(result.nodeid)
        if result.outcome == "infra_error" and result.component and result.kind:
            comp = self.suite.components.get(result.component)
            if comp is not None:
                # As a handle's failure does: recorded, and the agent told at once (its
                # probe, and for a critical component the gate, do not wait).
                remote = RemoteError(result.error_type or "Error", result.error_message or "", result.details)
                comp.report_fault(result.kind, remote, result.nodeid)
        step = self.open.pop(result.nodeid)
        step.settle(result.outcome, result.error_type, result.message, result.duration)
        self._report(result)
        await step.__aexit__(None, None, None)
        self.results[result.nodeid] = result
        self.last_finished = result.nodeid

    def _report(self, result: TestOutcome) -> None:
        """A ``test_report`` event for a test that did not pass (queued: the writer is
        first in, first out, so it is committed before the attempt's end)."""
        if result.outcome in PASSING:
            return
        key = (result.nodeid, result.outcome)
        seen = self.suite.reported.get(key, 0)
        if seen >= REPORTS_PER_TEST:
            return
        self.suite.reported[key] = seen + 1
        ctx = self.ctx
        data = {
            "step": result.nodeid,
            "outcome": result.outcome,
            "error_type": result.error_type,
            "component": result.component,
            "fault_kind": result.kind,
            "longrepr": result.longrepr,
        }
        ctx._ledger.submit(
            ops.add_event,
            ctx.night_id,
            time.time(),
            EventKind.TEST_REPORT.value,
            result.message,
            data,
            ctx.cycle,
            ctx.attempt,
            result.component,
        )

    async def _close_open_steps(self) -> None:
        """A test still open when pytest has exited died with it (a crash, os._exit)."""
        for nodeid, step in list(self.open.items()):
            why = f"the pytest process {self._how_it_ended()} during this test"
            result = TestOutcome(nodeid, "harness_error", self.ctx.attempt, "PytestCrashed", why)
            step.settle(result.outcome, result.error_type, result.message)
            self._report(result)
            del self.open[nodeid]
            await step.__aexit__(None, None, None)
            self.results[nodeid] = result

    def _how_it_ended(self) -> str:
        code = self.returncode
        if code is not None and code < 0:
            try:
                return f"exited with signal {signal.Signals(-code).name}"
            except ValueError:
                return f"exited with signal {-code}"
        return f"exited with status {code}"

    def save_output(self) -> None:
        if self.proc is None:
            return
        text = self.output.decode("utf-8", "replace")
        head = f"$ {shlex.join(self.suite.command())}\n"
        if self.cut:
            head += (
                f"(the first part of the output was dropped: only its last {OUTPUT_MAX:,} bytes are kept)\n"
            )
        with contextlib.suppress(OSError):
            self.ctx.artifact(OUTPUT_ARTIFACT, f"{head}\n{text}")

    # -- the verdict --------------------------------------------------------------------

    def conclude(self) -> None:
        """Raise what the attempt's verdict is, over the latest outcome of every test."""
        latest = {**self.carried, **self.results}
        by: dict[str, list[TestOutcome]] = {}
        for result in latest.values():
            by.setdefault(result.outcome, []).append(result)
        problem = self._session_problem()
        if by.get("failed"):
            failure = ProductFailure(self._summary(by["failed"], "failed"))
            # Tests that met the infrastructure beside it are run again (they alone): the
            # failure stays, and so does the cycle's verdict.
            failure.rerun_others = bool(by.get("infra_error") or by.get("timeout"))
            raise self._tag(failure, by["failed"][0])
        if by.get("infra_error"):
            first = by["infra_error"][0]
            summary = self._summary(by["infra_error"], "with an infra error")
            raise self._tag(InfraError(first.component or "?", first.kind or "unavailable", summary), first)
        if by.get("timeout"):
            raise self._tag(SuiteTimeout(self._summary(by["timeout"], "timed out")), by["timeout"][0])
        if by.get("harness_error") or problem:
            harness = by.get("harness_error") or []
            parts = [problem] if problem else []
            if harness:
                parts.append(self._summary(harness, "with a harness error"))
            exc = SuiteError("; ".join(parts))
            raise self._tag(exc, harness[0]) if harness else exc
        if not any(result.outcome in PASSING for result in latest.values()):
            counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by.items())) or "none collected"
            raise SuiteError(f"no test passed in this cycle ({counts}): it tested nothing")

    def _tag(self, exc: BaseException, result: TestOutcome) -> BaseException:
        """The attempt's step is the test's; its traceback pytest's report of it."""
        self.ctx._error_steps[id(exc)] = result.nodeid
        if result.longrepr:
            exc.add_note(f"pytest's report of {result.nodeid}:\n{result.longrepr}")
        return exc

    def _summary(self, results: list[TestOutcome], what: str) -> str:
        first = results[0]
        earlier = f" (attempt {first.attempt})" if first.attempt != self.ctx.attempt else ""
        headline = first.headline
        if first.component and first.kind:  # (an InfraError says them itself)
            headline = headline.removeprefix(f"{first.component}: {first.kind}: ")
        text = f"{first.nodeid}{earlier}: {headline}"
        if len(results) > 1:
            more = ", ".join(r.nodeid for r in results[1:4]) + (", …" if len(results) > 4 else "")
            text += f" (and {len(results) - 1} more {what}: {more})"
        return text

    def _session_problem(self) -> str | None:
        """What went wrong with the pytest process itself, if anything."""
        if self.spawn_error:
            return self.spawn_error
        code = self.returncode
        where = f" after test {self.last_finished}" if self.last_finished else " before any test ended"
        crashed = [r.nodeid for r in self.results.values() if r.error_type == "PytestCrashed"]
        if crashed:
            where = f" during test {crashed[0]}"
        if code is not None and code < 0:
            return f"pytest {self._how_it_ended()}{where}"
        if self.exitstatus is None:
            return f"pytest {self._how_it_ended()} before its session ended (os._exit? a crash?){where}"
        status = self.exitstatus
        if status in (2, 3, 4):
            return f"pytest {_EXIT[status]} (exit status {status}){self._output_tail()}"
        if status == 5 and not self.carried:
            return f"pytest {_EXIT[5]} (exit status 5){self._output_tail()}"
        if status == 1 and all(r.outcome in PASSING | {"skipped", "xfailed"} for r in self.results.values()):
            return f"pytest reported a failure that no test was tied to (exit status 1){self._output_tail()}"
        return None

    def _output_tail(self, lines: int = 3) -> str:
        text = self.output.decode("utf-8", "replace")
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return f": {redact(' / '.join(tail))}" if tail else ""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
