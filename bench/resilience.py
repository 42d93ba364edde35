"""Benchmark: signals at random moments of step-heavy nights. A measurement, not a test.

    python bench/resilience.py [--trials 20] [--pg-trials 5] [--signals TERM,INT,KILL]
                               [--ledger sqlite|postgresql|both] [--src PATH] [--json OUT]
    python bench/resilience.py --before-after [--baseline 67f475d] [--baseline-trials N]
                               [--baseline-pg-trials N] ...

What DESIGN.md promises 3 and 4 (and issue 12) say a night survives, counted per trial:
``overnight run`` / ``overnight run --resume`` of one night, hit by SIGTERM, SIGINT or
SIGKILL at a seeded random moment, again and again, then resumed to its end.

For each ledger (SQLite; PostgreSQL in a throwaway cluster of its own) and signal, a
*chain* of N trials on one night of a step-heavy scenario (every cycle: a first step
named ``input-{ctx.input.seed}``, 30 short ``async with ctx.step(...)``, an artifact, a
last step; nothing fails), ``--parallel 3``, ``--retry-attempts 1``, 6 N + 30 cycles.
Each trial starts the night (the first) or ``--resume``s it, polls the ledger read-only
(SQLite ``mode=ro``, PostgreSQL read-only transactions) until 1-4 more cycles are done
(bounded: 60 s, then the signal is sent anyway), waits a seeded 0-60 ms, sends the signal
to the process and waits up to 30 s for it to exit:

- *held*: the expected exit (143 for SIGTERM, 130 for SIGINT, death by SIGKILL), within
  10 s for a graceful signal; the time from the signal to the exit is recorded;
- *late*: the expected exit, but after more than 10 s;
- *hung*: still running 30 s after the signal: SIGABRT (the child runs with
  ``PYTHONFAULTHANDLER=1``, so its stderr log gets every thread's stack), then SIGKILL,
  and the chain goes on;
- *wrong exit*: any other exit code, or an exit before the signal was sent.

After each trial the ledger is snapshotted (on PostgreSQL once the process's server
sessions are gone, so that a COMMIT already sent has landed). After the chain a last
``--resume`` runs the night to its end (bounded: 300 s, else the chain counts as hung).
Then, per chain:

- *lost*: a cycle that was ``done`` in a snapshot taken right after a signal whose row,
  attempts or steps are different at the end, or a planned cycle not ``done`` at the end
  of a night whose last resume exited 0 (a night that did not finish is ``unfinished``);
- *duplicated*: a cycle with more than one ``passed`` attempt, or a cycle ``done`` in a
  snapshot that has more attempts at the end (it was run again in a later session);
- *leaked*: every chain runs with random canary secrets: ``api_token =
  "${OVN_CANARY_TOKEN}"`` (a value from the environment) and ``db_password = "<literal>"``
  in ``[settings]``, both written by the scenario to ``ctx.log.info`` in every cycle, and
  on PostgreSQL the ledger role's password (in the ``--ledger`` URL). Counted: processes
  (trials and the last resume) whose stdout or stderr holds a canary raw, plus stores
  that hold one at the end: the ledger (SQLite: the database, WAL and every file beside
  it; PostgreSQL: ``pg_dump`` of the night's database) and every file under the night
  dir. Base64 forms are searched too and reported in the JSON, not in the table.

Also in the JSON: per trial the exit code and time, cycles done and attempts cut at the
snapshot, the night's status after a graceful stop (``interrupted`` expected), cycles
whose first step does not name their input, and tracebacks in the logs.

``--src PATH`` is the ``src`` folder of the overnight to measure (default: this
checkout's): every command runs as ``python -m overnight`` with ``PYTHONPATH=PATH``, using
only the CLI both versions have (``run --config --cycles --parallel --ledger --night-dir
--seed --retry-attempts``, ``run --resume --ledger --night-dir``) and reading only the
ledger tables both have. ``--before-after`` measures the baseline (a git worktree of
``--baseline`` in /tmp, created and removed here) and this checkout in one run and writes
both tables side by side (``bench/results/resilience-before-after.json`` and ``.md``).

PostgreSQL: ``pg_createcluster <newest version> ovtbench_<pid> -p <free port>``, a
superuser role with the canary password, a database per chain, and ``pg_dropcluster
--stop`` at the end (also on an error or Ctrl-C). No other cluster is touched. Without the
Debian cluster tools (or without root, for ``su postgres``) PostgreSQL is skipped.

Every loop is bounded and every random choice is seeded (``--seed``); the canaries are
random per run. Work files are in ``--work`` (default ``/tmp/ovn-resilience-<time>``); a
chain with anything but held trials and a clean ledger keeps its folder (logs, ledger or
a dump of it, night dir); clean chains are deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchutil import Cluster, machine, save

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

SCENARIO = """
import asyncio


async def cycle(ctx):
    async with ctx.step(f"input-{ctx.input.seed}"):
        ctx.log.info(
            "calling the API with token %s, database password %s",
            ctx.settings["api_token"],
            ctx.settings["db_password"],
        )
    for i in range(30):
        async with ctx.step(f"s{i % 7}"):
            await asyncio.sleep(0)
    ctx.artifact("input.txt", str(ctx.input.seed))
    async with ctx.step("check"):
        await asyncio.sleep(0)
"""
STEPS_PER_CYCLE = 32

SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "KILL": signal.SIGKILL}
EXPECTED = {"TERM": 143, "INT": 130, "KILL": -signal.SIGKILL}
GRACEFUL_BOUND_S = 10.0
HANG_BOUND_S = 30.0
FINAL_BOUND_S = 300.0
PROGRESS_BOUND_S = 60.0
SESSIONS_GONE_BOUND_S = 30.0
POLL_S = 0.005
PARALLEL = 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------

LIVE: list[subprocess.Popen[bytes]] = []  # every process this script started and still owns


def kill_live() -> None:
    for proc in LIVE:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    LIVE.clear()


def _term_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(cmd: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# -- canaries ---------------------------------------------------------------------------


def b64_cores(secret: str) -> list[str]:
    """The parts of ``secret``'s base64 encoding that do not depend on what surrounds it,
    for each of the three alignments it can have in a longer encoded text."""
    data = secret.encode()
    cores = []
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + data).decode()
        first = math.ceil(8 * pad / 6)
        last = (8 * (pad + len(data)) - 6) // 6
        cores.append(enc[first : last + 1])
    return cores


def find_canaries(blob: bytes, canaries: dict[str, str]) -> dict[str, list[str]]:
    """{canary name: forms found ("raw", "base64")}; names found in no form are left out."""
    hits: dict[str, list[str]] = {}
    for name, value in canaries.items():
        forms = []
        if value.encode() in blob:
            forms.append("raw")
        if any(core.encode() in blob for core in b64_cores(value)):
            forms.append("base64")
        if forms:
            hits[name] = forms
    return hits


def raw_hit(hits: dict[str, list[str]]) -> bool:
    return any("raw" in forms for forms in hits.values())


# -- PostgreSQL: a throwaway cluster of our own -------------------------------------------


# -- reading the ledger, read-only ------------------------------------------------------


@dataclass
class Snap:
    night: dict[str, Any]
    sessions: list[tuple[Any, ...]]  # (seq, ended_at, pid, end_reason)
    cycles: dict[int, tuple[Any, ...]]  # cycle -> (status, verdict, attempts, input_seed)
    attempts: dict[tuple[int, int], tuple[Any, ...]]  # (cycle, n) -> (session, verdict, started, ended)
    steps: dict[tuple[int, int], list[tuple[Any, ...]]]  # (cycle, n) -> [(seq, name, outcome, ...)]

    @property
    def done(self) -> set[int]:
        return {c for c, row in self.cycles.items() if row[0] == "done"}

    def attempts_of(self, cycle: int) -> dict[int, tuple[Any, ...]]:
        return {n: row for (c, n), row in self.attempts.items() if c == cycle}

    @property
    def open_attempts(self) -> list[tuple[int, int]]:
        return [key for key, row in self.attempts.items() if row[1] is None]

    @property
    def last_session(self) -> int:
        return max((s[0] for s in self.sessions), default=0)


class Reader:
    """Polls and snapshots one ledger without ever writing to it."""

    def __init__(self, sqlite_path: Path | None = None, pg_url: str | None = None) -> None:
        self.sqlite_path = sqlite_path
        self.pg_url = pg_url
        self.conn: Any = None

    def _connect(self) -> Any:
        if self.conn is None:
            if self.sqlite_path is not None:
                if not self.sqlite_path.exists():
                    return None
                self.conn = sqlite3.connect(
                    f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10, isolation_level=None
                )
            else:
                import psycopg

                self.conn = psycopg.connect(
                    self.pg_url,
                    autocommit=True,
                    options="-c default_transaction_read_only=on",
                    application_name="ovtbench-reader",
                    connect_timeout=10,
                )
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connect()
        if conn is None:
            raise LookupError("no ledger yet")
        if self.pg_url is not None:
            sql = sql.replace("?", "%s")
        return list(conn.execute(sql, params).fetchall())

    def _errors(self) -> tuple[type[BaseException], ...]:
        if self.pg_url is not None:
            import psycopg

            return (psycopg.Error, LookupError)
        return (sqlite3.Error, LookupError)

    def progress(self, night_id: str | None) -> tuple[str, int] | None:
        """(night id, cycles done) of the given or the last night; None before it exists."""
        try:
            if night_id is None:
                rows = self._rows("SELECT id FROM nights ORDER BY started_at DESC LIMIT 1")
                if not rows:
                    return None
                night_id = str(rows[0][0])
            n = self._rows("SELECT count(*) FROM cycles WHERE night_id = ? AND status = 'done'", (night_id,))
            return night_id, int(n[0][0])
        except self._errors():
            self.close()  # e.g. the schema did not exist yet when we connected
            return None

    def last_night(self) -> str | None:
        p = self.progress(None)
        return p[0] if p else None

    def others_connected(self) -> int:
        """PostgreSQL: client sessions on the night's database other than ours."""
        rows = self._rows(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return int(rows[0][0])

    def wait_sessions_gone(self) -> bool:
        """After a process ended: on PostgreSQL, wait (bounded) until its server sessions
        are gone, so that a COMMIT it had already sent has landed before the snapshot."""
        if self.pg_url is None:
            return True
        deadline = time.monotonic() + SESSIONS_GONE_BOUND_S
        while time.monotonic() < deadline:
            try:
                if self.others_connected() == 0:
                    return True
            except self._errors():
                self.close()
            time.sleep(0.05)
        return False

    def snapshot(self, night_id: str) -> Snap:
        """One consistent read of the night (one read transaction)."""
        for attempt in range(50):
            try:
                return self._snapshot(night_id)
            except self._errors():
                self.close()
                if attempt == 49:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _snapshot(self, night_id: str) -> Snap:
        conn = self._connect()
        if conn is None:
            raise LookupError("no ledger yet")
        if self.pg_url is not None:
            ctx: Any = conn.transaction()
        else:
            ctx = contextlib.nullcontext()
            conn.execute("BEGIN")
        try:
            with ctx:
                if self.pg_url is not None:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                q = (night_id,)
                nrow = self._rows(
                    "SELECT id, status, end_reason, planned_cycles, night_dir FROM nights WHERE id = ?", q
                )
                if not nrow:
                    raise LookupError(f"night {night_id} not in the ledger")
                night = dict(
                    zip(["id", "status", "end_reason", "planned_cycles", "night_dir"], nrow[0], strict=True)
                )
                sessions = self._rows(
                    "SELECT seq, ended_at, pid, end_reason FROM sessions WHERE night_id = ? ORDER BY seq", q
                )
                cycles = {
                    int(r[0]): tuple(r[1:])
                    for r in self._rows(
                        "SELECT cycle, status, verdict, attempts, input_seed FROM cycles WHERE night_id = ?",
                        q,
                    )
                }
                attempts = {
                    (int(r[0]), int(r[1])): tuple(r[2:])
                    for r in self._rows(
                        "SELECT cycle, attempt, session, verdict, started_at, ended_at FROM attempts "
                        "WHERE night_id = ?",
                        q,
                    )
                }
                steps: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
                for r in self._rows(
                    "SELECT cycle, attempt, seq, name, outcome, started_at, ended_at FROM steps "
                    "WHERE night_id = ? ORDER BY cycle, attempt, seq",
                    q,
                ):
                    steps.setdefault((int(r[0]), int(r[1])), []).append(tuple(r[2:]))
        finally:
            if self.pg_url is None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")
        return Snap(night, [tuple(s) for s in sessions], cycles, attempts, steps)


# -- one chain ------------------------------------------------------------------------------


@dataclass
class Target:
    """One overnight to measure: its ``src`` folder and trial counts."""

    label: str
    src: Path
    trials: int
    pg_trials: int
    version: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chain:
    target: Target
    ledger: str  # sqlite | postgresql
    sig: str  # TERM | INT | KILL
    trials: int
    seed: int
    work: Path
    canaries: dict[str, str]
    cluster: Cluster | None
    procs: int = 0

    def __post_init__(self) -> None:
        self.dir = self.work / f"{self.target.label}-{self.ledger}-{self.sig}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.project = self.dir / "project"
        self.project.mkdir(parents=True)
        (self.project / "resilience_scenario.py").write_text(SCENARIO)
        (self.project / "overnight.toml").write_text(
            'scenario = "resilience_scenario:cycle"\n\n[settings]\n'
            'api_token = "${OVN_CANARY_TOKEN}"\n'
            f'db_password = "{self.canaries["literal"]}"\n'
        )
        self.night_dir = self.dir / "nights"
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.cycles = 6 * self.trials + 30
        self.db = ""
        if self.ledger == "sqlite":
            self.sqlite = self.dir / "ledger" / "overnight.db"
            self.url = str(self.sqlite)
        else:
            assert self.cluster is not None
            self.db = f"ovtb_{self.target.label}_{self.sig}".lower()
            self.url = self.cluster.create_db(self.db)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        env.update(
            PYTHONPATH=str(self.target.src),
            OVN_CANARY_TOKEN=self.canaries["env"],
            PYTHONFAULTHANDLER="1",  # a SIGABRT before the kill of a hung process dumps its stacks
        )
        return env

    def spawn(self, args: list[str], tag: str) -> subprocess.Popen[bytes]:
        self.procs += 1
        base = self.logs / f"{self.procs:02d}-{tag}"
        with open(f"{base}.out", "wb") as out, open(f"{base}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "overnight", *args],
                cwd=self.dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # our own Ctrl-C must not reach it; we stop it ourselves
            )
        proc.log_base = base  # type: ignore[attr-defined]
        LIVE.append(proc)
        return proc

    def start(self) -> subprocess.Popen[bytes]:
        args = [
            "run",
            "--config", str(self.project / "overnight.toml"),
            "--cycles", str(self.cycles),
            "--parallel", str(PARALLEL),
            "--ledger", self.url,
            "--night-dir", str(self.night_dir),
            "--seed", str(self.seed),
            "--retry-attempts", "1",
        ]  # fmt: skip
        return self.spawn(args, "run")

    def resume(self, tag: str = "resume") -> subprocess.Popen[bytes]:
        return self.spawn(["run", "--resume", "--ledger", self.url, "--night-dir", str(self.night_dir)], tag)

    def reader(self) -> Reader:
        if self.ledger == "sqlite":
            return Reader(sqlite_path=self.sqlite)
        return Reader(pg_url=self.url)


def logs_of(proc: subprocess.Popen[bytes]) -> bytes:
    base = proc.log_base  # type: ignore[attr-defined]
    return Path(f"{base}.out").read_bytes() + Path(f"{base}.err").read_bytes()


def stop_hung(proc: subprocess.Popen[bytes]) -> None:
    """SIGABRT first (faulthandler writes every thread's stack to its stderr log), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGABRT)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def wait_progress(
    reader: Reader, night_id: str | None, target: int, proc: subprocess.Popen[bytes]
) -> tuple[str | None, int, bool]:
    """Poll until ``target`` cycles are done, the process exits, or the bound passes.
    Returns (night id, cycles done, reached)."""
    deadline = time.monotonic() + PROGRESS_BOUND_S
    done = 0
    while time.monotonic() < deadline:
        p = reader.progress(night_id)
        if p is not None:
            night_id, done = p
            if done >= target:
                return night_id, done, True
        if proc.poll() is not None:
            return night_id, done, False
        time.sleep(POLL_S)
    return night_id, done, False


def run_chain(ch: Chain, tag: str) -> dict[str, Any]:
    rng = random.Random(f"resilience-{ch.ledger}-{ch.sig}-{ch.seed}")
    sig = SIGNALS[ch.sig]
    expected = EXPECTED[ch.sig]
    graceful = ch.sig != "KILL"
    reader = ch.reader()
    trials: list[dict[str, Any]] = []
    snaps: list[tuple[int, Snap]] = []
    night_id: str | None = None
    done = 0
    t_chain = time.monotonic()
    final: dict[str, Any] = {}
    fsnap: Snap | None = None
    error: str | None = None
    try:
        for i in range(1, ch.trials + 1):
            step, delay = rng.randint(1, 4), rng.uniform(0.0, 0.06)
            proc = ch.start() if night_id is None else ch.resume()
            nid, _seen, reached = wait_progress(reader, night_id, done + step, proc)
            night_id = night_id or nid
            tr: dict[str, Any] = {"trial": i, "target_done": done + step, "progress_reached": reached}
            if proc.poll() is not None:
                tr.update(
                    outcome="wrong_exit", rc=proc.returncode, exit_s=None, note="exited before the signal"
                )
            else:
                time.sleep(delay)  # the random moment (not a synchronisation)
                t0 = time.monotonic()
                os.kill(proc.pid, sig)
                try:
                    rc = proc.wait(timeout=HANG_BOUND_S)
                    dt = time.monotonic() - t0
                    if rc != expected:
                        outcome = "wrong_exit"
                    elif graceful and dt > GRACEFUL_BOUND_S:
                        outcome = "late"
                    else:
                        outcome = "held"
                    tr.update(outcome=outcome, rc=rc, exit_s=round(dt, 3))
                except subprocess.TimeoutExpired:
                    stop_hung(proc)
                    tr.update(outcome="hung", rc=None, exit_s=None, killed_rc=proc.returncode)
            tr["delay_ms"] = round(delay * 1000, 1)
            out = logs_of(proc)
            tr["log"] = str(proc.log_base)  # type: ignore[attr-defined]
            tr["tracebacks"] = out.count(b"Traceback (most recent call last)")
            tr["canaries_in_output"] = find_canaries(out, ch.canaries)
            if night_id is None:
                night_id = reader.last_night()
            if night_id is None:
                tr["note"] = (tr.get("note", "") + "; no night in the ledger").lstrip("; ")
                trials.append(tr)
                log(f"[{tag} {i:2d}/{ch.trials}] {tr['outcome']} rc={tr['rc']}: no night in the ledger, stop")
                break
            tr["sessions_gone"] = reader.wait_sessions_gone()
            snap = reader.snapshot(night_id)
            snaps.append((i, snap))
            done = len(snap.done)
            cut = [
                k
                for k, a in snap.attempts.items()
                if a[0] == snap.last_session and a[1] in (None, "interrupted")
            ]
            tr.update(
                done=done,
                cut=len(cut),
                open_attempts=len(snap.open_attempts),
                night_status=snap.night["status"],
                session=snap.last_session,
            )
            trials.append(tr)
            where = f"{done}/{ch.cycles} done, {len(cut)} cut, night {snap.night['status']}"
            if tr["outcome"] == "hung":
                what = f"HUNG: still running {HANG_BOUND_S:.0f} s after SIG{ch.sig}, killed"
            elif tr["exit_s"] is None:
                what = f"{tr['outcome'].upper()}: exit {tr['rc']} before the signal"
            else:
                label = tr["outcome"] if tr["outcome"] == "held" else tr["outcome"].upper()
                what = f"{label}: exit {tr['rc']} in {tr['exit_s']:.2f} s"
            leak = " LEAK" if raw_hit(tr["canaries_in_output"]) else ""
            log(f"[{tag} {i:2d}/{ch.trials}] {what} | {where}{leak}")
            if done >= ch.cycles:
                log(f"[{tag}] the night finished before the signal: raise the cycle count")
                break

        if night_id is not None:
            proc = ch.resume("final")
            t0 = time.monotonic()
            try:
                rc = proc.wait(timeout=FINAL_BOUND_S)
                final.update(rc=rc, seconds=round(time.monotonic() - t0, 2), hung=False)
            except subprocess.TimeoutExpired:
                stop_hung(proc)
                final.update(rc=None, seconds=None, hung=True)
            out = logs_of(proc)
            final.update(
                log=str(proc.log_base),  # type: ignore[attr-defined]
                tracebacks=out.count(b"Traceback (most recent call last)"),
                canaries_in_output=find_canaries(out, ch.canaries),
                sessions_gone=reader.wait_sessions_gone(),
            )
            fsnap = reader.snapshot(night_id)
            final.update(night_status=fsnap.night["status"], end_reason=fsnap.night["end_reason"])
            log(
                f"[{tag} final] "
                + (
                    "HUNG: no end in 300 s, killed"
                    if final["hung"]
                    else f"exit {final['rc']} in {final['seconds']} s"
                )
                + f" | night {fsnap.night['status']}, {len(fsnap.done)}/{ch.cycles} done"
            )
    except Exception:  # a failure of the measurement itself: recorded, and the run goes on
        error = traceback.format_exc()
        log(f"[{tag}] ERROR in the benchmark:\n{error}")
    finally:
        reader.close()
    result = analyse(ch, trials, snaps, fsnap, final)
    result["error"] = error
    result["night_id"] = night_id
    result["wall_s"] = round(time.monotonic() - t_chain, 1)
    result["stores"] = scan_stores(ch, fsnap)
    return result


def analyse(
    ch: Chain,
    trials: list[dict[str, Any]],
    snaps: list[tuple[int, Snap]],
    final: Snap | None,
    fin: dict[str, Any],
) -> dict[str, Any]:
    lost: dict[int, str] = {}
    duplicated: dict[int, str] = {}
    unfinished: list[int] = []
    wrong_input: list[int] = []
    if final is not None:
        for c in final.cycles:
            passed = [n for n, a in final.attempts_of(c).items() if a[1] == "passed"]
            if len(passed) > 1:
                duplicated[c] = f"{len(passed)} passed attempts"
        for i, snap in snaps:
            for c in sorted(snap.done):
                before, after = snap.attempts_of(c), final.attempts_of(c)
                extra = sorted(set(after) - set(before))
                if extra:
                    duplicated.setdefault(c, f"done at signal {i}, attempts {extra} ran later")
                changed = final.cycles.get(c, (None,))[0] != "done" or any(
                    after.get(n) != row or final.steps.get((c, n)) != snap.steps.get((c, n))
                    for n, row in before.items()
                )
                if changed:
                    lost.setdefault(c, f"done at signal {i}, changed later")
        missing = [c for c in range(1, ch.cycles + 1) if final.cycles.get(c, (None,))[0] != "done"]
        if fin.get("rc") == 0:
            for c in missing:
                lost.setdefault(c, "planned, not done at the end of a night that exited 0")
        else:
            unfinished = missing
        for (c, _n), steps in final.steps.items():
            seed = final.cycles.get(c, (None, None, None, None))[3]
            if steps and steps[0][1] != f"input-{seed}":
                wrong_input.append(c)
    graceful = ch.sig != "KILL"
    return {
        "trials": trials,
        "final": fin,
        "cycles_planned": ch.cycles,
        "lost": {str(k): v for k, v in sorted(lost.items())},
        "duplicated": {str(k): v for k, v in sorted(duplicated.items())},
        "unfinished": len(unfinished),
        "wrong_input_cycles": sorted(set(wrong_input)),
        "graceful_not_interrupted": sum(
            1
            for t in trials
            if graceful and t.get("outcome") == "held" and t.get("night_status") != "interrupted"
        ),
        "graceful_left_open": sum(
            1 for t in trials if graceful and t.get("outcome") == "held" and t.get("open_attempts")
        ),
        "sessions": final.last_session if final else None,
        "attempts_total": len(final.attempts) if final else None,
        "attempts_interrupted": sum(1 for a in final.attempts.values() if a[1] == "interrupted")
        if final
        else None,
    }


def scan_stores(ch: Chain, final: Snap | None) -> dict[str, Any]:
    """Canaries in the ledger's bytes and in every file under the night dir."""
    out: dict[str, Any] = {}
    if ch.ledger == "sqlite":
        files = sorted(p for p in ch.sqlite.parent.rglob("*") if p.is_file())
        blob = b"".join(p.read_bytes() for p in files)
        out["ledger"] = {
            "files": [p.name for p in files],
            "bytes": len(blob),
            "hits": find_canaries(blob, ch.canaries),
        }
    else:
        assert ch.cluster is not None
        try:
            blob = ch.cluster.dump(ch.db)
            (ch.dir / "ledger-dump.sql").write_bytes(blob)
            out["ledger"] = {"dump_bytes": len(blob), "hits": find_canaries(blob, ch.canaries)}
        except Exception as exc:  # the dump is part of the measurement: say why it is missing
            out["ledger"] = {"error": str(exc), "hits": {}}
    hits_by_file: dict[str, dict[str, list[str]]] = {}
    nfiles = 0
    for p in sorted(ch.night_dir.rglob("*")) if ch.night_dir.exists() else []:
        if p.is_file():
            nfiles += 1
            h = find_canaries(p.read_bytes(), ch.canaries)
            if h:
                hits_by_file[str(p.relative_to(ch.night_dir))] = h
    out["night_dir"] = {"files": nfiles, "hits": hits_by_file}
    return out


# -- summaries -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    trials = r["trials"]
    count = {k: sum(1 for t in trials if t["outcome"] == k) for k in ("held", "late", "hung", "wrong_exit")}
    times = [t["exit_s"] for t in trials if t.get("exit_s") is not None]
    outputs = [*trials, r["final"]] if r["final"] else trials
    leaked_logs = sum(1 for t in outputs if raw_hit(t.get("canaries_in_output", {})))
    st = r["stores"]
    leaked_ledger = raw_hit(st["ledger"]["hits"])
    leaked_night_dir = any(raw_hit(h) for h in st["night_dir"]["hits"].values())
    sources: dict[str, list[str]] = {}
    for where, hits in [
        *(("output", t.get("canaries_in_output", {})) for t in outputs),
        ("ledger", st["ledger"]["hits"]),
        *(("night_dir", h) for h in st["night_dir"]["hits"].values()),
    ]:
        for name, forms in hits.items():
            for form in forms:
                key = f"{where}:{form}"
                if key not in sources.setdefault(name, []):
                    sources[name].append(key)
    final_hung = bool(r["final"].get("hung")) if r["final"] else True
    return {
        "trials": len(trials),
        **count,
        "chain_hung": final_hung,
        "final_rc": r["final"].get("rc") if r["final"] else None,
        "lost": len(r["lost"]),
        "duplicated": len(r["duplicated"]),
        "unfinished": r["unfinished"],
        "leaked": leaked_logs + int(leaked_ledger) + int(leaked_night_dir),
        "leaked_logs": leaked_logs,
        "leaked_ledger": leaked_ledger,
        "leaked_night_dir": leaked_night_dir,
        "canary_sources": sources,
        "exit_p50_s": pct(times, 0.5),
        "exit_p95_s": pct(times, 0.95),
        "exit_max_s": max(times) if times else None,
        "graceful_not_interrupted": r["graceful_not_interrupted"],
        "wrong_input_cycles": len(r["wrong_input_cycles"]),
        "tracebacks": sum(t.get("tracebacks", 0) for t in outputs),
        "wall_s": r["wall_s"],
        "error": r.get("error") is not None,
    }


def anomalous(s: dict[str, Any]) -> bool:
    return bool(
        s["held"] != s["trials"]
        or s["chain_hung"]
        or s["final_rc"] != 0
        or s["lost"]
        or s["duplicated"]
        or s["unfinished"]
        or s["leaked"]
        or s["graceful_not_interrupted"]
        or s["wrong_input_cycles"]
        or s["tracebacks"]
        or s["error"]
    )


def fmt_s(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


HEADER = (
    "| ledger | signal | trials | held | hung | late (>10 s) | wrong exit | last resume | lost | duplicated "
    "| leaked | exit p50 s | p95 s | max s |"
)


def row(ledger: str, sig: str, s: dict[str, Any]) -> str:
    last = "hung" if s["chain_hung"] else f"exit {s['final_rc']}"
    return (
        f"| {ledger} | SIG{sig} | {s['trials']} | {s['held']} | {s['hung']} | {s['late']} "
        f"| {s['wrong_exit']} | {last} | {s['lost']} | {s['duplicated']} | {s['leaked']} "
        f"| {fmt_s(s['exit_p50_s'])} | {fmt_s(s['exit_p95_s'])} | {fmt_s(s['exit_max_s'])} |"
    )


def table(res: dict[str, Any]) -> str:
    lines = [HEADER, "|" + "---|" * 14]
    for key, s in res["summary"].items():
        ledger, sig = key.split(":")
        lines.append(row(ledger, sig, s))
    return "\n".join(lines)


def leak_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| version | ledger | signal | canary | found in |", "|---|---|---|---|---|"]
    for label, res in results.items():
        for key, s in res["summary"].items():
            ledger, sig = key.split(":")
            for name, where in sorted(s["canary_sources"].items()):
                lines.append(f"| {label} | {ledger} | SIG{sig} | {name} | {', '.join(where)} |")
    return "\n".join(lines) if len(lines) > 2 else "No canary was found anywhere, raw or base64."


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> str:
    cols = [
        ("trials", "trials"),
        ("held", "held"),
        ("hung", "hung"),
        ("late", "late"),
        ("wrong_exit", "wrong exit"),
        ("chain_hung", "last resume hung"),
        ("lost", "lost"),
        ("duplicated", "duplicated"),
        ("leaked", "leaked"),
        ("exit_p95_s", "exit p95 s"),
        ("exit_max_s", "exit max s"),
    ]
    lines = [
        "| ledger | signal | " + " | ".join(name for _, name in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    keys = list(dict.fromkeys([*before["summary"], *after["summary"]]))
    for key in keys:
        ledger, sig = key.split(":")
        b, a = before["summary"].get(key), after["summary"].get(key)
        cells = []
        for k, _ in cols:

            def show(s: dict[str, Any] | None, k: str = k) -> str:
                if s is None:
                    return "n/a"
                v = s[k]
                if k == "chain_hung":
                    return "yes" if v else "no"
                return fmt_s(v) if k.endswith("_s") else str(v)

            cells.append(f"{show(b)} → {show(a)}")
        lines.append(f"| {ledger} | SIG{sig} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- running ------------------------------------------------------------------------------


def describe_src(src: Path) -> dict[str, Any]:
    """Which overnight ``src`` is: the module file Python imports from it, its commit."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = run([sys.executable, "-c", "import overnight; print(overnight.__file__)"], env=env, cwd="/")
    imported = res.stdout.strip()
    if res.returncode != 0 or not Path(imported).resolve().is_relative_to(src.resolve()):
        raise SystemExit(
            f"--src {src}: python imports overnight from {imported or res.stderr.strip()!r}, not there"
        )
    head = run(["git", "-C", str(src), "rev-parse", "HEAD"]).stdout.strip()
    dirty = run(["git", "-C", str(src), "status", "--porcelain", "--", "."]).stdout.splitlines()
    return {"src": str(src), "commit": head, "src_uncommitted_changes": dirty}


def measure(
    target: Target, ledgers: list[str], sigs: list[str], args: argparse.Namespace, cluster: Cluster | None,
    canaries: dict[str, str], work: Path, res: dict[str, Any], on_chain: Any,
) -> None:  # fmt: skip
    """Every chain of ``target``, into ``res`` (``on_chain`` after each, to save as we go)."""
    target.version = describe_src(target.src)
    log(f"== {target.label}: {target.src} at {target.version['commit'][:12]}")
    res.update(version=target.version, summary={}, chains={})
    for ledger in ledgers:
        n = target.trials if ledger == "sqlite" else target.pg_trials
        if n <= 0:
            continue
        for sig in sigs:
            chain = Chain(
                target, ledger, sig, n, args.seed, work,
                {**canaries, **({"pg_password": cluster.password} if ledger != "sqlite" and cluster else {})},
                cluster if ledger == "postgresql" else None,
            )  # fmt: skip
            tag = f"{target.label} {ledger} SIG{sig}"
            log(f"-- {tag}: {n} trials on {chain.cycles} cycles, work in {chain.dir}")
            try:
                r = run_chain(chain, tag)
            finally:
                kill_live()
            r["commit_after"] = run(["git", "-C", str(target.src), "rev-parse", "HEAD"]).stdout.strip()
            s = summarise(r)
            key = f"{ledger}:{sig}"
            res["summary"][key] = s
            r["dir"] = str(chain.dir)
            if anomalous(s) or args.keep:
                r["kept"] = True
                log(f"-- {tag}: kept {chain.dir}")
            else:
                r["kept"] = False
                shutil.rmtree(chain.dir, ignore_errors=True)
            if ledger == "postgresql" and cluster is not None:
                cluster.drop_db(chain.db)
            res["chains"][key] = r
            log(f"-- {tag}: " + row(ledger, sig, s))
            on_chain()


def ensure_worktree(commit: str, path: Path) -> bool:
    """A worktree of ``commit`` at ``path``; True if it was created here (then remove it)."""
    if (path / "src" / "overnight").is_dir():
        head = run(["git", "-C", str(path), "rev-parse", "HEAD"]).stdout.strip()
        want = run(["git", "-C", str(REPO), "rev-parse", commit]).stdout.strip()
        if head != want:
            raise SystemExit(f"{path} exists at {head[:12]}, not {commit}; remove it or pass --baseline-src")
        return False
    res = run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit])
    if res.returncode != 0:
        raise SystemExit(f"git worktree add {path} {commit}: {res.stderr.strip()}")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per signal on SQLite")
    ap.add_argument("--pg-trials", type=int, default=5, help="trials per signal on PostgreSQL")
    ap.add_argument("--signals", default="TERM,INT,KILL")
    ap.add_argument("--ledger", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument(
        "--src", type=Path, default=REPO / "src", help="the src folder of the overnight to measure"
    )
    ap.add_argument("--json", type=Path, default=None, help="output JSON (a .md of the tables beside it)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument(
        "--work", type=Path, default=None, help="work folder (default /tmp/ovn-resilience-<time>)"
    )
    ap.add_argument("--keep", action="store_true", help="keep every chain's folder, not only anomalous ones")
    ap.add_argument("--before-after", action="store_true", help="measure the baseline and this checkout")
    ap.add_argument("--baseline", default="67f475d", help="the baseline commit for --before-after")
    ap.add_argument("--baseline-src", type=Path, default=None, help="use this src as the baseline instead")
    ap.add_argument("--baseline-trials", type=int, default=None, help="default: --trials")
    ap.add_argument("--baseline-pg-trials", type=int, default=None, help="default: --pg-trials")
    args = ap.parse_args()

    sigs = [s.strip().upper().removeprefix("SIG") for s in args.signals.split(",") if s.strip()]
    for s in sigs:
        if s not in SIGNALS:
            ap.error(f"--signals: {s} is not one of TERM, INT, KILL")
    ledgers = ["sqlite", "postgresql"] if args.ledger == "both" else [args.ledger]
    work = args.work or Path(f"/tmp/ovn-resilience-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    out = args.json or RESULTS / ("resilience-before-after.json" if args.before_after else "resilience.json")
    started = time.time()
    signal.signal(signal.SIGTERM, _term_as_interrupt)
    canaries = {"env": f"ovcenv{secrets.token_hex(12)}", "literal": f"ovclit{secrets.token_hex(12)}"}
    cluster: Cluster | None = None
    worktree: Path | None = None
    results: dict[str, dict[str, Any]] = {}
    pg_skipped: str | None = None
    doc: dict[str, Any] = {}

    def write(complete: bool) -> None:
        doc.update(
            benchmark="resilience",
            complete=complete,
            command="python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
            machine=machine(),
            started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            wall_s=round(time.time() - started, 1),
            seed=args.seed,
            parallel=PARALLEL,
            steps_per_cycle=STEPS_PER_CYCLE,
            bounds_s={"graceful": GRACEFUL_BOUND_S, "hang": HANG_BOUND_S, "final": FINAL_BOUND_S},
            postgresql_skipped=pg_skipped,
            results=results,
        )
        md = [f"# Signals at random moments ({doc['machine']['summary']})", "", f"`{doc['command']}`", ""]
        if not complete:
            md += ["**Incomplete: the run was interrupted or is still running.**", ""]
        if pg_skipped:
            md += [f"PostgreSQL skipped: {pg_skipped}.", ""]
        done = {label: res for label, res in results.items() if res.get("summary")}
        if "before" in done and "after" in done:
            md += ["## Before → after", "", side_by_side(results["before"], results["after"]), ""]
        for label, res in done.items():
            v = res["version"]
            md += [f"## {label}: `{v['commit'][:12]}` (`{v['src']}`)", "", table(res), ""]
        md += ["## Where canaries were found", "", leak_table(done), ""]
        save(out, doc, "\n".join(md))

    try:
        if "postgresql" in ledgers and max(args.pg_trials, args.baseline_pg_trials or 0) > 0:
            pg_skipped = Cluster.unavailable()
            if pg_skipped is None:
                cluster = Cluster(password=f"ovcpg{secrets.token_hex(12)}")
                try:
                    cluster.start()
                except RuntimeError as exc:
                    pg_skipped = str(exc)
                    cluster.close()
                    cluster = None
            if pg_skipped:
                log(f"PostgreSQL skipped: {pg_skipped}")
                ledgers = [x for x in ledgers if x != "postgresql"]
        targets: list[Target] = []
        if args.before_after:
            base_src = args.baseline_src
            if base_src is None:
                worktree = Path(f"/tmp/ovn-{args.baseline}")
                if not ensure_worktree(args.baseline, worktree):
                    worktree = None  # there already: not ours to remove
                base_src = Path(f"/tmp/ovn-{args.baseline}") / "src"
            # This checkout first: if the run is cut short, the figures that matter most exist.
            targets.append(Target("after", args.src.resolve(), args.trials, args.pg_trials))
            targets.append(
                Target(
                    "before", base_src.resolve(),
                    args.trials if args.baseline_trials is None else args.baseline_trials,
                    args.pg_trials if args.baseline_pg_trials is None else args.baseline_pg_trials,
                )
            )  # fmt: skip
        else:
            targets.append(Target("this", args.src.resolve(), args.trials, args.pg_trials))
        for t in targets:
            results[t.label] = {}
            measure(t, ledgers, sigs, args, cluster, canaries, work, results[t.label], lambda: write(False))
        if "before" in results:  # the table reads before → after
            results = {"before": results.pop("before"), **results}
        write(True)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        write(False)
        raise
    finally:
        kill_live()
        if cluster is not None:
            cluster.close()
        if worktree is not None:
            res = run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)])
            if res.returncode != 0:
                log(f"git worktree remove {worktree}: {res.stderr.strip()}")
    log(f"wrote {out} and {out.with_suffix('.md')}")
    print(Path(out.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
