"""The night's edges under attack: cycle timeouts under parallel load, two processes on
one night, a full disk, a scenario that exits, a sync scenario stuck in a call."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import make_project, run_cli
from ..support.spawn import spawn_cli
from ..test_resume import _progress, read_only, wait_for

STEPS_FOREVER = """
async def cycle(ctx):
    for i in range(100000):
        async with ctx.step(f"s{i % 50}"):
            pass
"""

# A cycle of one short step: a night of them is still running when a test looks.
STEP_A_WHILE = "import asyncio\n\nasync def cycle(ctx):\n    async with ctx.step('w'):\n        await asyncio.sleep(0.02)\n"


def _night_rows(ledger: Path) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]]]:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        nights = conn.execute("SELECT id, status FROM nights").fetchall()
        cycles = conn.execute("SELECT cycle, status, verdict FROM cycles ORDER BY cycle").fetchall()
    return nights, cycles


def _two_at_once(
    args: list[str], proj: Path, spawned: list, env: dict[str, str] | None = None
) -> list[tuple[int, str]]:
    """Start two ``overnight ARGS`` together; (exit code, stderr) of each once it ended."""
    pair = [spawn_cli(args, proj, env) for _ in range(2)]
    spawned.extend(pair)
    return [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in pair]


def _killed_after_three_cycles(
    args: list[str], proj: Path, ledger_url: str, spawned: list, env: dict[str, str] | None = None
) -> None:
    """Start ``overnight ARGS`` and kill -9 it once its ledger holds three done cycles."""
    first = spawn_cli(args, proj, env, output=False)
    spawned.append(first)
    with read_only(ledger_url) as ro:
        wait_for(lambda: (p := _progress(ro)) is not None and len(p[1]) >= 3, "3 cycles", first)
    first.kill()
    first.wait(timeout=30)


@pytest.mark.parametrize("trial", range(3))
def test_cycle_timeouts_under_parallel_load_end_the_night(tmp_path: Path, trial: int) -> None:
    """The hardening issue's reproduction: 8 step-heavy cycles, 4 at a time, each cut by
    its 0.3 s timeout in the middle of ledger writes. It used to hang 4 runs in 5."""
    config = (
        "[run]\ncycles = 8\nparallel = 4\ncycle_timeout = 0.3\nretry_attempts = 0\n[agent]\nenabled = false\n"
    )
    proj = make_project(tmp_path / "p", STEPS_FOREVER, config)
    t0 = time.monotonic()
    res = run_cli(["run", "--seed", str(trial)], cwd=proj, timeout=60)
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stderr[-2000:]
    assert "FAILED: 8 timeouts in 8 cycles" in res.stdout, res.stdout + res.stderr[-1000:]
    nights, cycles = _night_rows(proj / "night_tests" / "overnight.db")
    assert [status for _id, status in nights] == ["completed"]
    assert cycles == [(c, "done", "timeout") for c in range(1, 9)]
    assert took < 30, took


def test_two_resumes_at_once_one_runs_the_other_is_refused(tmp_path: Path, spawned: list) -> None:
    """kill -9, then two --resume started together: exactly one owns the night; the
    other is refused naming the owner's pid and host, and no cycle runs twice."""
    proj = make_project(tmp_path / "p", STEP_A_WHILE, "[run]\ncycles = 40\n[agent]\nenabled = false\n")
    ledger = proj / "night_tests" / "overnight.db"
    env = {**os.environ, "COLUMNS": "200"}
    _killed_after_three_cycles(["run"], proj, str(ledger), spawned, env)
    results = _two_at_once(["run", "--resume"], proj, spawned, env)
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is still running (pid " in refused and " on " in refused, refused
    assert len([ln for ln in refused.splitlines() if ln.strip()]) == 1, refused
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        passed = conn.execute(
            "SELECT cycle, count(*) FROM attempts WHERE verdict = 'passed' GROUP BY cycle HAVING count(*) > 1"
        ).fetchall()
        done = conn.execute("SELECT count(*) FROM cycles WHERE status = 'done'").fetchone()[0]
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    assert passed == [] and done == 40 and sessions == 2


@pytest.mark.postgres
def test_two_resumes_at_once_on_postgresql(tmp_path: Path, pg_url: str, spawned: list) -> None:
    proj = make_project(tmp_path / "p", STEP_A_WHILE, "[run]\ncycles = 30\n[agent]\nenabled = false\n")
    _killed_after_three_cycles(["run", "--ledger", pg_url], proj, pg_url, spawned)
    results = _two_at_once(["run", "--resume", "--ledger", pg_url], proj, spawned)
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is still running (pid " in refused, refused


def test_two_first_runs_at_once_on_a_fresh_ledger(tmp_path: Path, spawned: list) -> None:
    """Both create the schema of one new SQLite ledger at the same moment: both run."""
    proj = make_project(tmp_path / "p", "async def cycle(ctx):\n    pass\n", "[agent]\nenabled = false\n")
    for round_no in range(3):
        night_dir = tmp_path / f"nights{round_no}"
        results = _two_at_once(["run", "--cycles", "3", "--night-dir", str(night_dir)], proj, spawned)
        assert [rc for rc, _ in results] == [0, 0], results
        nights, _cycles = _night_rows(night_dir / "overnight.db")
        assert sorted(status for _id, status in nights) == ["completed", "completed"]


def test_a_scenario_that_exits_is_a_harness_error_not_the_end_of_the_night(tmp_path: Path) -> None:
    code = (
        "import sys\n\nasync def cycle(ctx):\n"
        "    if ctx.cycle == 2:\n        sys.exit(3)\n"
        "    if ctx.cycle == 3:\n        raise KeyboardInterrupt\n"
    )
    proj = make_project(tmp_path / "p", code, "[agent]\nenabled = false\n")
    res = run_cli(["run", "--cycles", "4"], cwd=proj)
    assert res.returncode == 1, res.stderr[-2000:]
    _nights, cycles = _night_rows(proj / "night_tests" / "overnight.db")
    assert cycles == [
        (1, "done", "passed"),
        (2, "done", "harness_error"),
        (3, "done", "harness_error"),
        (4, "done", "passed"),
    ]


def test_sigterm_ends_a_night_whose_sync_scenario_is_stuck(tmp_path: Path, spawned: list) -> None:
    """A thread cannot be cancelled: the night still ends within its bound, with 143,
    and the stuck thread does not hold the process."""
    code = "import time\n\ndef cycle(ctx):\n    with ctx.step('stuck'):\n        time.sleep(600)\n"
    proj = make_project(tmp_path / "p", code, "[agent]\nenabled = false\n")
    ledger = proj / "night_tests" / "overnight.db"
    proc = spawn_cli(["run", "--cycles", "3", "--parallel", "2"], proj)
    spawned.append(proc)

    def stuck() -> bool:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
            try:
                return conn.execute("SELECT count(*) FROM steps WHERE outcome = 'running'").fetchone()[0] == 2
            except sqlite3.DatabaseError:
                return False

    wait_for(lambda: ledger.exists() and stuck(), "two cycles stuck in their step", proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert rc == 143 and time.monotonic() - t0 < 10, (rc, proc.stderr.read() if proc.stderr else "")
    nights, _ = _night_rows(ledger)
    assert [s for _i, s in nights] == ["interrupted"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MB tmpfs of our own (root only), unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (a full disk is simulated with a real filesystem)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_ends_the_night_with_exit_3_and_resume_completes_it(
    tmp_path: Path, small_disk: Path
) -> None:
    code = "async def cycle(ctx):\n    for i in range(30):\n        async with ctx.step(f's{i % 9}'):\n            pass\n"
    proj = make_project(tmp_path / "p", code, "[run]\ncycles = 60\nparallel = 2\n[agent]\nenabled = false\n")
    night_dir = small_disk / "nights"
    t0 = time.monotonic()
    res = run_cli(["run", "--night-dir", str(night_dir)], cwd=proj, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in res.stderr and "Logging error" not in res.stderr, res.stderr[-2000:]
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert (
        last.startswith("overnight: error: night ")
        and f"no space left on the disk holding {night_dir}" in last
    ), last
    assert "overnight run --resume" in last
    ledger = night_dir / "overnight.db"
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done_before = dict(conn.execute("SELECT cycle, verdict FROM cycles WHERE status = 'done'").fetchall())
    assert 0 < len(done_before) < 60
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    res = run_cli(["run", "--resume", "--night-dir", str(night_dir)], cwd=proj, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    nights, cycles = _night_rows(ledger)
    assert [s for _i, s in nights] == ["completed"]
    assert [c for c, _s, _v in cycles] == list(range(1, 61)) and all(v == "passed" for _c, _s, v in cycles)
    assert {c: v for c, _s, v in cycles if c in done_before} == done_before


@pytest.mark.postgres
def test_two_first_runs_at_once_on_a_fresh_postgresql_ledger(
    tmp_path: Path, pg_url: str, spawned: list
) -> None:
    """Both create the schema of one empty PostgreSQL database at once (it used to fail
    the second with 'table meta already exists'): the schema is made once, both run."""
    proj = make_project(tmp_path / "p", "async def cycle(ctx):\n    pass\n", "[agent]\nenabled = false\n")
    results = _two_at_once(["run", "--cycles", "3", "--ledger", pg_url], proj, spawned)
    assert [rc for rc, _ in results] == [0, 0], results
