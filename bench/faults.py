"""Benchmark: time to detect and time to repair per fault kind, and diagnosis accuracy,
from real nights of the grant pipeline with the example fault plan. A measurement, not a test.

    python bench/faults.py [--nights 1] [--cycles 100] [--plan PLAN] [--config CONFIG]
                           [--pg-url URL] [--parallel 1] [--seed 11] [--json OUT]

Each night is ``python -m overnight run --config CONFIG --faults PLAN`` as a subprocess,
in a fresh temporary folder, against PostgreSQL (``--pg-url``, else ``$OVERNIGHT_PG_URL``,
else a throwaway cluster made for the run with ``pg_createcluster`` on a free port, a
fresh database per night, dropped at the end; it needs root for ``su postgres``). The defaults are the example
plan and config of examples/grant_pipeline: a database connection lost at cycle 23,
GigaChat quota exceeded at cycle 45 and web search timing out at cycle 78, on 100 cycles.

From each night's ledger (``overnight.faults.fault_timeline``): per injected fault kind,
time to detect (injection → detection), time to diagnose, time to repair (detection →
verified healthy by a probe), p50/p95 over all nights; the diagnosed kind against the
injected one; the night's verdicts. Waits the server asked for (Retry-After) are part of
the repair time and shown apart. Writes JSON (``--json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchutil import machine, save, throwaway_pg_admin_url

from overnight.faults import fault_timeline
from overnight.faults.timeline import summarise
from overnight.ledger import Ledger, queries
from overnight.numbers import percentile

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "grant_pipeline"


def _sh(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def local_pg_admin_url() -> str:
    """A superuser URL of a throwaway cluster made for this run and dropped at exit (never
    the machine's own clusters); needs root for ``su postgres``."""
    return throwaway_pg_admin_url()


def fresh_database(admin_url: str) -> str:
    import psycopg

    db = f"ovbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    return admin_url.rsplit("/", 1)[0] + f"/{db}"


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    db = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def one_night(args: argparse.Namespace, pg_url: str, folder: Path) -> dict[str, Any]:
    project = folder / "project"
    project.mkdir(parents=True)
    for name in ("pipeline.py", "data"):
        (project / name).symlink_to(EXAMPLE / name)
    config = project / "overnight.toml"
    config.write_text(Path(args.config).read_text())
    cmd = [
        sys.executable, "-m", "overnight", "run", "--config", str(config), "--faults", str(args.plan),
        "--cycles", str(args.cycles), "--parallel", str(args.parallel), "--seed", str(args.seed),
        "--night-dir", str(folder / "nights"),
    ]  # fmt: skip
    env = {**os.environ, "OVERNIGHT_PG_URL": pg_url}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ledger = Ledger(str(folder / "nights" / "overnight.db"))
    try:
        with ledger.read() as conn:
            night = queries.last_night(conn)
            if night is None:
                sys.exit(f"bench/faults.py: the night did not start: {res.stderr.strip()[-500:]}")
            timeline = fault_timeline(conn, night["id"])
            cycles = queries.cycles_of(conn, night["id"])
    finally:
        ledger.close()
    verdicts: dict[str, int] = {}
    for c in cycles:
        verdicts[c["verdict"] or "unfinished"] = verdicts.get(c["verdict"] or "unfinished", 0) + 1
    return {
        "night_id": night["id"],
        "exit_code": res.returncode,
        "wall_s": round(wall, 2),
        "status": night["status"],
        "verdicts": verdicts,
        "retried_cycles": sum(1 for c in cycles if c["attempts"] > 1),
        "timeline": timeline,
    }


def aggregate(nights: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for n in nights for r in n["timeline"]["injections"]]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        kinds.setdefault(r["injected_kind"], []).append(r)
    per_kind = {}
    for kind, rs in sorted(kinds.items()):
        ttd = [r["time_to_detect_s"] for r in rs if r["time_to_detect_s"] is not None]
        ttdiag = [r["time_to_diagnose_s"] for r in rs if r["time_to_diagnose_s"] is not None]
        ttr = [r["time_to_healthy_s"] for r in rs if r["time_to_healthy_s"] is not None]
        waits = [
            sum(x["duration_s"] or 0 for x in r["repairs"] if x["strategy"] == "wait_retry_after") for r in rs
        ]
        per_kind[kind] = {
            "injected": len(rs),
            "detected": sum(r["detected"] for r in rs),
            "diagnosed_correctly": sum(bool(r["diagnosis_correct"]) for r in rs),
            "diagnosed_as": sorted({r["diagnosed_kind"] for r in rs if r["diagnosed_kind"]}),
            "verified": sum(r["verified_at"] is not None for r in rs),
            "states": sorted({r["incident_state"] for r in rs if r["incident_state"]}),
            "repairs": sorted({x["strategy"] for r in rs for x in r["repairs"]}),
            "cycles_hit": sum(len(r["cycles_hit"]) for r in rs),
            "time_to_detect_s": _pct(ttd),
            "time_to_diagnose_s": _pct(ttdiag),
            "time_to_repair_s": _pct(ttr),
            "retry_after_wait_s": _pct([w for w in waits if w]),
        }
    overall = summarise(rows)
    return {"per_kind": per_kind, "diagnosis_accuracy": overall["diagnosis_accuracy"], "overall": overall}


def _pct(values: list[float]) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"n": len(values), "p50": r(percentile(values, 50)), "p95": r(percentile(values, 95))}


def markdown(result: dict[str, Any]) -> str:
    def f(d: dict[str, Any]) -> str:
        return "—" if d["p50"] is None else f"{d['p50']:.3f} / {d['p95']:.3f}"

    lines = [
        f"Fault plan `{result['plan']}`, {result['cycles']} cycles, {len(result['nights'])} night(s), "
        f"parallel {result['parallel']} — {result['machine']}",
        "",
        "| fault kind | injected | detected | diagnosed as | TTD p50 / p95 s | diagnose p50 / p95 s "
        "| TTR p50 / p95 s | of which Retry-After wait s | incident | repairs | cycles hit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, k in result["summary"]["per_kind"].items():
        lines.append(
            f"| {kind} | {k['injected']} | {k['detected']} | {', '.join(k['diagnosed_as']) or '—'} "
            f"({k['diagnosed_correctly']}/{k['detected']} correct) | {f(k['time_to_detect_s'])} "
            f"| {f(k['time_to_diagnose_s'])} | {f(k['time_to_repair_s'])} | {f(k['retry_after_wait_s'])} "
            f"| {', '.join(k['states'])} | {', '.join(k['repairs']) or 'none needed'} | {k['cycles_hit']} |"
        )
    acc = result["summary"]["diagnosis_accuracy"]
    lines.append("")
    lines.append(f"Diagnosis accuracy: {'—' if acc is None else f'{acc:.0%}'} of detected faults.")
    for n in result["nights"]:
        lines.append(
            f"Night {n['night_id']}: {n['status']}, exit {n['exit_code']}, {n['wall_s']} s, "
            f"verdicts {n['verdicts']}, {n['retried_cycles']} cycle(s) retried."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=1, help="nights to run (default 1)")
    parser.add_argument("--cycles", type=int, default=100, help="cycles per night (default 100)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--plan", default=str(EXAMPLE / "faults.toml"))
    parser.add_argument("--config", default=str(EXAMPLE / "overnight.faults.toml"))
    parser.add_argument("--pg-url", default=os.environ.get("OVERNIGHT_PG_URL"))
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = parser.parse_args()
    admin = args.pg_url or local_pg_admin_url()
    nights = []
    for i in range(args.nights):
        url = fresh_database(admin) if not args.pg_url else args.pg_url
        folder = Path(tempfile.mkdtemp(prefix="ovbench-faults-"))
        try:
            print(f"night {i + 1}/{args.nights}: {args.cycles} cycles ...", file=sys.stderr, flush=True)
            nights.append(one_night(args, url, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if not args.pg_url:
                drop_database(admin, url)
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine()["summary"],
        "plan": os.path.relpath(args.plan, REPO),
        "cycles": args.cycles,
        "parallel": args.parallel,
        "nights": nights,
        "summary": aggregate(nights),
    }
    table = markdown(result)
    if args.json_out:
        save(Path(args.json_out), result, table)
    print(table)


if __name__ == "__main__":
    main()
