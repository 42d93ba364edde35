"""Crash-safe resume: ``overnight run --resume [NIGHT_ID]`` after ``kill -9``.

The promise under test (DESIGN.md, promise 3): a night killed at any moment and then
resumed loses no completed cycle and duplicates none, reruns an interrupted cycle on the
same input, keeps its original plan (including its deadline, across midnight), and ends
with totals that cover every cycle of every session.

The subprocess tests start a real ``python -m overnight run`` and SIGKILL it at chosen
moments: inside a cycle, inside a ledger write (the ledger locked by the test), between
two cycles (the process frozen right after committing a cycle), and at seeded random
moments of a fast night. Every moment is reached by polling an observable condition
with a deadline, never by a sleep used as synchronisation. The ledger is inspected
read-only right after each kill, and everything the resumed night did is compared with
that snapshot. Each test runs on SQLite and on PostgreSQL (the ``ledger_url`` fixture).

The midnight tests drive the Orchestrator in process with fake wall clocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from overnight.config import load_config
from overnight.engine.context import CycleInput
from overnight.engine.orchestrator import Orchestrator
from overnight.engine.plan import Plan, compute_deadline, until_timestamp
from overnight.errors import UsageError
from overnight.ledger import Ledger, normalize_url, queries

from .conftest import make_project

# -- the scenario the subprocess nights run ---------------------------------------------

# Every attempt records its input in the name of its first step (committed before the
# scenario body runs) and in an artifact. Environment variables make one cycle stop at a
# chosen point, on its first run only (the marker file it writes is the "first run" flag,
# so the resumed night runs that cycle straight through).
SCENARIO = """
import asyncio
import os
import pathlib


def _path(name):
    value = os.environ.get(name)
    return pathlib.Path(value) if value else None


def _hold(ctx, kind):
    if os.environ.get(f"OVN_{kind}_CYCLE") != str(ctx.cycle):
        return None
    marker = _path(f"OVN_{kind}_MARKER")
    if marker is None or marker.exists():
        return None
    return marker


def _mark(path, text=""):
    # Atomically: the test acts the moment the file exists.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _wait_for(path):
    while not path.exists():
        await asyncio.sleep(0.005)


async def _pause(ctx, kind, where):
    # Stop here until the test says go (the test acts on the night meanwhile).
    marker = _hold(ctx, kind)
    if marker is None or os.environ.get(f"OVN_{kind}_AT", "end") != where:
        return
    _mark(marker, f"{ctx.cycle} {ctx.attempt}")
    await _wait_for(_path(f"OVN_{kind}_GO"))
    _mark(pathlib.Path(f"{marker}.released"))


async def cycle(ctx):
    seed = ctx.input.seed
    async with ctx.step(f"input-{seed}"):
        marker = _hold(ctx, "SLEEP")
        if marker is not None:  # killed here: inside a step of a running cycle
            _mark(marker, f"{ctx.cycle} {ctx.attempt}")
            await asyncio.sleep(3600)
    async with ctx.step("work"):
        await asyncio.sleep(float(os.environ.get("OVN_WORK_S", "0.002")))
    await _pause(ctx, "LOCK", "steps")  # next: an artifact record and a step record
    ctx.artifact("input.txt", str(seed))
    async with ctx.step("check"):
        await asyncio.sleep(0)
    await _pause(ctx, "LOCK", "end")  # next: the attempt's final record, closing the cycle
    await _pause(ctx, "PAUSE", "end")
"""

FINAL_STEPS = ["input", "work", "check"]
POLL_S = 0.002
WAIT_S = 60.0


# -- ledger access --------------------------------------------------------------------


def _is_sqlite(url: str) -> bool:
    return normalize_url(url).startswith("sqlite")


def _sqlite_path(url: str) -> str:
    database = make_url(normalize_url(url)).database
    assert database
    return database


@contextmanager
def read_only(url: str) -> Iterator[Engine]:
    """An engine that cannot write: polls never touch the night's ledger.

    SQLite is opened with ``mode=ro`` (it is not even created if missing), PostgreSQL
    with read-only transactions.
    """
    if _is_sqlite(url):
        engine = create_engine(f"sqlite:///file:{_sqlite_path(url)}?mode=ro&uri=true", poolclass=NullPool)
    else:
        engine = create_engine(
            normalize_url(url),
            poolclass=NullPool,
            connect_args={"options": "-c default_transaction_read_only=on"},
        )
    try:
        yield engine
    finally:
        engine.dispose()


def _progress(engine: Engine, night_id: str | None = None) -> tuple[str, set[int]] | None:
    """(night id, done cycles) of the given or the last night; None before it exists."""
    try:
        with engine.connect() as conn:
            if night_id is None:
                night = queries.last_night(conn)
                if night is None:
                    return None
                night_id = night["id"]
            return night_id, queries.done_cycles(conn, night_id)
    except DBAPIError:  # no file / no tables yet: the night is still starting
        return None


@dataclass
class Snapshot:
    night: dict[str, Any]
    cycles: dict[int, dict[str, Any]]
    attempts: dict[tuple[int, int], dict[str, Any]]
    steps: dict[tuple[int, int], list[dict[str, Any]]]
    artifacts: dict[tuple[int, int], list[dict[str, Any]]]
    sessions: list[dict[str, Any]]

    @property
    def done(self) -> set[int]:
        return {c for c, row in self.cycles.items() if row["status"] == "done"}

    def attempts_of(self, cycle: int) -> list[dict[str, Any]]:
        return [a for (c, _n), a in sorted(self.attempts.items()) if c == cycle]

    @property
    def open_attempts(self) -> list[dict[str, Any]]:
        return [a for a in self.attempts.values() if a["verdict"] is None]


def snapshot(engine: Engine, night_id: str) -> Snapshot:
    with engine.connect() as conn:
        night = queries.get_night(conn, night_id)
        assert night is not None, f"night {night_id} not in the ledger"
        steps: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for st in queries.steps_of(conn, night_id):
            steps[(st["cycle"], st["attempt"])].append(st)
        artifacts: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for art in queries.artifacts_of(conn, night_id):
            artifacts[(art["cycle"], art["attempt"])].append(art)
        return Snapshot(
            night=night,
            cycles={c["cycle"]: c for c in queries.cycles_of(conn, night_id)},
            attempts={(a["cycle"], a["attempt"]): a for a in queries.attempts_of(conn, night_id)},
            steps=dict(steps),
            artifacts=dict(artifacts),
            sessions=queries.sessions_of(conn, night_id),
        )


def final_snapshot(url: str, night_id: str) -> Snapshot:
    led = Ledger(url)
    try:
        return snapshot(led.engine, night_id)
    finally:
        led.close()


def snapshot_after_kill(ro: Engine, url: str, night_id: str) -> Snapshot:
    """The ledger as the killed night left it.

    On PostgreSQL a transaction whose COMMIT the night had already sent when it died still
    commits on the server, a moment later: wait until the dead night's server sessions
    are gone, so that the snapshot is what the resumed night will find. (SQLite commits
    in the process itself: nothing lands after the kill.)
    """
    if not _is_sqlite(url):

        def gone() -> bool:
            with ro.connect() as conn:
                sessions = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE "
                        "application_name = 'overnight-ledger' AND datname = current_database()"
                    )
                ).scalar()
            return sessions == 0

        wait_for(gone, "the killed night's PostgreSQL sessions to end")
    return snapshot(ro, night_id)


# -- processes ------------------------------------------------------------------------


@dataclass
class NightRunner:
    """Starts ``overnight run`` subprocesses of one project against one ledger."""

    tmp: Path
    url: str
    env: dict[str, str]
    cycles: int
    seed: int
    parallel: int = 1
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.project = make_project(self.tmp / "project", SCENARIO)
        self.night_dir = self.tmp / "nights"
        self.logs = self.tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self._n = 0

    def _spawn(self, args: list[str], env: dict[str, str] | None, stderr: int | None) -> subprocess.Popen:
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.pop("COLUMNS", None)
        self._n += 1
        log_path = self.logs / f"{self._n:02d}-{args[1] if len(args) > 1 else 'run'}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "overnight", *args],
                cwd=self.tmp,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log if stderr is None else stderr,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start(
        self, seed: int | None = None, env: dict[str, str] | None = None, stderr: int | None = None
    ) -> subprocess.Popen:
        args = [
            "run",
            "--config", str(self.project / "overnight.toml"),
            "--cycles", str(self.cycles),
            "--parallel", str(self.parallel),
            "--ledger", self.url,
            "--night-dir", str(self.night_dir),
            "--seed", str(self.seed if seed is None else seed),
            "--retry-attempts", "1",
        ]  # fmt: skip
        return self._spawn(args, env, stderr)

    def resume(self, night_id: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        args = ["run", "--resume", *([night_id] if night_id else [])]
        args += ["--ledger", self.url, "--night-dir", str(self.night_dir)]
        return self._spawn(args, env, None)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen]]:
    """The nights a test started; any still alive when it ends (a failed test) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def log_of(proc: subprocess.Popen) -> str:
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(errors="replace")[-4000:]


def wait_for(
    cond: Callable[[], Any], what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT_S
) -> Any:
    """Poll ``cond`` until it is truthy; fail if the night exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"night exited with {proc.returncode} before {what}:\n{log_of(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{log_of(proc)}" if proc else ""))
        time.sleep(POLL_S)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL and reap. The exit status proves it died of the signal, not on its own."""
    os.kill(proc.pid, signal.SIGKILL)
    rc = proc.wait(timeout=30)
    assert rc == -signal.SIGKILL, f"night exited with {rc} before the kill:\n{log_of(proc)}"


def finish(proc: subprocess.Popen) -> None:
    rc = proc.wait(timeout=WAIT_S)
    assert rc == 0, f"resumed night exited with {rc}:\n{log_of(proc)}"


# -- what a correctly resumed night looks like --------------------------------------------


def assert_resumed(url: str, night_id: str, seed: int, cycles: int, kills: list[Snapshot]) -> Snapshot:
    """Check the finished night against the snapshots taken right after each kill."""
    final = final_snapshot(url, night_id)
    night = final.night
    assert night["status"] == "completed", night
    assert night["end_reason"] == "all planned cycles ran"

    # Every planned cycle: exactly one row, done, passed, on its derived input.
    assert sorted(final.cycles) == list(range(1, cycles + 1))
    for c, row in final.cycles.items():
        expected_seed = CycleInput.derive(seed, c).seed
        assert (row["status"], row["verdict"]) == ("done", "passed"), row
        assert row["input_seed"] == str(expected_seed), row
        atts = final.attempts_of(c)
        assert [a["attempt"] for a in atts] == list(range(1, len(atts) + 1)), atts
        assert row["attempts"] == len(atts), (row, atts)
        # Never rerun, never duplicated: one finished attempt, the last one; every other
        # attempt is one a kill interrupted.
        assert [a["verdict"] for a in atts] == ["interrupted"] * (len(atts) - 1) + ["passed"], atts
        for a in atts:
            names = [st["name"] for st in final.steps.get((c, a["attempt"]), [])]
            # Every attempt ran on the same input (the first step names it).
            assert all(not n.startswith("input-") or n == f"input-{expected_seed}" for n in names)
            assert names[:1] in ([], [f"input-{expected_seed}"]), (c, a["attempt"], names)
            assert all(st["outcome"] != "running" for st in final.steps.get((c, a["attempt"]), []))
            for art in final.artifacts.get((c, a["attempt"]), []):
                assert Path(art["path"]).read_text() == str(expected_seed), art
        last = atts[-1]
        names = [st["name"] for st in final.steps[(c, last["attempt"])]]
        assert [n.split("-")[0] for n in names] == FINAL_STEPS, names
        arts = {a["name"]: a for a in final.artifacts.get((c, last["attempt"]), [])}
        assert Path(arts["input.txt"]["path"]).read_text() == str(expected_seed)

    # What each kill left behind was kept, closed and continued, never redone.
    for i, snap in enumerate(kills, 1):
        session_then = max(s["seq"] for s in snap.sessions)
        assert snap.night["status"] == "running", f"kill {i}: {snap.night}"
        for c in snap.done:
            assert final.attempts_of(c) == snap.attempts_of(c), f"kill {i}: cycle {c} was rerun"
            assert all(a["session"] <= session_then for a in final.attempts_of(c))
            for a in snap.attempts_of(c):
                key = (c, a["attempt"])
                assert final.steps.get(key) == snap.steps.get(key), f"kill {i}: cycle {c}"
                assert final.artifacts.get(key) == snap.artifacts.get(key), f"kill {i}: cycle {c}"
        for a in snap.open_attempts:
            c, n = a["cycle"], a["attempt"]
            assert c not in snap.done, f"kill {i}: done cycle {c} has an open attempt"
            closed = final.attempts[(c, n)]
            assert closed["verdict"] == "interrupted", closed
            assert (closed["session"], closed["started_at"]) == (a["session"], a["started_at"])
            later = [x for x in final.attempts_of(c) if x["attempt"] > n]
            assert later and all(x["session"] > a["session"] for x in later), (c, later)

    # One session per process; only the last one ended, and it ended the night.
    seqs = [s["seq"] for s in final.sessions]
    assert seqs == list(range(1, len(kills) + 2)), final.sessions
    assert [s["ended_at"] is None for s in final.sessions] == [True] * len(kills) + [False]
    assert final.sessions[-1]["end_reason"] == "completed"

    # The report covers every cycle of every session.
    report = json.loads((Path(night["night_dir"]) / night_id / "report.json").read_text(encoding="utf-8"))
    assert report["night_id"] == night_id and report["status"] == "completed"
    assert report["planned_cycles"] == cycles
    assert report["cycles_run"] == cycles and report["cycles_not_run"] == 0
    assert report["totals"]["passed"] == cycles
    assert sum(report["totals"].values()) == cycles
    assert report["attempts_total"] == len(final.attempts)
    assert report["interrupted_attempts"] == sum(
        1 for a in final.attempts.values() if a["verdict"] == "interrupted"
    )
    assert report["retried_cycles"] == 0
    assert len(report["sessions"]) == len(kills) + 1
    assert [c["cycle"] for c in report["cycles"]] == list(range(1, cycles + 1))
    assert report["exit_code"] == 0
    return final


# -- kill -9 during a cycle -------------------------------------------------------------------


def test_kill_during_a_cycle_then_resume_the_named_night(
    ledger_url: str, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    """SIGKILL while cycle 3 sleeps inside its first step (parallel 2, so the other worker
    is usually mid-cycle too); resume it by id and SIGKILL it again while the same cycle
    sleeps in its second attempt; resume by id again, to the end. A second night, killed
    the same way, is newer: every resume must pick the named night and leave the other
    one alone."""
    n, seed, k = 8, 4242, 3
    runner = NightRunner(tmp_path, ledger_url, {"OVN_WORK_S": "0.02"}, n, seed, parallel=2, procs=spawned)
    first_marker, second_marker = tmp_path / "sleeping-1", tmp_path / "sleeping-2"
    other_marker = tmp_path / "other-sleeping"
    kills: list[Snapshot] = []
    with read_only(ledger_url) as ro:
        proc = runner.start(env={"OVN_SLEEP_CYCLE": str(k), "OVN_SLEEP_MARKER": str(first_marker)})
        wait_for(first_marker.exists, f"cycle {k} to start sleeping", proc)
        kill9(proc)
        progress = _progress(ro)
        assert progress is not None
        night_id = progress[0]
        kills.append(snapshot_after_kill(ro, ledger_url, night_id))

        # A newer unfinished night in the same ledger: a bare --resume would pick it.
        other_env = {"OVN_SLEEP_CYCLE": "1", "OVN_SLEEP_MARKER": str(other_marker)}
        other = runner.start(seed=seed + 1, env=other_env)
        wait_for(other_marker.exists, "the other night to start its cycle", other)
        kill9(other)
        other_id = wait_for(lambda: _progress(ro), "the other night's row")[0]
        assert other_id != night_id
        other_before = snapshot_after_kill(ro, ledger_url, other_id)

        # The same cycle sleeps again on its rerun; kill the resumed night there too.
        env = {"OVN_SLEEP_CYCLE": str(k), "OVN_SLEEP_MARKER": str(second_marker)}
        proc = runner.resume(night_id, env=env)
        wait_for(second_marker.exists, f"cycle {k} to sleep again after the resume", proc)
        kill9(proc)
        kills.append(snapshot_after_kill(ro, ledger_url, night_id))
        assert first_marker.read_text() == f"{k} 1" and second_marker.read_text() == f"{k} 2"

        for attempt, snap in enumerate(kills, 1):
            sleeping = [a for a in snap.open_attempts if a["cycle"] == k]
            assert [(a["attempt"], a["session"]) for a in sleeping] == [(attempt, attempt)]
            assert [st["outcome"] for st in snap.steps[(k, attempt)]] == ["running"]
            assert k not in snap.done

        finish(runner.resume(night_id, env=env))
        final = assert_resumed(ledger_url, night_id, seed, n, kills)
        assert [(a["session"], a["verdict"]) for a in final.attempts_of(k)] == [
            (1, "interrupted"),
            (2, "interrupted"),
            (3, "passed"),
        ]
        assert snapshot(ro, other_id) == other_before, "resuming one night touched another"


# -- kill -9 during a ledger write ---------------------------------------------------------


@contextmanager
def ledger_write_lock(url: str, table: str) -> Iterator[None]:
    """Lock the ledger against the night's writes from outside.

    SQLite: ``BEGIN IMMEDIATE`` (no write at all can commit). PostgreSQL: an EXCLUSIVE
    lock on one table, so a write transaction runs its statements on other tables and
    then waits, open, at the first one on ``table``.
    """
    if _is_sqlite(url):
        conn = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    else:
        with psycopg.connect(url) as pg:
            pg.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            yield
            pg.rollback()


def _ledger_writer_waits(ro: Engine) -> bool:
    with ro.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND a.application_name = 'overnight-ledger' "
                    "AND a.datname = current_database()"
                )
            ).scalar()
        )


@pytest.mark.parametrize(
    ("where", "table", "committed_steps"),
    [("steps", "steps", ["input", "work"]), ("end", "cycles", ["input", "work", "check"])],
    ids=["step-write", "final-attempt-write"],
)
def test_kill_during_a_ledger_write_then_resume(
    ledger_url: str,
    tmp_path: Path,
    spawned: list[subprocess.Popen],
    where: str,
    table: str,
    committed_steps: list[str],
) -> None:
    """SIGKILL while the night's writer is inside a write that cannot commit.

    Cycle 3 pauses (after its "work" step, or at its very end); the test locks the ledger
    and lets the cycle go on to its next write: an artifact and the "check" step, or the
    final attempt record that makes the cycle done. On PostgreSQL the test waits until
    the writer is seen waiting for the lock: its transaction is open and has already run
    its statements on other tables (for the final record: the attempt and its steps are
    updated, the cycle row is next). On SQLite, where a lock wait is not visible from
    outside, the test kills once the cycle has gone on to that write (the writer is
    queued behind the lock or in its busy wait). Either way the write never commits:
    the cycle must not count as done, and reruns on the same input.
    """
    n, seed, k = 6, 777, 3
    runner = NightRunner(tmp_path, ledger_url, {}, n, seed, procs=spawned)
    paused, go = tmp_path / "paused", tmp_path / "go"
    released = tmp_path / "paused.released"
    env = {
        "OVN_LOCK_CYCLE": str(k),
        "OVN_LOCK_AT": where,
        "OVN_LOCK_MARKER": str(paused),
        "OVN_LOCK_GO": str(go),
    }
    with read_only(ledger_url) as ro:
        proc = runner.start(env=env)
        wait_for(paused.exists, f"cycle {k} to pause", proc)
        with ledger_write_lock(ledger_url, table):
            go.touch()
            wait_for(released.exists, f"cycle {k} to go on to its next write", proc)
            if not _is_sqlite(ledger_url):
                wait_for(lambda: _ledger_writer_waits(ro), "the writer to wait for the lock", proc)
            kill9(proc)
        progress = _progress(ro)
        assert progress is not None
        night_id = progress[0]
        before = snapshot_after_kill(ro, ledger_url, night_id)
        assert before.done == set(range(1, k)), before.done
        assert before.cycles[k]["status"] == "pending"
        assert [(a["cycle"], a["attempt"]) for a in before.open_attempts] == [(k, 1)]
        steps = before.steps[(k, 1)]
        assert [st["name"].split("-")[0] for st in steps] == committed_steps
        assert all(st["outcome"] == "passed" for st in steps)

        finish(runner.resume(env=env))
    assert_resumed(ledger_url, night_id, seed, n, [before])


# -- kill -9 between cycles ---------------------------------------------------------------------


def _fill_pipe(fd: int) -> None:
    """Write into a non-blocking pipe until not one more byte fits."""
    for size in (65536, 4096, 1):
        while True:
            try:
                os.write(fd, b"." * size)
            except BlockingIOError:
                break


def test_kill_between_cycles_then_resume(
    ledger_url: str, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    """SIGKILL after cycle 3 is committed as done and before anything of cycle 4 is.

    With parallel 1 the night commits a cycle's final attempt, then prints its progress
    line to stderr, then records the next cycle. Its stderr is a FIFO the test never
    reads: while cycle 3 waits at its very end, the test fills the FIFO to the brim and
    lets the cycle finish. The night commits cycle 3 and then blocks on its progress
    line, frozen between cycles. The test waits for cycle 3 to be done in the ledger,
    kills, and checks that nothing of cycle 4 had been recorded.
    """
    n, seed, k = 6, 31337, 3
    runner = NightRunner(tmp_path, ledger_url, {}, n, seed, procs=spawned)
    paused, go = tmp_path / "paused", tmp_path / "go"
    env = {"OVN_PAUSE_CYCLE": str(k), "OVN_PAUSE_MARKER": str(paused), "OVN_PAUSE_GO": str(go)}
    fifo = tmp_path / "stderr.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # kept open, never read
    child_end = os.open(fifo, os.O_WRONLY)  # blocking: the night's writes will wait
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # separate description, non-blocking
    try:
        with read_only(ledger_url) as ro:
            proc = runner.start(env=env, stderr=child_end)
            os.close(child_end)
            child_end = -1
            wait_for(paused.exists, f"cycle {k} to reach its end", proc)
            _fill_pipe(filler)
            go.touch()
            night_id = wait_for(
                lambda: (p := _progress(ro)) is not None and k in p[1] and p[0],
                f"cycle {k} to be committed as done",
                proc,
            )
            kill9(proc)
            before = snapshot_after_kill(ro, ledger_url, night_id)
            assert before.done == set(range(1, k + 1)), before.cycles
            assert set(before.cycles) == set(range(1, k + 1)), "cycle 4 had already started"
            assert before.open_attempts == []
            finish(runner.resume(env=env))
    finally:
        for fd in (reader, filler, child_end):
            if fd >= 0:
                os.close(fd)
    final = assert_resumed(ledger_url, night_id, seed, n, [before])
    # Nothing was interrupted: the resumed session ran exactly the cycles after 3.
    assert {c for (c, _a), a in final.attempts.items() if a["session"] == 2} == set(range(k + 1, n + 1))
    assert all(a["verdict"] == "passed" for a in final.attempts.values())


# Kills at random moments of step-heavy nights, on both ledgers: tests/resilience/test_signals.py
# (SIGKILL, SIGTERM and SIGINT chains; bench/resilience.py runs them with more trials).


# -- midnight ---------------------------------------------------------------------------------------

D = (2026, 1, 15)  # a winter day: no daylight-saving change near it in any zone we know


def _local(y: int, m: int, d: int, hh: int, mm: int) -> float:
    return datetime(y, m, d, hh, mm).timestamp()


def test_until_and_deadline_across_midnight() -> None:
    before = _local(*D, 23, 50)
    after = _local(2026, 1, 16, 0, 10)
    morning = _local(2026, 1, 16, 6, 0)
    assert until_timestamp(before, "06:00") == morning
    assert until_timestamp(after, "06:00") == morning
    assert until_timestamp(before, "23:55") == _local(*D, 23, 55)
    assert until_timestamp(before, "23:50") == _local(2026, 1, 16, 23, 50)  # strictly after
    assert until_timestamp(before, "00:00") == _local(2026, 1, 16, 0, 0)
    assert until_timestamp(_local(2026, 12, 31, 23, 50), "06:00") == _local(2027, 1, 1, 6, 0)
    assert compute_deadline(before, 8.0, "06:00") == morning
    assert compute_deadline(before, 1.0, "06:00") == _local(2026, 1, 16, 0, 50)
    assert compute_deadline(before, None, "06:00") == morning
    assert compute_deadline(before, 1.0, None) == before + 3600.0
    assert compute_deadline(before, None, None) is None


MIDNIGHT_SCENARIO = """
hook = None


async def cycle(ctx):
    async with ctx.step(f"input-{ctx.input.seed}"):
        if hook is not None:
            await hook(ctx)
"""


def _clock(start: float) -> Callable[[], float]:
    t0 = time.monotonic()
    return lambda: start + (time.monotonic() - t0)


def _midnight_plan(tmp_path: Path, max_hours: float | None, cycles: int) -> tuple[Plan, str]:
    name = f"midnight_{uuid.uuid4().hex[:10]}"  # imported in this process: a fresh module
    project = make_project(tmp_path / "project", MIDNIGHT_SCENARIO, name=name)
    loaded = load_config(project / "overnight.toml")
    plan = Plan(
        scenario=loaded.config.scenario,
        cycles=cycles,
        parallel=1,
        retry_attempts=0,
        cycle_timeout=60.0,
        max_hours=max_hours,
        until="06:00",
        seed=2026,
        night_dir=str(tmp_path / "nights"),
        retry_backoff=0.0,
        config_path=str(loaded.path),
        key_prefix=loaded.key_prefix,
        config_raw=loaded.raw,
    )
    return plan, name


async def _start_and_interrupt(
    plan: Plan, name: str, led: Ledger, clock: Callable[[], float], at_cycle: int
) -> Orchestrator:
    """Run the night until ``at_cycle`` starts, then interrupt it (as Ctrl-C would)."""
    orch = Orchestrator(plan, led, clock=clock, handle_signals=False)
    fired = False

    async def hook(ctx: Any) -> None:
        nonlocal fired
        if ctx.cycle == at_cycle and not fired:
            fired = True
            orch.interrupt("test: stopped before midnight")
            await asyncio.sleep(3600)  # cancelled by the interrupt

    sys.modules[name].hook = hook  # type: ignore[attr-defined]
    outcome = await orch.run()
    assert outcome.status == "interrupted", outcome
    return orch


def _resumable(led: Ledger) -> dict[str, Any]:
    with led.read() as conn:
        night = queries.last_night(conn, resumable_only=True)
    assert night is not None
    return night


@pytest.mark.parametrize(
    ("max_hours", "deadline_hm"), [(8.0, (6, 0)), (1.0, (0, 50))], ids=["until-0600", "max-1h"]
)
async def test_night_started_before_midnight_resumes_after_midnight(
    ledger_url: str, tmp_path: Path, max_hours: float, deadline_hm: tuple[int, int]
) -> None:
    """Started at 23:50 with --until 06:00, interrupted at cycle 3, resumed at 00:10 the
    next day: the remaining cycles run, and the deadline is still the one computed at
    23:50 (06:00 next morning; 00:50 with --max-hours 1, where recomputing at 00:10 would
    give 01:10)."""
    n = 6
    plan, name = _midnight_plan(tmp_path, max_hours, n)
    start, resumed_at = _local(*D, 23, 50), _local(2026, 1, 16, 0, 10)
    deadline = _local(2026, 1, 16, *deadline_hm)
    led = Ledger(ledger_url)
    try:
        first = await _start_and_interrupt(plan, name, led, _clock(start), at_cycle=3)
        # --max-hours counts from the moment the night opened (the clock runs on).
        assert first.deadline == pytest.approx(deadline, abs=5.0)
        deadline = first.deadline
        assert first.night_id.startswith("20260115-2350")
        night = _resumable(led)
        assert (night["id"], night["status"], night["deadline"]) == (
            first.night_id,
            "interrupted",
            deadline,
        )
        with led.read() as conn:
            assert queries.done_cycles(conn, first.night_id) == {1, 2}
            before = queries.attempts_of(conn, first.night_id)

        second = Orchestrator(
            Plan.from_json(night["plan"]),
            led,
            resume=night,
            clock=_clock(resumed_at),
            handle_signals=False,
        )
        outcome = await second.run()
        assert outcome.status == "completed", outcome
        assert second.night_id == first.night_id
        assert second.deadline == deadline

        with led.read() as conn:
            night = queries.get_night(conn, first.night_id)
            cycles = queries.cycles_of(conn, first.night_id)
            attempts = queries.attempts_of(conn, first.night_id)
            sessions = queries.sessions_of(conn, first.night_id)
        assert night is not None
        assert (night["status"], night["deadline"]) == ("completed", deadline)
        assert night["started_at"] >= start and night["ended_at"] >= resumed_at
        assert [(c["cycle"], c["status"], c["verdict"]) for c in cycles] == [
            (c, "done", "passed") for c in range(1, n + 1)
        ]
        assert [(s["seq"], s["end_reason"]) for s in sessions] == [(1, "interrupted"), (2, "completed")]
        assert start <= sessions[0]["started_at"] < resumed_at <= sessions[1]["started_at"]
        # Cycles 1 and 2 kept their attempts; cycle 3 was interrupted and ran again after
        # midnight; cycles 3..6 ran in the second session, on the next day's clock.
        assert [a for a in attempts if a["cycle"] <= 2] == [a for a in before if a["cycle"] <= 2]
        summary = [(a["cycle"], a["attempt"], a["session"], a["verdict"]) for a in attempts]
        assert summary == [(1, 1, 1, "passed"), (2, 1, 1, "passed"), (3, 1, 1, "interrupted")] + [
            (c, 2 if c == 3 else 1, 2, "passed") for c in range(3, n + 1)
        ]
        assert all(a["started_at"] >= resumed_at for a in attempts if a["session"] == 2)
    finally:
        led.close()


async def test_resume_after_the_morning_deadline_needs_a_new_bound(ledger_url: str, tmp_path: Path) -> None:
    """Started at 23:50 with --until 06:00 and resumed at 06:30: the night's own deadline
    has passed, so the resume is refused and starts nothing (recomputing --until from the
    new time would silently give the night another day, until 06:00 tomorrow). With a new
    bound (--until 07:00) the same night continues: the remaining cycles run in a second
    session, the first two are kept as they were."""
    n = 6
    plan, name = _midnight_plan(tmp_path, 8.0, n)
    late = _local(2026, 1, 16, 6, 30)
    led = Ledger(ledger_url)
    try:
        first = await _start_and_interrupt(plan, name, led, _clock(_local(*D, 23, 50)), 3)
        night = _resumable(led)
        with led.read() as conn:
            before = queries.attempts_of(conn, first.night_id)
        refused = Orchestrator(
            Plan.from_json(night["plan"]), led, resume=night, clock=_clock(late), handle_signals=False
        )
        with pytest.raises(UsageError, match="time bound passed at 2026-01-16 06:00"):
            await refused.run()
        with led.read() as conn:
            assert queries.attempts_of(conn, first.night_id) == before
            assert len(queries.sessions_of(conn, first.night_id)) == 1
            night = queries.get_night(conn, first.night_id)
        assert night is not None
        assert (night["status"], night["deadline"]) == ("interrupted", _local(2026, 1, 16, 6, 0))

        second = Orchestrator(
            Plan.from_json(night["plan"]),
            led,
            resume=night,
            deadline_override=(None, "07:00"),
            clock=_clock(late),
            handle_signals=False,
        )
        outcome = await second.run()
        assert outcome.status == "completed", outcome
        assert second.deadline == _local(2026, 1, 16, 7, 0)
        with led.read() as conn:
            night = queries.get_night(conn, first.night_id)
            attempts = queries.attempts_of(conn, first.night_id)
            assert queries.done_cycles(conn, first.night_id) == set(range(1, n + 1))
            assert len(queries.sessions_of(conn, first.night_id)) == 2
        assert night is not None and night["deadline"] == _local(2026, 1, 16, 7, 0)
        assert [a for a in attempts if a["cycle"] <= 2] == [a for a in before if a["cycle"] <= 2]
        assert {a["cycle"] for a in attempts if a["session"] == 2} == set(range(3, n + 1))
    finally:
        led.close()


def test_bare_resume_refuses_a_night_that_is_still_running(
    ledger_url: str, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    """A bare --resume must not take over a live night (it would run its cycles twice)."""
    runner = NightRunner(tmp_path, ledger_url, {}, 3, 1, procs=spawned)
    env = {"OVN_SLEEP_CYCLE": "1", "OVN_SLEEP_MARKER": str(tmp_path / "sleeping")}
    alive = runner.start(env=env)
    wait_for((tmp_path / "sleeping").exists, "cycle 1 to sleep", alive)
    second = runner.resume(env=env)
    assert second.wait(timeout=60) == 2 and "still running" in log_of(second)
    kill9(alive)
