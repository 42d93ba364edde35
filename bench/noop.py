"""Benchmark: what one cycle costs the engine and its ledger. A measurement, not a test.

    python bench/noop.py [--cycles 200] [--parallel 1] [--ledger URL] [--json OUT] [--keep]

For each built-in no-op scenario (``overnight.scenarios.noop:cycle``, which does nothing,
and ``overnight.scenarios.noop:one_step``, which records one step) it measures, in a
fresh temporary folder:

1. **A real night**: ``python -m overnight run --cycles N --parallel P`` as a subprocess.
   Cycles per second from the ledger (cycles / (last cycle ``ended_at`` − first cycle
   ``started_at``)), cycles per second of the whole process (startup, imports and the
   report included), the rows the night stored per cycle, and the ledger's bytes per
   cycle (SQLite: growth of the database + WAL files; PostgreSQL: the night's rows as
   stored).
2. **The same night, with the writer thread timed**: ``Ledger._commit`` is wrapped to
   count transactions and operations and to add up the time the writer thread spends
   in them. Run separately so that the timing cannot slow down the first night.
3. **The ledger alone**: the exact sequence of ``overnight.ledger.ops`` writes that
   ``CycleRunner.run_cycle`` / ``_run_attempt`` (and ``ctx.step``) make for a passing
   cycle, driven through ``Ledger.write`` by P concurrent workers, with no engine and no
   scenario. Its time per cycle is the ledger's cost per cycle; divided by the real
   night's time per cycle it is the ledger's share of a cycle.

It writes everything to a JSON file and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from benchutil import save
from sqlalchemy import delete, event, func, select, text

import overnight
from overnight.engine.context import CycleInput
from overnight.ledger import Ledger, ops, schema
from overnight.redaction import redact_url

SCENARIOS = ("overnight.scenarios.noop:cycle", "overnight.scenarios.noop:one_step")
SEED = 1
FINGERPRINT = "0" * 64
# Child tables first, so deleting the micro-benchmark's rows respects foreign keys.
NIGHT_TABLES = (
    schema.steps,
    schema.artifacts,
    schema.events,
    schema.attempts,
    schema.cycles,
    schema.sessions,
)
# The ledger writes that belong to a cycle (the rest open and close the night).
CYCLE_OPS = {
    "attempt_begin",
    "step_started",
    "step_finished",
    "artifact_saved",
    "attempt_finished",
}
TABLE_NAMES = ("nights", *(t.name for t in reversed(NIGHT_TABLES)))

# Runs the real CLI with Ledger._commit timed; the stats go to $OVERNIGHT_BENCH_STATS.
INSTRUMENTED_CLI = r"""
import atexit, json, os, sys, time
from overnight.ledger import store

stats = {"transactions": 0, "ops": 0, "busy_s": 0.0, "by_op": {}}
_commit = store.Ledger._commit

def timed_commit(self, batch):
    t0 = time.perf_counter()
    try:
        return _commit(self, batch)
    finally:
        stats["busy_s"] += time.perf_counter() - t0
        stats["transactions"] += 1
        stats["ops"] += len(batch)
        for op, _args, _fut in batch:
            stats["by_op"][op.__name__] = stats["by_op"].get(op.__name__, 0) + 1

def dump():
    with open(os.environ["OVERNIGHT_BENCH_STATS"], "w") as f:
        json.dump(stats, f)

store.Ledger._commit = timed_commit
atexit.register(dump)
sys.argv[0] = "overnight"
from overnight.cli import main
main()
"""


# -- the ledger's size ------------------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite ledger URL or path; None for PostgreSQL."""
    if "://" not in url:
        return Path(url).expanduser().resolve()
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser().resolve()
    return None


def sqlite_bytes(db: Path) -> tuple[int, int]:
    """(database bytes, WAL bytes); 0 for a file that is not there."""

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    return size(db), size(db.with_name(db.name + "-wal"))


def pg_bytes(ledger: Ledger) -> int:
    """Bytes of the ledger's tables, with their indexes and TOAST, in the current schema."""
    q = text(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(:names)"
    )
    with ledger.read() as conn:
        return int(conn.execute(q, {"names": list(TABLE_NAMES)}).scalar_one())


def pg_row_bytes(ledger: Ledger, night_id: str) -> int:
    """Bytes of the night's rows as PostgreSQL stores them (no indexes, no page overhead)."""
    total = 0
    with ledger.read() as conn:
        for table in (schema.nights, *NIGHT_TABLES):
            key = "id" if table is schema.nights else "night_id"
            total += conn.execute(
                text(f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table.name} t WHERE {key} = :id"),
                {"id": night_id},
            ).scalar_one()
    return int(total)


class WalWatcher(threading.Thread):
    """Polls the WAL file while the night runs: it is checkpointed away when the night ends."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.01):
            self.peak = max(self.peak, sqlite_bytes(self.db)[1])

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


# -- a real night -----------------------------------------------------------------------


def run_night(
    scenario: str,
    cycles: int,
    parallel: int,
    ledger_url: str | None,
    workdir: Path,
    instrumented: bool = False,
) -> dict[str, Any]:
    """Run one night of ``scenario`` with the real CLI in a folder of its own; measure it."""
    folder = Path(tempfile.mkdtemp(prefix="night-", dir=workdir))
    (folder / "overnight.toml").write_text(f'scenario = "{scenario}"\n', encoding="utf-8")
    url = ledger_url or str(folder / "night_tests" / "overnight.db")
    db = sqlite_path(url)
    # Create the schema first, so that the bytes measured are the night's, not the tables'.
    Ledger(url).close()
    before = sum(sqlite_bytes(db)) if db else _pg_size(url)

    args = ["run", "--cycles", str(cycles), "--parallel", str(parallel)]
    if ledger_url:
        args += ["--ledger", ledger_url]
    stats_file = folder / "writer-stats.json"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if instrumented:
        cmd = [sys.executable, "-c", INSTRUMENTED_CLI, *args]
        env["OVERNIGHT_BENCH_STATS"] = str(stats_file)
    else:
        cmd = [sys.executable, "-m", "overnight", *args]

    watcher = WalWatcher(db) if db else None
    if watcher:
        watcher.start()
    with open(folder / "console.log", "wb") as console:
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            check=False,
        )
        wall = time.perf_counter() - t0
    wal_peak = watcher.stop() if watcher else None
    if proc.returncode != 0:
        tail = (folder / "console.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"night of {scenario} exited {proc.returncode}:\n{tail}")

    led = Ledger(url)
    try:
        night = _find_night(led, (folder / "night_tests").resolve())
        rows = _rows_of(led, night["id"])
        with led.read() as conn:
            c = schema.cycles.c
            first, last, done = conn.execute(
                select(func.min(c.started_at), func.max(c.ended_at), func.count()).where(
                    c.night_id == night["id"], c.status == "done"
                )
            ).one()
        after_pg = None if db else pg_bytes(led)
        row_bytes = None if db else pg_row_bytes(led, night["id"])
    finally:
        led.close()
    span = last - first
    result: dict[str, Any] = {
        "night_id": night["id"],
        "status": night["status"],
        "cycles_done": done,
        "ledger_span_s": round(span, 4),
        "cycles_per_s": round(done / span, 1) if span > 0 else None,
        "ms_per_cycle": round(span / done * 1000, 3),
        "process_wall_s": round(wall, 3),
        "cycles_per_s_wall": round(done / wall, 1),
        "rows": rows,
        "rows_per_cycle": round(sum(rows.values()) / done, 2),
    }
    if db:
        db_end, wal_end = sqlite_bytes(db)
        result["storage"] = {
            "kind": "sqlite file",
            "bytes_before": before,
            "db_bytes_after": db_end,
            "wal_bytes_after": wal_end,
            "wal_bytes_peak": wal_peak,
            "bytes_per_cycle": round((db_end + wal_end - before) / done, 1),
        }
    else:
        result["storage"] = {
            "kind": "postgresql rows (pg_column_size of the night's rows)",
            "row_bytes": row_bytes,
            "bytes_per_cycle": round(row_bytes / done, 1),
            # Growth of the tables with their indexes. Only meaningful in a database of its
            # own: space freed by earlier deletes and vacuums is reused.
            "tables_bytes_before": before,
            "tables_bytes_after": after_pg,
            "tables_growth_per_cycle": round((after_pg - before) / done, 1),
        }
    if instrumented:
        stats = json.loads(stats_file.read_text())
        per_cycle = sum(n for op, n in stats["by_op"].items() if op in CYCLE_OPS) / done
        result["writer"] = {
            "cycle_ops_per_cycle": round(per_cycle, 2),
            "transactions": stats["transactions"],
            "ops": stats["ops"],
            "ops_per_transaction": round(stats["ops"] / max(stats["transactions"], 1), 2),
            "by_op": stats["by_op"],
            "busy_s": round(stats["busy_s"], 4),
            "busy_ms_per_cycle": round(stats["busy_s"] / done * 1000, 3),
        }
    return result


def _pg_size(url: str) -> int:
    led = Ledger(url)
    try:
        return pg_bytes(led)
    finally:
        led.close()


def _find_night(led: Ledger, night_dir: Path) -> dict[str, Any]:
    with led.read() as conn:
        rows = conn.execute(select(schema.nights).where(schema.nights.c.night_dir == str(night_dir))).all()
    if len(rows) != 1:
        raise SystemExit(f"expected one night in {night_dir}, found {len(rows)}")
    return dict(rows[0]._mapping)


def _rows_of(led: Ledger, night_id: str) -> dict[str, int]:
    counts = {}
    with led.read() as conn:
        counts["nights"] = 1
        for table in reversed(NIGHT_TABLES):
            counts[table.name] = conn.execute(
                select(func.count()).select_from(table).where(table.c.night_id == night_id)
            ).scalar_one()
    return counts


# -- the ledger alone -------------------------------------------------------------------


async def _drive_cycles(
    led: Ledger, night_id: str, session: int, cycles: int, parallel: int, with_step: bool
) -> float:
    """The writes of a passing cycle, in the orchestrator's order, by ``parallel`` workers."""
    queue = deque(range(1, cycles + 1))

    async def worker() -> None:
        while queue:
            cycle = queue.popleft()
            seed = str(CycleInput.derive(SEED, cycle).seed)
            # CycleRunner._run_attempt: the cycle's row and the attempt's
            started = time.time()
            await led.write(ops.attempt_begin, night_id, cycle, 1, session, started, seed, FINGERPRINT)
            if with_step:  # Step.__aenter__ / __aexit__
                await led.write(ops.step_started, night_id, cycle, 1, 1, "noop", time.time())
                await led.write(
                    ops.step_finished,
                    night_id,
                    cycle,
                    1,
                    1,
                    time.time(),
                    1e-5,
                    "passed",
                    None,
                    None,
                )
            result = {
                "ended_at": time.time(),
                "duration_s": 1e-4,
                "verdict": "passed",
                "step": None,
                "fallback": False,
                "knobs_off": {},
                "calls": {},
            }
            fields = {"protected_fingerprint": FINGERPRINT, "knobs": {}, "fallback": False, "knobs_off": {}}
            # CycleRunner.run_cycle, final attempt (no step left running)
            await led.write(ops.attempt_finished, night_id, cycle, 1, result, True, fields, False)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return time.perf_counter() - t0


def _delete_night(conn: Any, night_id: str) -> None:
    for table in NIGHT_TABLES:
        conn.execute(delete(table).where(table.c.night_id == night_id))
    conn.execute(delete(schema.nights).where(schema.nights.c.id == night_id))


async def _night_pass(
    led: Ledger,
    cycles: int,
    parallel: int,
    with_step: bool,
    workdir: Path,
    count: Any = None,
) -> tuple[float, str]:
    """Open a night and a session as the orchestrator does, then time the cycles' writes.

    With ``count``, a cursor listener watches the cycles' statements (not the night's).
    """
    night_id = f"bench-{os.getpid()}-{time.time_ns()}"
    now = time.time()
    row = {
        "id": night_id,
        "scenario": "bench:ledger-only",
        "started_at": now,
        "status": "running",
        "seed": SEED,
        "planned_cycles": cycles,
        "parallel": parallel,
        "deadline": None,
        "plan": "{}",
        "config_path": None,
        "config_fingerprint": FINGERPRINT,
        "protected_fingerprint": FINGERPRINT,
        "night_dir": str(workdir),
        "hostname": socket.gethostname(),
        "dry_run": False,
    }
    await led.write(ops.create_night, row)
    session = await led.write(ops.start_session, night_id, now, os.getpid(), socket.gethostname())
    if count is not None:
        event.listen(led.engine, "after_cursor_execute", count)
    try:
        seconds = await _drive_cycles(led, night_id, session, cycles, parallel, with_step)
    finally:
        if count is not None:
            event.remove(led.engine, "after_cursor_execute", count)
    return seconds, night_id


def ledger_microbench(url: str, cycles: int, parallel: int, with_step: bool, workdir: Path) -> dict[str, Any]:
    """Time the ledger writes of ``cycles`` cycles; count their statements and rows."""
    counters = {"statements": 0, "writes": 0, "rows_written": 0}

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        counters["statements"] += 1
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            counters["writes"] += 1
            counters["rows_written"] += max(cursor.rowcount, 0)

    led = Ledger(url)
    try:
        seconds, timed_night = asyncio.run(_night_pass(led, cycles, parallel, with_step, workdir))
        # Counting costs time, so it is a second, untimed pass over fewer cycles.
        counted = min(cycles, 50)
        _, counted_night = asyncio.run(_night_pass(led, counted, parallel, with_step, workdir, count))
        # These are not real nights: take them out of the ledger again.
        for night_id in (timed_night, counted_night):
            led.write_sync(_delete_night, night_id)
    finally:
        led.close()
    return {
        "cycles": cycles,
        "parallel": parallel,
        "seconds": round(seconds, 4),
        "ms_per_cycle": round(seconds / cycles * 1000, 3),
        "cycles_per_s": round(cycles / seconds, 1),
        "write_calls_per_cycle": 4 if with_step else 2,
        "statements_per_cycle": round(counters["statements"] / counted, 2),
        "write_statements_per_cycle": round(counters["writes"] / counted, 2),
        "rows_written_per_cycle": round(counters["rows_written"] / counted, 2),
    }


# -- the whole benchmark ----------------------------------------------------------------


def bench(cycles: int, parallel: int, ledger_url: str | None, keep: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="overnight-bench-"))
    dialect = "sqlite" if ledger_url is None or sqlite_path(ledger_url) else "postgresql"
    if ledger_url is not None and dialect == "sqlite":
        # The nights run in other folders: hand them an absolute path.
        ledger_url = str(sqlite_path(ledger_url))
    try:
        results = []
        for scenario in SCENARIOS:
            night = run_night(scenario, cycles, parallel, ledger_url, workdir)
            timed = run_night(scenario, cycles, parallel, ledger_url, workdir, instrumented=True)
            if dialect == "sqlite":
                near = sqlite_path(ledger_url).parent if ledger_url else workdir
                micro_url = str(near / f".overnight-bench-{os.getpid()}-{time.time_ns()}.db")
            else:
                micro_url = ledger_url
            try:
                micro = ledger_microbench(
                    micro_url, cycles, parallel, scenario.endswith(":one_step"), workdir
                )
            finally:
                if dialect == "sqlite":
                    for suffix in ("", "-wal", "-shm"):
                        Path(micro_url + suffix).unlink(missing_ok=True)
            if timed["writer"]["cycle_ops_per_cycle"] != micro["write_calls_per_cycle"]:
                print(
                    f"warning: the real night made {timed['writer']['cycle_ops_per_cycle']} ledger "
                    f"writes per cycle, the ledger-only pass {micro['write_calls_per_cycle']}: "
                    "the engine's write sequence changed; update _drive_cycles",
                    file=sys.stderr,
                )
            results.append(
                {
                    "scenario": scenario,
                    "night": night,
                    "night_writer_timed": timed,
                    "ledger_microbench": micro,
                    "ledger_share_of_cycle": round(micro["ms_per_cycle"] / night["ms_per_cycle"], 3),
                }
            )
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "overnight-noop",
        "version": 1,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "overnight": overnight.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "ledger": "fresh SQLite file per night" if ledger_url is None else redact_url(ledger_url),
        "dialect": dialect,
        "cycles": cycles,
        "parallel": parallel,
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    head = (
        "| scenario | ledger | parallel | cycles | cycles/s (ledger) | cycles/s (process) "
        "| process s | ledger bytes/cycle | rows/cycle | ledger-only ms/cycle "
        "| writer busy ms/cycle | ops/commit | ledger share |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 11]
    for r in report["results"]:
        n, t, m = r["night"], r["night_writer_timed"], r["ledger_microbench"]
        lines.append(
            f"| `{r['scenario'].split(':')[1]}` | {report['dialect']} | {report['parallel']} "
            f"| {n['cycles_done']} | {n['cycles_per_s']} | {n['cycles_per_s_wall']} "
            f"| {n['process_wall_s']} | {n['storage']['bytes_per_cycle']} "
            f"| {n['rows_per_cycle']} | {m['ms_per_cycle']} | {t['writer']['busy_ms_per_cycle']} "
            f"| {t['writer']['ops_per_transaction']} | {r['ledger_share_of_cycle'] * 100:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="cycles per night (default 200)")
    parser.add_argument("--parallel", type=int, default=1, help="cycles at once (default 1)")
    parser.add_argument(
        "--ledger",
        help="ledger URL or SQLite path (default: a fresh SQLite file per night). "
        "The nights run stay in it; the ledger-only pass removes its rows.",
    )
    parser.add_argument(
        "--json", type=Path, help="write the results here (default: bench/results/noop-<dialect>-p<N>.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.parallel < 1:
        parser.error("--cycles and --parallel must be at least 1")

    report = bench(args.cycles, args.parallel, args.ledger, args.keep)
    out = args.json or (
        Path(__file__).resolve().parent / "results" / f"noop-{report['dialect']}-p{args.parallel}.json"
    )
    table = markdown(report)
    save(out, report, table)
    print(table)
    print(f"\n{report['python']} on {report['platform']}, {report['cpu_count']} CPUs; JSON: {out}")


if __name__ == "__main__":
    main()
