"""A pytest suite as the night's cycle (``scenario = "pytest:PATH"``), with real pytest
processes: each test a step of its attempt, assertion failures final, infrastructure
errors signalled and their tests alone run again, crashes and signals contained, JUnit
with one testcase per node id.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psutil
import pytest

import overnight
from overnight.engine.orchestrator import NightOutcome, Orchestrator
from overnight.engine.progress import LogProgress
from overnight.ledger import Ledger, queries, schema
from overnight.report import REPORT_JUNIT, write_reports

from .conftest import run_cli
from .helpers import attempts_by_cycle, events_of, make_plan, table_rows
from .support.spawn import spawn_cli

# The suite's pytest processes need none of this machine's pytest plugins: without them
# each cycle starts about twice as fast (a night would load them, as the user's pytest does).
FAST_PYTEST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}

SUITE = """
import pytest


def test_passes(overnight_input):
    assert overnight_input.seed > 0


def test_input_dependent(overnight_input):
    # The product is wrong on the third cycle's input only.
    assert overnight_input.cycle != 3, f"wrong answer on input {overnight_input.seed}"


def test_flaky(overnight_input, overnight_attempt):
    # Cycle 3 is also the one whose input the product gets wrong.
    if overnight_input.cycle in (1, 3) and overnight_attempt == 1:
        raise TimeoutError("the answer took too long")


def test_skipped():
    pytest.skip("not on this machine")


@pytest.mark.xfail(reason="known bug 12", strict=True)
def test_known_bug():
    assert 1 == 2
"""


def write_suite(folder: Path, files: dict[str, str], config: str = "", path: str = "tests") -> Path:
    """A project whose scenario is a pytest suite: ``tests/<name>`` for each file, and its
    overnight.toml. Returns the config's path."""
    (folder / "tests").mkdir(parents=True, exist_ok=True)
    for name, code in files.items():
        (folder / "tests" / name).write_text(textwrap.dedent(code))
    cfg = folder / "overnight.toml"
    cfg.write_text(f'scenario = "pytest:{path}"\n' + textwrap.dedent(config))
    return cfg


async def suite_night(
    tmp_path: Path, files: dict[str, str], config: str = "", **plan_kw: Any
) -> tuple[NightOutcome, dict[str, Any], Ledger]:
    """A night of a suite in-process; returns (outcome, report, open ledger)."""
    cfg = write_suite(tmp_path / "project", files, config)
    plan = make_plan(cfg, tmp_path / "nights", **plan_kw)
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    orch = Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False)
    outcome = await orch.run()
    report, _ = write_reports(ledger, outcome.night_id)
    return outcome, report, ledger


def steps_by_attempt(ledger: Ledger, night_id: str) -> dict[tuple[int, int], list[dict[str, Any]]]:
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    with ledger.read() as conn:
        for st in queries.steps_of(conn, night_id):
            out.setdefault((st["cycle"], st["attempt"]), []).append(st)
    return out


T = "tests/test_suite.py::"


async def test_a_night_of_a_small_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAST_PYTEST.items():
        monkeypatch.setenv(k, v)
    outcome, report, ledger = await suite_night(
        tmp_path, {"test_suite.py": SUITE}, cycles=3, retry_attempts=2
    )
    try:
        steps = steps_by_attempt(ledger, outcome.night_id)
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    # Each test is a step named by its node id, with its outcome and duration; a skip and
    # an xfail are recorded as such, never as passes.
    first = {s["name"]: s["outcome"] for s in steps[(1, 1)]}
    assert first == {
        T + "test_passes": "passed",
        T + "test_input_dependent": "passed",
        T + "test_flaky": "timeout",
        T + "test_skipped": "skipped",
        T + "test_known_bug": "xfailed",
    }
    assert all(s["duration_s"] is not None and s["duration_s"] >= 0 for s in steps[(1, 1)])
    assert next(s for s in steps[(1, 1)] if s["name"] == T + "test_skipped")["error_message"] == (
        "Skipped: not on this machine"
    )
    # The timeout earned another attempt, on the same input, of that test alone: it
    # passed, so the cycle passed, and the input is flaky (timeout, then passed).
    assert [a["verdict"] for a in atts[1]] == ["timeout", "passed"]
    assert atts[1][0]["step"] == T + "test_flaky"
    assert [(s["name"], s["outcome"]) for s in steps[(1, 2)]] == [(T + "test_flaky", "passed")]
    assert [f["cycle"] for f in report["flaky"]] == [1]  # (cycle 3: failed, then failed)
    node = next(n for n in report["tests"]["tests"] if n["nodeid"] == T + "test_flaky")
    assert node["outcomes"] == {"passed": 3}
    assert [(r["cycle"], r["final"]) for r in node["reruns"]] == [(1, "passed"), (3, "passed")]
    # The assertion that failed on cycle 3's input is a product failure: final, never run
    # again. The test that timed out beside it runs again, alone, on the same input; the
    # cycle stays failed.
    assert [a["verdict"] for a in atts[3]] == ["failed", "failed"]
    assert [(s["name"], s["outcome"]) for s in steps[(3, 2)]] == [(T + "test_flaky", "passed")]
    assert atts[3][0]["step"] == atts[3][1]["step"] == T + "test_input_dependent"
    assert "wrong answer on input" in atts[3][0]["error_message"]
    # Its traceback ends with pytest's own report of the test.
    assert f"pytest's report of {T}test_input_dependent" in atts[3][0]["traceback"]
    assert "tests/test_suite.py:11: AssertionError" in atts[3][0]["traceback"]
    assert {c["cycle"]: c["verdict"] for c in report["cycles"]} == {1: "passed", 2: "passed", 3: "failed"}
    assert report["verdict"] == "FAILED: 1 product failure in 3 cycles"

    # JUnit: one testcase per node id, named as pytest's junitxml names it; the flaky
    # test's earlier attempt nested as a flakyError; the input-dependent failure a failure.
    root = ET.parse(outcome.night_path / REPORT_JUNIT).getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    ours = {k: v for k, v in cases.items() if k[0] == "tests.test_suite"}
    assert set(ours) == {
        ("tests.test_suite", n)
        for n in ("test_passes", "test_input_dependent", "test_flaky", "test_skipped", "test_known_bug")
    }
    flaky = ours[("tests.test_suite", "test_flaky")]
    assert [child.tag for child in flaky if child.tag != "properties"] == ["flakyError", "flakyError"]
    assert [e.get("message", "")[:17] for e in flaky.iter("flakyError")] == [
        "cycle 1 attempt 1",
        "cycle 3 attempt 1",
    ]
    failing = ours[("tests.test_suite", "test_input_dependent")]
    assert failing.find("failure") is not None
    assert "cycle 3" in (failing.find("failure").get("message") or "")  # type: ignore[union-attr]
    assert ours[("tests.test_suite", "test_skipped")].find("skipped") is not None
    assert ours[("tests.test_suite", "test_known_bug")].find("skipped") is not None
    assert [c for c in ours.values() if c.find("failure") is not None] == [failing]


INFRA_SUITE = """
import httpx


def test_search(overnight_components, overnight_attempt):
    search = overnight_components["search"]
    if overnight_attempt == 1:
        # What its own client raises when the API's port refuses the connection.
        request = httpx.Request("GET", search.endpoint)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
    response = httpx.get(search.endpoint, params={"q": "rivers"}, headers={search.api_key_header: search.api_key})
    response.raise_for_status()
    assert response.json()["results"]


def test_arithmetic():
    assert 2 + 2 == 4
"""

# A probe at the start, then none for a minute: only the test's signal can make another.
SLOW_PROBES = """
[agent]
probe_period = 60
probe_timeout = 3
cooldown = 0.05
"""


async def test_an_infra_error_signals_the_agent_and_is_run_again_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAST_PYTEST.items():
        monkeypatch.setenv(k, v)
    config = '[components.search]\ntype = "websearch"\nsandbox = true\n' + SLOW_PROBES
    outcome, report, ledger = await suite_night(
        tmp_path, {"test_suite.py": INFRA_SUITE}, config, cycles=1, retry_attempts=2
    )
    try:
        steps = steps_by_attempt(ledger, outcome.night_id)
        atts = attempts_by_cycle(ledger, outcome.night_id)
        faults_seen = events_of(ledger, outcome.night_id, "component_fault")
        probes = table_rows(ledger, schema.probes, outcome.night_id)
        incidents = table_rows(ledger, schema.incidents, outcome.night_id)
    finally:
        ledger.close()
    first = {s["name"]: (s["outcome"], s["error_type"]) for s in steps[(1, 1)]}
    assert first == {
        T + "test_search": ("infra_error", "httpx.ConnectError"),
        T + "test_arithmetic": ("passed", None),
    }
    att = atts[1][0]
    assert (att["verdict"], att["fault_component"], att["fault_kind"]) == (
        "infra_error",
        "search",
        "unavailable",
    )
    assert att["step"] == T + "test_search"
    # The agent was told at once, as by a handle's failure: the fault recorded in the
    # test's step, a probe the signal triggered, and the incident it opened (transient:
    # the API answered that probe).
    assert [(e["component"], json_of(e)["step"], json_of(e)["fault_kind"]) for e in faults_seen] == [
        ("search", T + "test_search", "unavailable")
    ]
    assert [p["trigger"] for p in probes if p["component"] == "search"] == ["periodic", "signal"]
    assert [(i["component"], i["fault_kind"], i["state"]) for i in incidents] == [
        ("search", "unavailable", "transient")
    ]
    # Once the gate opened, the next attempt ran that test alone, on the same input.
    assert [(s["name"], s["outcome"]) for s in steps[(1, 2)]] == [(T + "test_search", "passed")]
    assert [a["verdict"] for a in atts[1]] == ["infra_error", "passed"]
    assert report["verdict"] == "PASSED: the only cycle passed"


def json_of(event: dict[str, Any]) -> dict[str, Any]:
    import json

    data = json.loads(event["data"])
    assert isinstance(data, dict)
    return data


CRASHING_SUITE = """
import os
import signal


def test_first():
    pass


def test_crashes(overnight_input):
    if overnight_input.cycle == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    if overnight_input.cycle == 2:
        os._exit(3)


def test_last():
    pass
"""


async def test_a_crash_ends_its_attempt_clearly_and_the_night_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAST_PYTEST.items():
        monkeypatch.setenv(k, v)
    outcome, report, ledger = await suite_night(
        tmp_path, {"test_suite.py": CRASHING_SUITE}, cycles=3, retry_attempts=2
    )
    try:
        steps = steps_by_attempt(ledger, outcome.night_id)
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    # A segfault and an os._exit: each ends its attempt as a harness error (final), saying
    # what happened and during which test; that test's step says it too.
    assert [[a["verdict"] for a in atts[c]] for c in (1, 2, 3)] == [
        ["harness_error"],
        ["harness_error"],
        ["passed"],
    ]
    assert (
        "pytest exited with signal SIGSEGV during test " + T + "test_crashes" in atts[1][0]["error_message"]
    )
    assert "pytest exited with status 3 before its session ended" in atts[2][0]["error_message"]
    for cycle in (1, 2):
        assert atts[cycle][0]["step"] == T + "test_crashes"
        crashed = {s["name"]: s["outcome"] for s in steps[(cycle, 1)]}
        assert crashed == {T + "test_first": "passed", T + "test_crashes": "harness_error"}
    assert outcome.status == "completed"
    assert (outcome.night_path / "cycles" / "001" / "pytest-output.txt").is_file()
    assert report["totals"]["harness_error"] == 2 and report["totals"]["passed"] == 1


SLEEPING_SUITE = """
import os
import socket
import subprocess


def test_first():
    pass


def test_waits(overnight_attempt):
    if overnight_attempt > 1:
        return
    # A child of its own, in the same process group: it must go too.
    child = subprocess.Popen(["sleep", "300"])
    with socket.create_connection(("127.0.0.1", int(os.environ["HARNESS_PORT"]))) as conn:
        conn.sendall(f"{os.getpid()} {child.pid}".encode())
    child.wait()
"""


def test_sigterm_to_a_night_mid_cycle_leaves_no_pytest_behind(tmp_path: Path) -> None:
    proj = tmp_path / "project"
    write_suite(proj, {"test_suite.py": SLEEPING_SUITE})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        # (the overnight under test, whatever PYTHONPATH says relative to another folder)
        here = str(Path(overnight.__file__).resolve().parents[1])
        path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
        env = {
            **os.environ,
            **FAST_PYTEST,
            "HARNESS_PORT": str(listener.getsockname()[1]),
            "PYTHONPATH": path,
        }
        night = spawn_cli(["run", "--cycles", "1"], cwd=proj, env=env)
        try:
            conn, _ = listener.accept()  # the test is running, and said who it is
            with conn:
                conn.settimeout(30)
                pids = [int(p) for p in conn.recv(100).decode().split()]
            night.send_signal(signal.SIGTERM)
            _out, err = night.communicate(timeout=60)
        finally:
            if night.poll() is None:
                night.kill()
                night.wait()
    assert night.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "resume with: overnight run --resume" in err
    for pid in pids:
        assert not _alive(pid), f"process {pid} outlived its night"
    ledger = proj / "night_tests" / "overnight.db"
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT cycle, attempt, verdict FROM attempts").fetchall() == [
            (1, 1, "interrupted")
        ]
    # Resumed, the cycle runs again on the same input: only the test that had no outcome
    # of its own (the first one passed before the signal, and keeps its pass).
    res = run_cli(["run", "--resume"], cwd=proj, env=FAST_PYTEST)
    assert res.returncode == 0, res.stderr[-2000:]
    with sqlite3.connect(ledger) as db:
        steps = db.execute("SELECT attempt, name, outcome FROM steps ORDER BY attempt, seq").fetchall()
    assert steps == [
        (1, T + "test_first", "passed"),
        (1, T + "test_waits", "interrupted"),
        (2, T + "test_waits", "passed"),
    ]


TIMEOUT_SUITE = """
import os
import time


def test_a():
    pass


def test_slow(overnight_attempt):
    if overnight_attempt == 1:
        with open(os.environ["PID_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)


def test_z():
    pass
"""


async def test_a_cycle_timeout_kills_pytest_and_runs_the_rest_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAST_PYTEST.items():
        monkeypatch.setenv(k, v)
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    outcome, _report, ledger = await suite_night(
        tmp_path, {"test_suite.py": TIMEOUT_SUITE}, cycles=1, retry_attempts=1, cycle_timeout=6
    )
    try:
        steps = steps_by_attempt(ledger, outcome.night_id)
        atts = attempts_by_cycle(ledger, outcome.night_id)
    finally:
        ledger.close()
    assert not _alive(int(pid_file.read_text())), "the timed-out pytest outlived its attempt"
    assert [a["verdict"] for a in atts[1]] == ["timeout", "passed"]
    assert atts[1][0]["step"] == T + "test_slow"
    # The test cut short is settled as the attempt's timeout; the next attempt runs it
    # and the one never reached, not the one that passed.
    assert [(s["name"], s["outcome"]) for s in steps[(1, 1)]] == [
        (T + "test_a", "passed"),
        (T + "test_slow", "timeout"),
    ]
    assert [(s["name"], s["outcome"]) for s in steps[(1, 2)]] == [
        (T + "test_slow", "passed"),
        (T + "test_z", "passed"),
    ]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("scenario", "extra", "expect"),
    [
        ("pytest:", "", "scenario: expected 'pytest:PATH'"),
        ("pytest:nowhere", "", "scenario: pytest:nowhere: no such file or folder"),
        ("pytest:tests", '[pytest]\nargs = "-k smoke"\n', "pytest.args: input should be a valid list"),
        ("pytest:tests", '[pytest.components]\npsycopg = "db"\n', "'db' is not a declared component"),
    ],
)
def test_bad_suite_config_is_one_line_exit_2(tmp_path: Path, scenario: str, extra: str, expect: str) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "overnight.toml").write_text(f'scenario = "{scenario}"\n{extra}')
    res = run_cli(["run", "--cycles", "1"], cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert expect in lines[0], lines[0]


def test_the_command_line_runs_a_suite_with_pytest_arguments(tmp_path: Path) -> None:
    write_suite(tmp_path, {"test_suite.py": SUITE}, path="elsewhere")
    (tmp_path / "overnight.toml").unlink()  # no config needed
    res = run_cli(
        ["run", "--pytest", "tests", "--cycles", "1", "--", "-k", "passes or skipped"],
        cwd=tmp_path,
        env=FAST_PYTEST,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("PASSED: the only cycle passed")
    with sqlite3.connect(tmp_path / "night_tests" / "overnight.db") as conn:
        names = conn.execute("SELECT name, outcome FROM steps ORDER BY seq").fetchall()
        plan = conn.execute("SELECT plan, scenario FROM nights").fetchone()
    assert names == [(T + "test_passes", "passed"), (T + "test_skipped", "skipped")]
    assert '"pytest_args": ["-k", "passes or skipped"]' in plan[0]
    assert plan[1] == f"pytest:{tmp_path / 'tests'}"


def test_the_plugin_input_is_the_engine_input() -> None:
    # The plugin cannot import overnight (it must load fast): its CycleInput is a copy,
    # and must give the same values.
    from overnight.engine.context import CycleInput
    from overnight.engine.pytest_child.overnight_pytest import CycleInput as PluginInput

    ours = CycleInput.derive(1234, 7)
    theirs = PluginInput(cycle=7, seed=ours.seed)
    assert theirs.random().random() == ours.random().random()
    assert theirs.choice(list("abcdefg")) == ours.choice(list("abcdefg"))
    assert [f.name for f in dataclasses.fields(theirs)] == [f.name for f in dataclasses.fields(ours)]


def test_loading_the_plugin_imports_nothing_of_overnight() -> None:
    from overnight.engine.pytest_suite import PLUGIN, PLUGIN_DIR

    code = f"import sys; sys.path.insert(0, {str(PLUGIN_DIR)!r}); import {PLUGIN}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'overnight'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
