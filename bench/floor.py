"""Benchmark: the floor under a no-op cycle — the same durable rows, written on one raw
driver connection with the same commit batching. A measurement, not a test.

    python bench/floor.py [--cycles 4000] [--parallel 8] [--ledger URL] [--json OUT]

What a no-op cycle leaves in the ledger, and how: ``attempt_begin`` (the cycle's row and
its attempt's, two statements) and ``attempt_finished`` (the attempt's result and the
cycle's, two statements), each committed before the engine goes on. With ``--parallel
P`` the engine's writer commits the writes of up to P cycles together (group commit), so
this script does the same: P cycles' begins in one transaction, then their finishes in
another — two commits for P cycles, the same SQL text (taken from
``overnight.ledger.ops``), the same durability settings (SQLite: WAL, synchronous=NORMAL;
PostgreSQL: the server's defaults), on one connection of the driver itself (sqlite3 or
psycopg), with no SQLAlchemy, no asyncio, no thread hand-off and no engine.

Nothing real could be faster with these rows and these commits; ``compare.py`` reports
overnight's cycles/s as a share of this.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import machine, save

from overnight.engine.context import CycleInput
from overnight.ledger import Ledger, ops
from overnight.ledger.store import normalize_url

FINGERPRINT = "0" * 64


def _night_row(night_id: str, cycles: int, parallel: int) -> dict[str, Any]:
    return {
        "id": night_id,
        "scenario": "bench:floor",
        "started_at": time.time(),
        "status": "running",
        "seed": 1,
        "planned_cycles": cycles,
        "parallel": parallel,
        "deadline": None,
        "plan": "{}",
        "config_path": None,
        "config_fingerprint": FINGERPRINT,
        "protected_fingerprint": FINGERPRINT,
        "night_dir": "/tmp",
        "hostname": "bench",
        "dry_run": False,
    }


def floor(url: str, cycles: int, parallel: int) -> dict[str, Any]:
    """Write ``cycles`` no-op cycles' rows in batches of ``parallel``; cycles per second."""
    url = normalize_url(url)
    night_id = f"floor-{os.getpid()}-{time.time_ns()}"
    led = Ledger(url)  # the schema, exactly as overnight makes it
    try:
        led.write_sync(ops.create_night, _night_row(night_id, cycles, parallel))
        led.write_sync(ops.start_session, night_id, time.time(), os.getpid(), "bench")
    finally:
        led.close()
    pg = url.startswith("postgresql")
    if pg:
        import psycopg

        conn: Any = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        begin = [ops._BEGIN_CYCLE.pg, ops._BEGIN_ATTEMPT.pg]
        finish_attempt = ops.sql.update("attempts", FINISH_ATTEMPT, ops._ATTEMPT_KEY).pg
        finish_cycle = ops.sql.update("cycles", FINISH_CYCLE, ops._CYCLE_KEY).pg
    else:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        begin = [ops._BEGIN_CYCLE.sqlite, ops._BEGIN_ATTEMPT.sqlite]
        finish_attempt = ops.sql.update("attempts", FINISH_ATTEMPT, ops._ATTEMPT_KEY).sqlite
        finish_cycle = ops.sql.update("cycles", FINISH_CYCLE, ops._CYCLE_KEY).sqlite
    try:
        cur = conn.cursor()
        t0 = time.perf_counter()
        commits = 0
        for first in range(1, cycles + 1, parallel):
            batch = range(first, min(first + parallel, cycles + 1))
            for cycle in batch:
                now = time.time()
                key = {"night_id": night_id, "cycle": cycle}
                cur.execute(
                    begin[0],
                    key
                    | {
                        "input_seed": str(CycleInput.derive(1, cycle).seed),
                        "started_at": now,
                        "fingerprint": FINGERPRINT,
                        "fallback": False,
                    },
                )
                cur.execute(begin[1], key | {"attempt": 1, "session": 1, "started_at": now})
            conn.commit()
            for cycle in batch:
                now = time.time()
                key = {"night_id": night_id, "cycle": cycle}
                cur.execute(
                    finish_attempt,
                    key
                    | {
                        "attempt": 1,
                        "ended_at": now,
                        "duration_s": 1e-4,
                        "verdict": "passed",
                        "step": None,
                        "fallback": False,
                        "knobs_off": None,
                        "calls": None,
                    },
                )
                cur.execute(
                    finish_cycle,
                    key
                    | {
                        "protected_fingerprint": FINGERPRINT,
                        "knobs": None,
                        "fallback": False,
                        "knobs_off": None,
                        "status": "done",
                        "verdict": "passed",
                        "ended_at": now,
                        "duration_s": 1e-4,
                    },
                )
            conn.commit()
            commits += 2
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    return {
        "cycles": cycles,
        "parallel": parallel,
        "seconds": round(seconds, 4),
        "cycles_per_s": round(cycles / seconds, 1),
        "statements_per_cycle": 4,
        "commits": commits,
        "night_id": night_id,
    }


# The columns a no-op cycle's final writes set (as the engine's attempt_finished does).
FINISH_ATTEMPT = ("ended_at", "duration_s", "verdict", "step", "fallback", "knobs_off", "calls")
FINISH_CYCLE = (
    "protected_fingerprint",
    "knobs",
    "fallback",
    "knobs_off",
    "status",
    "verdict",
    "ended_at",
    "duration_s",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4000)
    parser.add_argument("--parallel", type=int, default=8, help="cycles per group commit (default 8)")
    parser.add_argument("--ledger", help="a SQLite path or postgresql:// URL (default: a fresh SQLite file)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.parallel < 1:
        parser.error("--cycles and --parallel must be at least 1")
    with tempfile.TemporaryDirectory(prefix="overnight-floor-") as tmp:
        url = args.ledger or str(Path(tmp) / "floor.db")
        result = floor(url, args.cycles, args.parallel)
    result["machine"] = machine()
    table = (
        "| ledger | parallel | cycles | cycles/s | statements/cycle |\n|---|---:|---:|---:|---:|\n"
        f"| {'postgresql' if args.ledger and '://' in args.ledger else 'sqlite'} | {args.parallel} "
        f"| {args.cycles} | {result['cycles_per_s']} | 4 |"
    )
    if args.json:
        save(args.json, result, table)
    print(table)
    print(result["machine"]["summary"], file=sys.stderr)


if __name__ == "__main__":
    main()
