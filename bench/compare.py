"""Benchmark: no-op cycles/s of this tree against an older revision, side by side in one run,
and both against the floor (``floor.py``). A measurement, not a test.

    python bench/compare.py [--against 67f475d] [--cycles 4000] [--parallel 8] [--repeat 3]
                            [--ledger sqlite|postgresql|both] [--demo 3] [--pg-url URL] [--json OUT]

The older revision is taken with ``git archive`` into a temporary folder. Each
round runs, in alternating order (so that a machine growing busier or quieter during the
run favours neither), one night of ``overnight.scenarios.noop:cycle`` with each tree
(``python -m overnight run --cycles N --parallel P`` with ``PYTHONPATH`` on that tree's
``src``, in a fresh folder, a fresh SQLite file or a fresh PostgreSQL database) and one
pass of the floor. Cycles per second are read from the ledger: cycles ÷ (last cycle's
``ended_at`` − first cycle's ``started_at``). The table gives the median of the rounds
and the ratios of the medians. Then ``--demo`` alternating rounds of ``overnight demo``
per tree give the demo's wall time (interpreter start, the reference pipeline's three
cycles and its report).

PostgreSQL runs on a throwaway cluster made for this run (``benchutil.Cluster``) unless
``--pg-url`` names a server (a superuser URL: it creates and drops a database per night).
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchutil import log, machine, save, throwaway_pg_admin_url
from floor import floor

REPO = Path(__file__).resolve().parent.parent
SCENARIO = "overnight.scenarios.noop:cycle"


def checkout(rev: str, into: Path) -> Path:
    """``rev``'s tree unpacked under ``into`` (its examples too: the demo runs one); its ``src``."""
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True, check=False
    )
    if blob.returncode != 0:
        sys.exit(f"compare.py: git archive {rev}: {blob.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(blob.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def night(src: Path, cycles: int, parallel: int, ledger: str | None, folder: Path) -> dict[str, Any]:
    """One real night with the tree at ``src``; its cycles/s from the ledger."""
    folder.mkdir(parents=True)
    (folder / "overnight.toml").write_text(f'scenario = "{SCENARIO}"\n', encoding="utf-8")
    args = ["run", "--cycles", str(cycles), "--parallel", str(parallel)]
    if ledger:
        args += ["--ledger", ledger]
    wall = overnight(src, folder, args)
    query = "SELECT min(started_at), max(ended_at), count(*) FROM cycles WHERE status = 'done'"
    if ledger:
        import psycopg

        with psycopg.connect(ledger) as conn:
            first, last, done = conn.execute(query).fetchone()  # type: ignore[misc]
    else:
        with sqlite3.connect(folder / "night_tests" / "overnight.db") as conn:
            first, last, done = conn.execute(query).fetchone()
    if done != cycles:
        sys.exit(f"compare.py: night with {src} finished {done} of {cycles} cycles")
    return {"cycles_per_s": round(done / (last - first), 1), "process_s": round(wall, 3)}


def demo(src: Path, folder: Path) -> float:
    """Wall time of ``python -m overnight demo`` with the tree at ``src``, in a fresh folder."""
    folder.mkdir(parents=True)
    return round(overnight(src, folder, ["demo"]), 3)


def overnight(src: Path, folder: Path, args: list[str]) -> float:
    """Run ``python -m overnight ARGS`` in ``folder`` with the tree at ``src``; its wall time.
    A failure ends the benchmark with the command's last output."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "overnight", *args],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"compare.py: overnight {args[0]} with {src} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    return wall


def bench(args: argparse.Namespace) -> dict[str, Any]:
    dialects = ["sqlite", "postgresql"] if args.ledger == "both" else [args.ledger]
    admin = None
    if "postgresql" in dialects:
        admin = args.pg_url or throwaway_pg_admin_url()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="overnight-compare-") as tmp:
        base = Path(tmp)
        trees = {args.against: checkout(args.against, base / "old"), "this tree": REPO / "src"}
        for dialect in dialects:
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in [*trees, "floor"]}
            for round_no in range(args.repeat):
                order = list(trees.items())
                if round_no % 2:
                    order.reverse()
                for label, src in order:
                    folder = base / f"{dialect}-{round_no}-{len(runs[label])}-{label.replace(' ', '_')}"
                    url, db = None, None
                    if dialect == "postgresql":
                        db = f"ovtcmp_{secrets.token_hex(4)}"
                        url = _create_db(admin, db)
                    try:
                        runs[label].append(night(src, args.cycles, args.parallel, url, folder))
                    finally:
                        if db:
                            _drop_db(admin, db)
                    log(
                        f"{dialect} round {round_no + 1}: {label}: {runs[label][-1]['cycles_per_s']} cycles/s"
                    )
                db = None
                if dialect == "postgresql":
                    db = f"ovtfloor_{secrets.token_hex(4)}"
                    floor_url = _create_db(admin, db)
                else:
                    floor_url = str(base / f"floor-{round_no}.db")
                try:
                    runs["floor"].append(floor(floor_url, args.cycles, args.parallel))
                finally:
                    if db:
                        _drop_db(admin, db)
                log(f"{dialect} round {round_no + 1}: floor: {runs['floor'][-1]['cycles_per_s']} cycles/s")
            medians = {label: statistics.median(r["cycles_per_s"] for r in rs) for label, rs in runs.items()}
            results[dialect] = {"runs": runs, "median_cycles_per_s": medians}
        demos: dict[str, list[float]] = {label: [] for label in trees}
        for round_no in range(args.demo):
            order = list(trees.items())
            if round_no % 2:
                order.reverse()
            for label, src in order:
                demos[label].append(demo(src, base / f"demo-{round_no}-{label.replace(' ', '_')}"))
                log(f"demo round {round_no + 1}: {label}: {demos[label][-1]} s")
    return {
        "benchmark": "overnight-compare",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "against": args.against,
        "head": _head(),
        "scenario": SCENARIO,
        "cycles": args.cycles,
        "parallel": args.parallel,
        "repeat": args.repeat,
        "machine": machine(),
        "results": results,
        "demo_wall_s": demos,
    }


def _create_db(admin: str | None, db: str) -> str:
    import psycopg

    assert admin is not None
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    return admin.rsplit("/", 1)[0] + f"/{db}"


def _drop_db(admin: str | None, db: str) -> None:
    import psycopg

    assert admin is not None
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _head() -> str:
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True
    )
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def markdown(report: dict[str, Any]) -> str:
    old = report["against"]
    lines = [
        f"No-op cycles/s, `--parallel {report['parallel']}`, {report['cycles']} cycles a night, "
        f"median of {report['repeat']} rounds; this tree = {report['head']}; {report['machine']['summary']}.",
        "",
        f"| ledger | {old} | this tree | × {old} | floor | this tree / floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dialect, r in report["results"].items():
        m = r["median_cycles_per_s"]
        lines.append(
            f"| {dialect} | {m[old]:.0f} | {m['this tree']:.0f} | {m['this tree'] / m[old]:.2f} "
            f"| {m['floor']:.0f} | {m['this tree'] / m['floor'] * 100:.0f}% |"
        )
    demos = report.get("demo_wall_s") or {}
    if any(demos.values()):
        lines += [
            "",
            f"`overnight demo` wall time, median of {len(demos[old])} alternating runs: "
            f"{old} {statistics.median(demos[old]):.2f} s, "
            f"this tree {statistics.median(demos['this tree']):.2f} s "
            f"(runs: {old} {demos[old]}, this tree {demos['this tree']}).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="67f475d", help="the revision to compare with (default 67f475d)")
    parser.add_argument("--cycles", type=int, default=4000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ledger", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--demo", type=int, default=3, help="rounds of `overnight demo` per tree (default 3)")
    parser.add_argument("--pg-url", help="a PostgreSQL superuser URL (default: a throwaway cluster)")
    parser.add_argument("--json", type=Path, help="default: bench/results/compare-p<P>.json")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.parallel < 1 or args.repeat < 1 or args.demo < 0:
        parser.error("--cycles, --parallel and --repeat must be at least 1, --demo at least 0")
    report = bench(args)
    out = args.json or REPO / "bench" / "results" / f"compare-p{args.parallel}.json"
    table = markdown(report)
    save(out, report, table)
    print(table)


if __name__ == "__main__":
    main()
