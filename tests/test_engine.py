"""The orchestrator on a real SQLite ledger: verdicts, retries, timeouts, parallelism,
inputs, settings, artifacts, bounds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overnight.config import ProtectedSettings
from overnight.engine.context import CycleInput
from overnight.errors import ProtectedSettingError
from overnight.ledger import ops, queries

from .helpers import attempts_by_cycle, make_orchestrator, run_night

VERDICT_SCENARIO = """
import overnight

async def cycle(ctx):
    kind = ctx.cycle % 5
    async with ctx.step("work"):
        if kind == 1:
            return
        if kind == 2:
            ctx.fail("summary section is missing")
        if kind == 3:
            assert 1 + 1 == 3, "arithmetic is broken"
        if kind == 4:
            raise overnight.InfraError("llm", "quota_exceeded", "429 Too Many Requests")
        raise ValueError("bug in the scenario")
"""

# The totals of five cycles of VERDICT_SCENARIO, one of each kind.
VERDICT_TOTALS = {
    "passed": 1,
    "failed": 2,
    "infra_error": 1,
    "timeout": 0,
    "harness_error": 1,
    "failed_on_fallback": 0,
    "crashed": 0,
}


async def test_each_verdict_and_only_infra_is_retried(tmp_path: Path) -> None:
    outcome, report, ledger = await run_night(tmp_path, VERDICT_SCENARIO, cycles=5, retry_attempts=2)
    try:
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    verdicts = {c["cycle"]: c["verdict"] for c in report["cycles"]}
    assert verdicts == {1: "passed", 2: "failed", 3: "failed", 4: "infra_error", 5: "harness_error"}
    # A product failure is final: one attempt. Our own bug is final too.
    assert [len(atts[c]) for c in (1, 2, 3, 5)] == [1, 1, 1, 1]
    # Infra errors get 1 + 2 attempts, all kept.
    assert [a["verdict"] for a in atts[4]] == ["infra_error"] * 3
    assert atts[4][0]["fault_component"] == "llm" and atts[4][0]["fault_kind"] == "quota_exceeded"
    assert atts[2][0]["error_type"] == "ProductFailure"
    assert "summary section is missing" in atts[2][0]["error_message"]
    assert atts[3][0]["error_type"] == "AssertionError"
    assert atts[5][0]["error_type"] == "ValueError"
    assert "Traceback" in atts[5][0]["traceback"] and "bug in the scenario" in atts[5][0]["traceback"]
    assert all(a["step"] == "work" for c in (2, 3, 4, 5) for a in atts[c])
    assert report["totals"] == VERDICT_TOTALS
    assert report["exit_code"] == 1
    assert outcome.status == "completed"
    # The report's per-cycle attempts mirror the ledger.
    c4 = next(c for c in report["cycles"] if c["cycle"] == 4)
    assert [a["verdict"] for a in c4["attempts"]] == ["infra_error"] * 3


async def test_infra_error_then_pass_keeps_both_attempts(tmp_path: Path) -> None:
    code = """
    import overnight

    async def cycle(ctx):
        async with ctx.step("call"):
            if ctx.attempt == 1:
                raise overnight.InfraError("database", "connection_lost", "server closed the connection")
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=3, retry_attempts=2)
    try:
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 3
    for c in (1, 2, 3):
        assert [a["verdict"] for a in atts[c]] == ["infra_error", "passed"]
    assert report["retried_cycles"] == 3
    assert report["exit_code"] == 0


async def test_product_failure_is_never_retried_even_with_budget(tmp_path: Path) -> None:
    code = """
    async def cycle(ctx):
        ctx.fail("wrong answer")
    """
    _outcome, report, ledger = await run_night(tmp_path, code, cycles=2, retry_attempts=5)
    ledger.close()
    assert all(len(c["attempts"]) == 1 for c in report["cycles"])
    assert report["totals"]["failed"] == 2


async def test_cycle_timeout_is_enforced_by_cancellation(tmp_path: Path) -> None:
    code = """
    import asyncio

    async def cycle(ctx):
        async with ctx.step("prepare"):
            pass
        async with ctx.step("hang"):
            await asyncio.sleep(3600)
    """
    t0 = time.monotonic()
    # 1.5 s, not less: on a loaded CI machine the first step's ledger writes alone took
    # 0.3 s, and the timeout then landed in "prepare".
    outcome, report, ledger = await run_night(tmp_path, code, cycles=1, cycle_timeout=1.5, retry_attempts=1)
    elapsed = time.monotonic() - t0
    try:
        with ledger.read() as conn:
            steps = queries.steps_of(conn, outcome.night_id)
    finally:
        ledger.close()
    assert elapsed < 10
    cycle = report["cycles"][0]
    assert cycle["verdict"] == "timeout"
    assert [a["verdict"] for a in cycle["attempts"]] == ["timeout", "timeout"]
    assert cycle["attempts"][0]["step"] == "hang"
    assert "timeout of 1.5 s" in cycle["attempts"][0]["error_message"]
    hang = [s for s in steps if s["name"] == "hang"]
    assert [s["outcome"] for s in hang] == ["timeout", "timeout"]
    assert all(1.45 < a["duration_s"] < 6 for a in cycle["attempts"])


async def test_parallel_really_runs_n_cycles_at_once(tmp_path: Path) -> None:
    # Cycles 1-4 each wait until four cycles are inside at the same time. With fewer
    # than 4 running at once the wait times out and the cycle fails.
    code = """
    import asyncio

    active = 0
    peak = 0
    all_in = asyncio.Event()

    async def cycle(ctx):
        global active, peak
        active += 1
        peak = max(peak, active)
        if active >= 4:
            all_in.set()
        try:
            async with ctx.step("wait-for-peers"):
                await asyncio.wait_for(all_in.wait(), 10)
            ctx.artifact("peak.txt", str(peak))
        finally:
            active -= 1
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=8, parallel=4)
    ledger.close()
    assert report["totals"]["passed"] == 8, report["failures"]
    peaks = [int((outcome.night_path / "cycles" / f"{c:03d}" / "peak.txt").read_text()) for c in range(1, 9)]
    assert max(peaks) == 4  # never more than --parallel either


async def test_sync_scenario_runs_in_threads_in_parallel(tmp_path: Path) -> None:
    code = """
    import threading

    barrier = threading.Barrier(3, timeout=10)

    def cycle(ctx):
        with ctx.step("sync-step"):
            if ctx.cycle <= 3:
                barrier.wait()  # only passes if three threads are in at once
        ctx.artifact("thread.txt", threading.current_thread().name)
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=5, parallel=3)
    try:
        with ledger.read() as conn:
            steps = queries.steps_of(conn, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 5, report["failures"]
    assert {s["name"] for s in steps} == {"sync-step"} and all(s["outcome"] == "passed" for s in steps)


async def test_protected_settings_cannot_be_written(tmp_path: Path) -> None:
    code = """
    async def cycle(ctx):
        assert ctx.settings.min_length == 15000
        assert ctx.settings["thresholds"]["review"] == 7.0
        ctx.settings["min_length"] = 10
    """
    config = """
    [settings]
    min_length = 15000
    thresholds = { review = 7.0 }
    """
    outcome, report, ledger = await run_night(tmp_path, code, config, cycles=1)
    try:
        with ledger.read() as conn:
            blocked = queries.events_of(conn, outcome.night_id, kinds=("degradation_blocked",))
    finally:
        ledger.close()
    att = report["cycles"][0]["attempts"][0]
    assert att["verdict"] == "harness_error"
    assert att["error_type"] == "ProtectedSettingError"
    # The refused write is recorded with who tried what.
    assert len(blocked) == 1 and blocked[0]["cycle"] == 1
    assert "settings.min_length = 10" in blocked[0]["message"]
    fp = report["protected_fingerprint"]
    assert fp["start"] == fp["end"] and fp["match"] is True


def test_protected_settings_are_deeply_frozen() -> None:
    s = ProtectedSettings({"a": 1, "nested": {"b": [1, 2]}})
    for attempt in (
        lambda: s.__setitem__("a", 2),
        lambda: setattr(s, "a", 2),
        lambda: s.nested.__setitem__("b", []),
        lambda: s.__delitem__("a"),
    ):
        with pytest.raises(ProtectedSettingError):
            attempt()
    assert isinstance(s["nested"]["b"], tuple)
    assert s.fingerprint == ProtectedSettings({"nested": {"b": [1, 2]}, "a": 1}).fingerprint
    assert s.fingerprint != ProtectedSettings({"a": 2, "nested": {"b": [1, 2]}}).fingerprint


async def test_inputs_are_deterministic_across_attempts_and_nights(tmp_path: Path) -> None:
    code = """
    import overnight

    async def cycle(ctx):
        ctx.artifact("input.json", {"seed": ctx.input.seed, "draw": ctx.input.random().random()})
        if ctx.attempt == 1 and ctx.cycle == 2:
            raise overnight.InfraError("websearch", "timeout", "read timed out")
    """
    out1, _r1, led1 = await run_night(tmp_path / "a", code, cycles=3, seed=42)
    out2, _r2, led2 = await run_night(tmp_path / "b", code, cycles=3, seed=42)
    out3, _r3, led3 = await run_night(tmp_path / "c", code, cycles=3, seed=43)
    for led in (led1, led2, led3):
        led.close()

    def inputs(out, cycle, attempt=1):
        folder = out.night_path / "cycles" / f"{cycle:03d}"
        if attempt > 1:
            folder = folder / f"attempt-{attempt}"
        return json.loads((folder / "input.json").read_text())

    for c in (1, 2, 3):
        assert inputs(out1, c) == inputs(out2, c)
        assert inputs(out1, c)["seed"] == CycleInput.derive(42, c).seed
        assert inputs(out1, c) != inputs(out3, c)
    assert inputs(out1, 2, attempt=2) == inputs(out1, 2, attempt=1)
    assert len({inputs(out1, c)["seed"] for c in (1, 2, 3)}) == 3


async def test_artifacts_and_steps_are_recorded(tmp_path: Path) -> None:
    code = """
    async def cycle(ctx):
        async with ctx.step("interview"):
            ctx.artifact("anketa.json", {"name": "Library", "cycle": ctx.cycle})
        async with ctx.step("writer"):
            ctx.artifact("application.md", "# Application\\n")
            ctx.artifact("raw/blob.bin", b"\\x00\\x01")
        try:
            ctx.artifact("../escape.txt", "no")
        except ValueError:
            pass
        else:
            raise RuntimeError("artifact escaped its folder")
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=2)
    try:
        with ledger.read() as conn:
            arts = queries.artifacts_of(conn, outcome.night_id)
            steps = queries.steps_of(conn, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 2, report["failures"]
    folder = outcome.night_path / "cycles" / "001"
    assert json.loads((folder / "anketa.json").read_text()) == {"name": "Library", "cycle": 1}
    assert (folder / "raw" / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(a["name"] for a in arts if a["cycle"] == 1) == [
        "anketa.json",
        "application.md",
        "raw/blob.bin",
    ]
    assert [(s["name"], s["outcome"]) for s in steps if s["cycle"] == 1] == [
        ("interview", "passed"),
        ("writer", "passed"),
    ]
    assert all(s["duration_s"] is not None and s["ended_at"] >= s["started_at"] for s in steps)
    assert set(report["durations"]["steps"]) == {"interview", "writer"}
    assert (outcome.night_path / "orchestrator.log").read_text().count("attempt 1: passed") == 2


async def test_time_bound_stops_new_cycles(tmp_path: Path) -> None:
    code = """
    import asyncio

    async def cycle(ctx):
        await asyncio.sleep(0.1)
    """
    t0 = time.monotonic()
    outcome, report, ledger = await run_night(tmp_path, code, cycles=10_000, max_hours=1.0 / 3600)
    ledger.close()
    assert time.monotonic() - t0 < 15
    assert outcome.status == "stopped"
    assert "time bound" in outcome.reason
    assert 3 <= report["cycles_run"] < 100
    assert report["totals"]["passed"] == report["cycles_run"]
    assert report["cycles_not_run"] == 10_000 - report["cycles_run"]
    assert report["exit_code"] == 0
    assert "did not run" in report["verdict"]


async def test_ledger_backends_share_one_code_path(tmp_path: Path, ledger_url: str) -> None:
    _outcome, report, ledger = await run_night(
        tmp_path, VERDICT_SCENARIO, cycles=5, retry_attempts=1, ledger_url=ledger_url
    )
    try:
        with ledger.read() as conn:
            nights = queries.list_nights(conn)
    finally:
        ledger.close()
    assert report["totals"] == VERDICT_TOTALS
    assert len(nights) == 1 and nights[0]["done"] == 5 and nights[0]["passed"] == 1
    assert ledger.dialect in ("sqlite", "postgresql")


async def test_components_from_config_reach_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / "mycomp.py").write_text(
        "import overnight\n"
        "class Counter(overnight.Component):\n"
        "    async def connect(self):\n"
        "        self.connected = True\n"
        "        self.start = int(self.spec.options['start'])\n"
        "def make(spec):\n"
        "    return Counter(spec)\n"
        "class Broken(overnight.Component):\n"
        "    async def connect(self):\n"
        "        raise ConnectionRefusedError('connection refused')\n"
    )
    code = """
    async def cycle(ctx):
        c = ctx.components["counter"]
        assert c.connected and c.start == 7
        assert "broken" in ctx.components
    """
    config = """
    [components.counter]
    type = "mycomp:make"
    start = 7

    [components.broken]
    type = "mycomp:Broken"
    """
    outcome, report, ledger = await run_night(tmp_path, code, config, cycles=1)
    try:
        with ledger.read() as conn:
            events = queries.events_of(conn, outcome.night_id)
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 1, report["failures"]
    kinds = {(e["kind"], e["component"]) for e in events}
    assert ("component_connected", "counter") in kinds
    assert ("component_connect_failed", "broken") in kinds


async def test_secrets_never_reach_ledger_logs_or_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-live-9f8e7d6c5b4a"
    monkeypatch.setenv("OVN_TEST_API_KEY", secret)
    code = """
    import overnight

    async def cycle(ctx):
        key = ctx.components["api"].key
        ctx.artifact("request.txt", f"calling with {key} and postgresql://app:hunter2pw@db/x")
        raise overnight.InfraError("api", "auth_expired", f"401 for key {key} at postgresql://app:hunter2pw@db/x")
    """
    (tmp_path / "project").mkdir(parents=True)
    (tmp_path / "project" / "apicomp.py").write_text(
        "import overnight\n"
        "class Api(overnight.Component):\n"
        "    def __init__(self, spec):\n"
        "        super().__init__(spec)\n"
        "        self.key = spec.options['api_key']\n"
    )
    config = """
    [components.api]
    type = "apicomp:Api"
    api_key = "${OVN_TEST_API_KEY}"
    """
    _outcome, report, ledger = await run_night(tmp_path, code, config, cycles=1, retry_attempts=0)
    ledger.close()
    assert report["totals"]["infra_error"] == 1
    everything = b""
    for path in (tmp_path / "nights").rglob("*"):
        if path.is_file():
            everything += path.read_bytes()
    assert secret.encode() not in everything
    assert b"hunter2pw" not in everything
    assert b"${OVN_TEST_API_KEY}" in everything  # the plan keeps the reference, not the value


async def test_setup_hook_runs_once_before_cycles(tmp_path: Path) -> None:
    code = """
    calls = []

    async def setup(night):
        calls.append((night.night_id, night.settings["level"], sorted(night.components), night.resumed))

    async def cycle(ctx):
        assert len(calls) == 1 and calls[0][0] == ctx.night_id and calls[0][1] == 2
    """
    from .helpers import make_plan, write_project

    cfg, name = write_project(tmp_path / "project", code, "[settings]\nlevel = 2\n")
    lines = cfg.read_text().splitlines()
    # top-level keys must come before the first table in TOML
    cfg.write_text("\n".join([lines[0], f'setup = "{name}:setup"', *lines[1:]]) + "\n")
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.progress import LogProgress
    from overnight.ledger import Ledger
    from overnight.report import write_reports

    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        orch = Orchestrator(
            make_plan(cfg, tmp_path / "nights", cycles=3),
            ledger,
            progress=LogProgress(),
            handle_signals=False,
        )
        outcome = await orch.run()
        report, _ = write_reports(ledger, outcome.night_id)
        with ledger.read() as conn:
            kinds = [e["kind"] for e in queries.events_of(conn, outcome.night_id)]
    finally:
        ledger.close()
    assert report["totals"]["passed"] == 3, report["failures"]
    assert kinds.count("setup_done") == 1


async def test_failing_setup_aborts_the_night_before_any_cycle(tmp_path: Path) -> None:
    code = """
    import overnight

    async def setup(night):
        raise overnight.InfraError("vectors", "unavailable", "storage is locked")

    async def cycle(ctx):
        raise RuntimeError("must not run")
    """
    from .helpers import make_plan, write_project

    cfg, name = write_project(tmp_path / "project", code)
    lines = cfg.read_text().splitlines()
    cfg.write_text("\n".join([lines[0], f'setup = "{name}:setup"', *lines[1:]]) + "\n")
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.progress import LogProgress
    from overnight.ledger import Ledger
    from overnight.report import write_reports

    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    try:
        orch = Orchestrator(
            make_plan(cfg, tmp_path / "nights", cycles=3),
            ledger,
            progress=LogProgress(),
            handle_signals=False,
        )
        outcome = await orch.run()
        report, _ = write_reports(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert outcome.status == "aborted"
    assert "setup failed: InfraError: vectors: unavailable: storage is locked" in outcome.reason
    assert report["cycles_run"] == 0 and report["exit_code"] == 1
    assert report["verdict"].startswith("ABORTED: setup failed")


def _when_written(
    monkeypatch: pytest.MonkeyPatch, op: str, cycle: int, act: Callable[..., Any], *args: Any
) -> None:
    """While the ledger op ``op`` (``ops.attempt_begin``…) writes the row of ``cycle``,
    ``act(*args)`` is called in the event loop (queued from the writer thread, before the
    write itself)."""
    real = getattr(ops, op)
    loop = asyncio.get_running_loop()

    def hooked(conn: Any, night_id: str, at: int, *rest: Any) -> Any:
        if at == cycle:
            loop.call_soon_threadsafe(act, *args)
        return real(conn, night_id, at, *rest)

    monkeypatch.setattr(ops, op, hooked)


async def test_a_time_bound_during_a_cycles_start_leaves_no_cycle_started_with_nothing_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound lands while cycle 3's first attempt (and so the cycle) is being written
    # (queued from the writer thread, before the write's own wake-up): cycle 3 still runs its attempt,
    # and no later cycle is recorded as started with nothing run.
    from overnight.report import write_reports

    orch, ledger = make_orchestrator(tmp_path, "async def cycle(ctx):\n    pass\n", cycles=10)
    _when_written(
        monkeypatch, "attempt_begin", 3, orch.stopping.stop, "time bound reached (--max-hours / --until)"
    )
    outcome = await orch.run()
    report, _ = write_reports(ledger, outcome.night_id)
    ledger.close()
    assert report["status"] == "stopped"
    assert [(c["cycle"], c["status"], c["verdict"]) for c in report["cycles"]] == [
        (1, "done", "passed"),
        (2, "done", "passed"),
        (3, "done", "passed"),
    ]
    assert report["cycles_run"] == 3 and report["cycles_not_run"] == 7


async def test_an_interrupt_while_an_attempt_is_being_started_still_cancels_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM lands while cycle 2's attempt row is being written, before its task exists:
    # the attempt must still be cancelled at once, not run on until its cycle timeout.
    import signal

    from overnight.report import write_reports

    code = (
        "import asyncio\n\nasync def cycle(ctx):\n    if ctx.cycle == 2:\n        await asyncio.sleep(3600)\n"
    )
    orch, ledger = make_orchestrator(tmp_path, code, cycles=3, cycle_timeout=600)
    _when_written(monkeypatch, "attempt_begin", 2, orch.interrupt, "received SIGTERM", signal.SIGTERM)
    t0 = time.monotonic()
    async with asyncio.timeout(30):  # before the fix: 600 s, the cycle timeout
        outcome = await orch.run()
    elapsed = time.monotonic() - t0
    report, _ = write_reports(ledger, outcome.night_id)
    ledger.close()
    assert elapsed < 10
    cycles = {c["cycle"]: c for c in report["cycles"]}
    assert cycles[1]["verdict"] == "passed"
    assert cycles[2]["status"] != "done"
    assert [a["verdict"] for a in cycles[2]["attempts"]] == ["interrupted"]


def test_error_types_are_bare_for_ours_and_builtins_dotted_otherwise() -> None:
    import json as json_module

    from overnight.components import KnobRefused
    from overnight.engine.executors import CycleTimeout
    from overnight.verdicts import error_type_name

    assert error_type_name(KnobRefused("x")) == "KnobRefused"
    assert error_type_name(CycleTimeout("x")) == "CycleTimeout"
    assert error_type_name(KeyError("x")) == "KeyError"
    assert error_type_name(json_module.JSONDecodeError("x", "", 0)) == "json.decoder.JSONDecodeError"
