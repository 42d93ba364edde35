"""Benchmark: what exporting a night's traces (OTLP/HTTP) costs. A measurement, not a test.

    python bench/export_cost.py [--cycles 2000] [--parallel 8] [--rounds 3]
                                [--scenario overnight.scenarios.noop:cycle] [--json OUT]

Side by side in one run: the same no-op night (``python -m overnight run --cycles N
--parallel P``, the real CLI, a fresh folder and SQLite ledger each time) without export
and with ``[export] otlp_endpoint`` pointing at a real OTLP/HTTP receiver on loopback
(``tests/support/otlp.py``, a process of its own, decoding every request's protobuf).
The two alternate, and their order flips every round, so a machine that gets busier or
quieter during the run weighs on both alike. For each night: cycles/s from the ledger
(cycles ÷ (last cycle's end − first cycle's start): the engine's steady rate), the
process's wall time (start, the final flush and the report included) and its CPU time
(user + system: what a busy machine's other work does not change); the receiver's CPU
per span, and the spans it decoded. The medians are compared.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from benchutil import machine, save

REPO = Path(__file__).resolve().parent.parent


class ReceiverProcess:
    """``python -m tests.support.otlp`` on a free loopback port, in a process of its own."""

    def __init__(self, workdir: Path) -> None:
        port_file = workdir / "receiver.port"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.otlp", str(port_file)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the OTLP receiver did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def cpu_s(self) -> float:
        """The CPU seconds it has used so far."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> int:
        """Stop it; the spans it decoded in all."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return int(out.strip() or 0)


def run_night(
    scenario: str, cycles: int, parallel: int, workdir: Path, endpoint: str | None
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="night-", dir=workdir))
    toml = f'scenario = "{scenario}"\n'
    if endpoint:
        toml += f'[export]\notlp_endpoint = "{endpoint}"\n'
    (folder / "overnight.toml").write_text(toml, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "COLUMNS"}
    with open(folder / "console.log", "wb") as console:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "overnight", "run", "--cycles", str(cycles), "--parallel", str(parallel)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            check=False,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = (folder / "console.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"night exited {proc.returncode}:\n{tail}")
    with sqlite3.connect(folder / "night_tests" / "overnight.db") as conn:
        first, last, done = conn.execute(
            "SELECT min(started_at), max(ended_at), count(*) FROM cycles WHERE status = 'done'"
        ).fetchone()
    console_text = (folder / "console.log").read_text(errors="replace")
    return {
        "export": bool(endpoint),
        "cycles_done": done,
        "cycles_per_s": round(done / (last - first), 1),
        "process_wall_s": round(wall, 3),
        "process_cpu_s": round(cpu, 3),
        "export_warnings": console_text.count("OTLP export to"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenario", default="overnight.scenarios.noop:cycle")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "export-cost-otlp.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="export-cost-") as tmp:
        work = Path(tmp)
        receiver = ReceiverProcess(work)
        nights: list[dict[str, Any]] = []
        try:
            for r in range(args.rounds):
                order = [None, receiver.url] if r % 2 == 0 else [receiver.url, None]
                for endpoint in order:
                    night = run_night(args.scenario, args.cycles, args.parallel, work, endpoint)
                    night["round"] = r + 1
                    nights.append(night)
                    print(
                        f"round {r + 1} {'otlp' if endpoint else 'none'}: {night['cycles_per_s']} cycles/s, "
                        f"{night['process_wall_s']} s wall, {night['process_cpu_s']} s CPU",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            receiver_cpu = receiver.cpu_s()
            spans = receiver.stop()

    def median(export: bool, key: str) -> float:
        return round(statistics.median(n[key] for n in nights if n["export"] == export), 3)

    keys = ("cycles_per_s", "process_wall_s", "process_cpu_s")
    rows = {
        label: {k: median(export, k) for k in keys} for label, export in (("none", False), ("otlp", True))
    }
    exported = args.rounds * args.cycles
    none, otlp = rows["none"], rows["otlp"]
    cost = {
        "cycles_per_s_change_pct": round((otlp["cycles_per_s"] / none["cycles_per_s"] - 1) * 100, 1),
        "wall_s_added": round(otlp["process_wall_s"] - none["process_wall_s"], 3),
        "cpu_s_added": round(otlp["process_cpu_s"] - none["process_cpu_s"], 3),
        "cpu_us_added_per_cycle": round((otlp["process_cpu_s"] - none["process_cpu_s"]) / args.cycles * 1e6),
        "cpu_pct_added": round((otlp["process_cpu_s"] / none["process_cpu_s"] - 1) * 100, 1),
        "receiver_cpu_us_per_span": round(receiver_cpu / spans * 1e6) if spans else None,
    }
    result = {
        "what": "no-op night without export and with OTLP/HTTP trace export to a loopback receiver",
        "scenario": args.scenario,
        "cycles": args.cycles,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "medians": rows,
        "cost": cost,
        "spans_received": spans,
        "spans_expected_at_least": exported,
        "nights": nights,
    }
    table = (
        f"`{args.scenario}`, {args.cycles} cycles, `--parallel {args.parallel}`, SQLite ledger, "
        f"median of {args.rounds} rounds (order alternating); {machine()['summary']}; "
        f"load average at the end {os.getloadavg()[0]:.1f}.\n\n"
        "| export | cycles/s (ledger) | process wall s | process CPU s |\n|---|---:|---:|---:|\n"
        + "".join(
            f"| {label} | {row['cycles_per_s']} | {row['process_wall_s']} | {row['process_cpu_s']} |\n"
            for label, row in rows.items()
        )
        + f"\nOTLP: {cost['cycles_per_s_change_pct']:+}% cycles/s, {cost['wall_s_added']:+} s wall time and "
        f"{cost['cpu_s_added']:+} s CPU ({cost['cpu_pct_added']:+}%, {cost['cpu_us_added_per_cycle']} µs a "
        f"cycle) a night; the receiver decoded {spans} spans ({exported} attempts exported) with "
        f"{cost['receiver_cpu_us_per_span']} µs of CPU a span (on the same cores).\n"
    )
    save(args.json, result, table)
    print(table)


if __name__ == "__main__":
    main()
