"""Benchmark: how long the morning report takes for a long night. A measurement, not a test.

    python bench/report.py [--cycles 10000] [--parallel 8] [--repeat 3] [--json OUT]

Runs a real night of a fast scenario (``python -m overnight run``, SQLite ledger, in a
fresh temporary folder): two steps per cycle, a ``score`` and a ``weakness`` metric, a
product failure when the score is low, so every report section has data. Then it times,
in this process, ``build_report`` (the model from the ledger) and ``write_reports`` (the
model plus MORNING_REPORT.md, report.html, report.json and junit.xml), best and median of
``--repeat`` runs, and the ``overnight report`` command as a subprocess (interpreter start
included). Writes JSON (``--json``) and prints a Markdown table. Target: under 5 s for
10,000 cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

SCENARIO = """
async def cycle(ctx):
    async with ctx.step("prepare"):
        rnd = ctx.input.random()
    async with ctx.step("check"):
        score = round(rnd.uniform(4.0, 10.0), 1)
        ctx.metric("score", score)
        ctx.metric("weakness", rnd.choice(["thin evidence", "optimistic timeline", "vague budget"]))
        if score < 4.3:
            ctx.fail(f"score {score} below 4.3")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    from overnight.ledger import Ledger, queries
    from overnight.report import build_report, write_reports

    with tempfile.TemporaryDirectory(prefix="ovbench-report-") as tmp:
        folder = Path(tmp)
        (folder / "fast.py").write_text(SCENARIO)
        (folder / "overnight.toml").write_text('scenario = "fast:cycle"\n[agent]\nenabled = false\n')
        t0 = time.perf_counter()
        night = subprocess.run(
            [sys.executable, "-m", "overnight", "run", "--cycles", str(args.cycles), "--parallel",
             str(args.parallel), "--seed", "7"],
            cwd=folder, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        night_s = time.perf_counter() - t0
        if night.returncode not in (0, 1):
            sys.exit(f"bench/report.py: the night failed: {night.stderr[-1000:]}")
        ledger = Ledger(str(folder / "night_tests" / "overnight.db"))
        try:
            with ledger.read() as conn:
                last = queries.last_night(conn)
            assert last is not None
            night_id = last["id"]
            build, write = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                report = build_report(ledger, night_id)
                build.append(time.perf_counter() - t)
                t = time.perf_counter()
                write_reports(ledger, night_id)
                write.append(time.perf_counter() - t)
        finally:
            ledger.close()
        t = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, "-m", "overnight", "report", night_id],
            cwd=folder, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        cli_s = time.perf_counter() - t
        sizes = {
            p.name: p.stat().st_size for p in (folder / "night_tests" / night_id).iterdir() if p.is_file()
        }
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "cycles": args.cycles,
        "night_s": round(night_s, 2),
        "cycles_run": report["cycles_run"],
        "totals": report["totals"],
        "build_report_s": {"best": round(min(build), 3), "median": round(statistics.median(build), 3)},
        "write_reports_s": {"best": round(min(write), 3), "median": round(statistics.median(write), 3)},
        "overnight_report_cli_s": round(cli_s, 3),
        "cli_exit": cli.returncode,
        "file_bytes": sizes,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(f"Report of a {args.cycles}-cycle night ({result['totals']}), {result['machine']}:\n")
    print("| measure | seconds |")
    print("|---|---:|")
    b, w = result["build_report_s"], result["write_reports_s"]
    print(f"| build_report (model from the ledger), best / median | {b['best']:.3f} / {b['median']:.3f} |")
    print(f"| write_reports (model + 4 files), best / median | {w['best']:.3f} / {w['median']:.3f} |")
    print(f"| `overnight report` as a subprocess | {cli_s:.3f} |")
    print(
        "\nFiles: "
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items()) if k != "orchestrator.log")
    )


if __name__ == "__main__":
    main()
