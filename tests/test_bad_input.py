"""Bad input, as a user's worst evening would give it: one line naming what is wrong and
where, exit 2, no traceback, and no night left ``running``.

The table replays the cases of the hardening issue through the real CLI; the property
tests throw generated values at every door that takes input (the config's tables, the
command line's flags, fault specs) and require the same answer every time.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.config import MAX_CYCLES, MAX_HOURS, MAX_SEED, validate_config
from overnight.engine.plan import run_settings
from overnight.errors import ConfigError, UsageError
from overnight.faults.plan import parse_inject

from .conftest import make_project, run_cli

NOOP = "async def cycle(ctx):\n    pass\n"


def one_line_exit_2(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("overnight: error: "), lines[0]
    return lines[0]


def no_running_night(ledger: Path) -> None:
    """Nothing the refused command did may look like a night in progress."""
    if not ledger.exists():
        return
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        try:
            running = conn.execute("SELECT id FROM nights WHERE status = 'running'").fetchall()
        except sqlite3.DatabaseError:
            return  # not a ledger (the case under test), so no night in it either
    assert running == [], running


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--max-hours", "inf"], "--max-hours: input should be a finite number (got inf)"),
        (["--max-hours", "nan"], "--max-hours: input should be a finite number (got nan)"),
        (["--max-hours", "1e300"], f"--max-hours: input should be less than or equal to {MAX_HOURS}"),
        (["--max-hours", "-1"], "--max-hours: input should be greater than 0"),
        (["--seed", str(2**63)], f"--seed: input should be less than or equal to {MAX_SEED}"),
        (["--cycles", "0"], "--cycles: input should be greater than or equal to 1"),
        (["--cycles", str(10**12)], f"--cycles: input should be less than or equal to {MAX_CYCLES}"),
        (["--cycle-timeout", "nan"], "--cycle-timeout: input should be a finite number"),
        (["--parallel", "0"], "--parallel: input should be greater than or equal to 1"),
        (["--inject", "llm:server_error@cycle=1,status=200"], "status: server_error needs a 5xx status"),
        (["--inject", "db:connection_lost@after=9999999s"], "after: expected at most"),
        (["--night-dir", "/proc/overnight-nights"], "--night-dir: cannot write in /proc/overnight-nights"),
        (["--night-dir", "s.py"], "is not a folder"),
        (["--ledger", "s.py"], "the ledger at"),
    ],
)
def test_bad_flags(tmp_path: Path, args: list[str], expect: str) -> None:
    proj = make_project(tmp_path / "p", NOOP, "[components]\n", name="s")
    line = one_line_exit_2(run_cli(["run", "--cycles", "1", *args], cwd=proj))
    assert expect in line, line
    no_running_night(proj / "night_tests" / "overnight.db")


@pytest.mark.parametrize(
    ("toml", "code", "expect"),
    [
        ("[run]\ncycles = true\n", NOOP, "run.cycles: input should be a valid integer (got True)"),
        ("[run]\ncycles = 1000000000000\n", NOOP, "run.cycles: input should be less than or equal to"),
        ("[run]\nmax_hours = nan\n", NOOP, "run.max_hours: input should be a finite number"),
        ("[run]\nparallel = 2.5\n", NOOP, "run.parallel: input should be a valid integer"),
        ('[components.db]\ntype = "database"\ncritical = "yes"\n', NOOP, "components.db.critical"),
        ("[agent]\nprobe_period = inf\n", NOOP, "agent.probe_period: input should be a finite number"),
        (
            '[components.db]\ntype = "database"\nsuccess_threshold = -1\n',
            NOOP,
            "components.db.success_threshold: input should be greater than or equal to 1 (got -1)",
        ),
        ('[components.db]\ntype = "database"\nprobe_period = "5"\n', NOOP, "components.db.probe_period"),
        ('[components.db]\ntype = "database"\nurl = 5\n', NOOP, "components.db.url"),
        ('[components.db]\ntype = "database"\npool_size = -3\n', NOOP, "components.db.pool_size"),
        ('[components.llm]\ntype = "llm"\nsandbox = true\nmodels = []\n', NOOP, "components.llm.models"),
        ("", "import sys\nsys.exit(0)\n", "called sys.exit(0) while being imported"),
        ("", "raise RuntimeError('boom at import')\n", "cannot import module 's': RuntimeError: boom"),
    ],
)
def test_bad_config(tmp_path: Path, toml: str, code: str, expect: str) -> None:
    proj = make_project(tmp_path / "p", code, toml, name="s")
    line = one_line_exit_2(run_cli(["run", "--cycles", "1"], cwd=proj))
    assert "overnight.toml" in line and expect in line, line
    no_running_night(proj / "night_tests" / "overnight.db")


def test_a_raising_component_factory_is_one_redacted_line(tmp_path: Path) -> None:
    code = NOOP + (
        "\nimport overnight\n\ndef factory(spec):\n"
        "    raise RuntimeError(f\"cannot reach {spec.options['url']} with {spec.options['api_key']}\")\n"
    )
    config = '[components.inv]\ntype = "s:factory"\nurl = "http://u:${INV_PASSWORD}@127.0.0.1:9/"\napi_key = "${INV_API_KEY}"\n'
    proj = make_project(tmp_path / "p", code, config, name="s")
    env = {"INV_PASSWORD": "canary-pw-5e1f", "INV_API_KEY": "canary-key-77ab"}
    res = run_cli(["run", "--cycles", "1"], cwd=proj, env=env)
    line = one_line_exit_2(res)
    assert "components.inv: the component could not be built: RuntimeError" in line, line
    for secret in env.values():
        assert secret not in res.stdout + res.stderr


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one finished night (run once for every damage below)."""
    proj = make_project(tmp_path_factory.mktemp("finished") / "p", NOOP, name="s")
    assert run_cli(["run", "--cycles", "2"], cwd=proj).returncode == 0
    return proj


@pytest.fixture
def broken_ledger(finished_project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished project, whose ledger the test may damage."""
    proj = tmp_path / "p"
    shutil.copytree(finished_project, proj)
    ledger = proj / "night_tests" / "overnight.db"
    for name in ("overnight.db-wal", "overnight.db-shm"):  # everything is in the main file
        ledger.with_name(name).unlink(missing_ok=True)
    return proj, ledger


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize(
    "command", [["nights"], ["report"], ["run", "--resume"], ["faults"]], ids=lambda c: " ".join(c)
)
def test_a_damaged_ledger_is_not_readable(
    broken_ledger: tuple[Path, Path], damage: str, command: list[str]
) -> None:
    proj, ledger = broken_ledger
    data = ledger.read_bytes()
    if damage == "truncated":
        ledger.write_bytes(data[: len(data) // 3])
    else:
        ledger.write_bytes(b"\x00garbage" * 512 + data[4096:])
    line = one_line_exit_2(run_cli(command, cwd=proj))
    assert f"the ledger at {ledger} is not readable: " in line, line


def test_report_out_to_an_unwritable_place(broken_ledger: tuple[Path, Path]) -> None:
    proj, _ledger = broken_ledger
    line = one_line_exit_2(run_cli(["report", "--out", "/proc/overnight-report"], cwd=proj))
    assert "--out: cannot write in /proc/overnight-report" in line, line


# -- generated input ----------------------------------------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
RUN_KEYS = [
    "cycles",
    "parallel",
    "max_hours",
    "until",
    "retry_attempts",
    "cycle_timeout",
    "retry_backoff",
    "seed",
]
AGENT_KEYS = [
    "probe_period",
    "probe_timeout",
    "failure_threshold",
    "success_threshold",
    "cooldown",
    "escalation",
]


def _finite_and_bounded(run: object) -> None:
    for name in ("max_hours", "cycle_timeout", "retry_backoff"):
        value = getattr(run, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert 1 <= run.cycles <= MAX_CYCLES and 1 <= run.parallel <= 512  # type: ignore[attr-defined]
    assert run.seed is None or 0 <= run.seed <= MAX_SEED  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.sampled_from(["run", "agent"]), key=st.sampled_from(RUN_KEYS + AGENT_KEYS), value=ANY_VALUE)
def test_any_config_value_is_accepted_in_bounds_or_refused_in_one_line(
    table: str, key: str, value: object
) -> None:
    raw = {"scenario": "s:cycle", table: {key: value}} if value is not None else {"scenario": "s:cycle"}
    try:
        loaded = validate_config(raw, None)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("<built-in>: ")
        return
    _finite_and_bounded(loaded.config.run)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(RUN_KEYS), value=ANY_VALUE)
def test_any_flag_value_is_accepted_in_bounds_or_refused_naming_the_flag(key: str, value: object) -> None:
    try:
        run = run_settings(None, {key: value})
    except UsageError as exc:
        assert str(exc).startswith(f"--{key.replace('_', '-')}: ") and "\n" not in str(exc)
        return
    _finite_and_bounded(run)


INJECT = st.builds(
    lambda target, kind, parts: f"{target}:{kind}@" + ",".join(parts),
    st.sampled_from(["db", "llm", "search", "x"]),
    st.sampled_from(["server_error", "rate_limited", "timeout", "connection_lost", "nope", "auth_expired"]),
    st.lists(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(
                [
                    "cycle",
                    "after",
                    "every",
                    "duration",
                    "status",
                    "count",
                    "retry_after",
                    "until",
                    "probability",
                    "latency",
                    "zz",
                ]
            ),
            st.one_of(
                st.integers(-5, 10**20).map(str),
                st.sampled_from(["nan", "inf", "1e300", "30s", "repaired", "0.5", "", "2h"]),
            ),
        ),
        max_size=4,
    ),
)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(INJECT, st.text(max_size=40)))
def test_any_inject_spec_is_parsed_or_refused_in_one_line(text: str) -> None:
    try:
        spec = parse_inject(text, "--inject[1]")
    except ConfigError as exc:
        assert str(exc).startswith("--inject[1]") and "\n" not in str(exc)
        return
    for value in (spec.after_s, spec.every_s, spec.duration_s, *spec.params.values()):
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0


FLAG_VALUES = st.sampled_from(
    ["nan", "inf", "-inf", "-1", "0", "1e300", str(2**64), "2.5", "x", "", "true", "1"]
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flag=st.sampled_from(
        ["--cycles", "--parallel", "--max-hours", "--cycle-timeout", "--seed", "--retry-attempts", "--until"]
    ),
    value=FLAG_VALUES,
)
def test_any_flag_through_the_real_cli(tmp_path: Path, flag: str, value: str) -> None:
    """The same, end to end: the process answers a bad flag with one line and exit 2, or
    runs the night (then with a clean verdict)."""
    proj = tmp_path / f"p{abs(hash((flag, value)))}"
    make_project(proj, NOOP, "[agent]\nenabled = false\n", name="s")
    res = run_cli(["run", "--cycles", "1", "--max-hours", "1", flag, value], cwd=proj, timeout=60)
    if res.returncode == 2:
        one_line_exit_2(res)
    else:
        assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
    ledger = proj / "night_tests" / "overnight.db"
    no_running_night(ledger)
    if res.returncode == 0:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT status FROM nights").fetchall() == [("completed",)]


def test_the_largest_plan_starts_at_once_in_constant_memory(tmp_path: Path) -> None:
    """2,147,483,647 planned cycles (the bound) and a bound of about a second: the night
    starts at once, runs until its time bound, and never holds the plan in memory (a
    queue of every cycle number took 4 GB for 10^8 cycles)."""
    import psutil

    proj = make_project(tmp_path / "p", NOOP, "[agent]\nenabled = false\n", name="s")
    log = tmp_path / "night.log"
    with open(log, "w") as sink:  # a file, not a pipe: nothing blocks however much it logs
        proc = subprocess.Popen(
            [sys.executable, "-m", "overnight", "run", "--cycles", str(MAX_CYCLES), "--max-hours", "0.0003"],
            cwd=proj,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    watched = psutil.Process(proc.pid)
    peak = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.02)  # sampling the memory, not synchronising
    proc.wait(timeout=60)
    err = log.read_text()
    assert proc.returncode == 0, err[-2000:]
    assert "planned cycles did not run (time bound reached" in err, err[-1000:]
    assert peak < 300 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB"
