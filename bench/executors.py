"""Benchmark: the executors side by side in one run (issue 18). A measurement, not a test.

    cd bench && python executors.py [--noop 2000] [--cpu 200] [--cpu-ms 200] [--parallel 2]
                                    [--repeat 2] [--executors inline,process,ray] [--signals 40]
                                    [--json OUT]

For each round, in alternating order (a machine growing busier or quieter favours no
executor), one night per executor of:

- ``noop``: ``overnight.scenarios.noop:cycle`` × ``--noop`` cycles at ``--parallel``: the
  cost of an executor per cycle;
- ``cpu``: a sync cycle of about ``--cpu-ms`` of pure Python (calibrated on this machine
  first) × ``--cpu`` cycles at ``--parallel``: inline runs them in threads under one GIL;
  workers run them on every core.

Each night is ``python -m overnight run --executor E`` in a fresh folder. Cycles per second
are read from the ledger in the steady state: the cycles that ended after the first
``--parallel`` ones, over the time from that end to the last (the workers' start is
reported apart, as ``start_s``: from the night's first attempt to its first end).

``--signals``: the latency of a worker's classified fault reaching the repair agent (the
issue's "within 0.5 s, p95"): a night in this process with ``executor = "process"``
whose component fails on every cycle, timing each signal from the worker's clock at the
fault to the agent's receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchutil import log, machine, save

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

CPU_SCENARIO = """
LOOPS = {loops}

def cycle(ctx):
    with ctx.step("compute"):
        x = 0
        for i in range(LOOPS):
            x += i
    ctx.metric("x", x % 1000)
"""


def calibrate(ms: float) -> int:
    """Loop iterations that take about ``ms`` milliseconds here (best of 5)."""
    n = 1_000_000
    best = min(_time_loop(n) for _ in range(5))
    return int(n * (ms / 1000) / best)


def _time_loop(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def night(executor: str, workload: str, cycles: int, parallel: int, loops: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    if workload == "cpu":
        (folder / "cpu_cycle.py").write_text(CPU_SCENARIO.format(loops=loops))
        scenario = "cpu_cycle:cycle"
    else:
        scenario = "overnight.scenarios.noop:cycle"
    (folder / "overnight.toml").write_text(f'scenario = "{scenario}"\n[agent]\nenabled = false\n')
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "overnight", "run", "--executor", executor]
    cmd += ["--cycles", str(cycles), "--parallel", str(parallel), "--cycle-timeout", "600"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"executors.py: {executor}/{workload} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    with sqlite3.connect(folder / "night_tests" / "overnight.db") as conn:
        rows = conn.execute(
            "SELECT started_at, ended_at FROM cycles WHERE status = 'done' ORDER BY ended_at"
        ).fetchall()
        first = conn.execute("SELECT min(started_at) FROM attempts").fetchone()[0]
    if len(rows) != cycles:
        sys.exit(f"executors.py: {executor}/{workload} finished {len(rows)} of {cycles} cycles")
    warm_end = rows[parallel - 1][1]
    steady = (len(rows) - parallel) / (rows[-1][1] - warm_end)
    return {
        "cycles_per_s": round(steady, 2),
        "start_s": round(rows[0][1] - first, 3),
        "process_s": round(wall, 2),
    }


async def _signal_night(count: int, folder: Path) -> list[float]:
    """Latencies (s) of worker faults reaching the agent, in a night of ``count`` cycles."""
    sys.path.insert(0, str(SRC))
    from overnight.agent import RepairAgent
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.plan import Plan
    from overnight.engine.progress import LogProgress
    from overnight.config import load_config
    from overnight.ledger import Ledger

    folder.mkdir(parents=True)
    (folder / "flaky_dep.py").write_text(
        "from overnight.components import Component, ProbeResult\n"
        "class Dep(Component):\n"
        "    type_name = 'dep'\n"
        "    @property\n"
        "    def handle(self):\n"
        "        return self\n"
        "    async def probe(self):\n"
        "        return ProbeResult(True, 0.001, 'up')\n"
        "    def classify(self, exc):\n"
        "        return 'unavailable' if isinstance(exc, ConnectionError) else None\n"
        "    async def work(self):\n"
        "        async def fail():\n"
        "            raise ConnectionError('refused')\n"
        "        await self.call('work', fail)\n"
        "async def cycle(ctx):\n"
        "    await ctx.components['dep'].work()\n"
    )
    (folder / "overnight.toml").write_text(
        'scenario = "flaky_dep:cycle"\n[run]\nretry_attempts = 0\n'
        "[agent]\nprobe_period = 0.2\ncooldown = 0.01\nmax_backoff = 0.05\n"
        '[components.dep]\ntype = "flaky_dep:Dep"\ncritical = false\n'
    )
    seen: list[float] = []
    original = RepairAgent.remote_signal

    def timed(self: Any, component: str, kind: str, details: dict[str, Any], ts: float) -> None:
        seen.append(time.time() - ts)
        original(self, component, kind, details, ts)

    RepairAgent.remote_signal = timed  # type: ignore[method-assign]
    loaded = load_config(folder / "overnight.toml")
    plan = Plan.from_config(loaded, folder / "night_tests", {"cycles": count, "parallel": 2, "executor": "process", "seed": 1})
    ledger = Ledger(str(folder / "night_tests" / "overnight.db"))
    try:
        await Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False).run()
    finally:
        ledger.close()
        RepairAgent.remote_signal = original  # type: ignore[method-assign]
    return seen


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--noop", type=int, default=2000)
    ap.add_argument("--cpu", type=int, default=200)
    ap.add_argument("--cpu-ms", type=float, default=200.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--executors", default="inline,process,ray")
    ap.add_argument("--signals", type=int, default=40)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "executors.json")
    args = ap.parse_args()
    executors = args.executors.split(",")
    loops = calibrate(args.cpu_ms)
    log(f"calibrated: {loops:,} loop iterations ≈ {args.cpu_ms:g} ms")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {e: [] for e in executors} for w in ("noop", "cpu")}
    with tempfile.TemporaryDirectory(prefix="overnight-executors-") as tmp:
        for r in range(args.repeat):
            order = executors if r % 2 == 0 else list(reversed(executors))
            for workload, cycles in (("noop", args.noop), ("cpu", args.cpu)):
                for e in order:
                    res = night(e, workload, cycles, args.parallel, loops, Path(tmp) / f"{workload}-{e}-{r}")
                    log(f"round {r + 1} {workload} {e}: {res}")
                    runs[workload][e].append(res)
        latencies = asyncio.run(_signal_night(args.signals, Path(tmp) / "signals")) if args.signals else []
    table: dict[str, dict[str, float]] = {
        w: {e: statistics.median(x["cycles_per_s"] for x in runs[w][e]) for e in executors} for w in runs
    }
    result = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpu_loops": loops,
        "runs": runs,
        "median_cycles_per_s": table,
        "signal_latency_s": {
            "n": len(latencies),
            "p50": round(pct(latencies, 0.5), 4) if latencies else None,
            "p95": round(pct(latencies, 0.95), 4) if latencies else None,
            "max": round(max(latencies), 4) if latencies else None,
        },
    }
    lines = [
        f"Executors side by side, {args.repeat} rounds in alternating order, --parallel {args.parallel}, "
        f"{result['when']} ({os.cpu_count()} CPUs). Steady-state cycles/s, median of the rounds.",
        "",
        "| workload | " + " | ".join(executors) + " | " + " | ".join(f"{e} ÷ inline" for e in executors[1:]) + " |",
        "|---|" + "---:|" * (2 * len(executors) - 1),
    ]
    for w, cycles in (("noop", args.noop), ("cpu", args.cpu)):
        row = table[w]
        ratios = [f"×{row[e] / row['inline']:.2f}" if "inline" in row and row["inline"] else "–" for e in executors[1:]]
        label = f"{w} × {cycles}" + (f" (~{args.cpu_ms:g} ms each)" if w == "cpu" else "")
        lines.append(f"| {label} | " + " | ".join(f"{row[e]:,.1f}" for e in executors) + " | " + " | ".join(ratios) + " |")
    if "ray" in table["cpu"] and "process" in table["cpu"]:
        lines += ["", f"Ray ÷ process (cpu): ×{table['cpu']['ray'] / table['cpu']['process']:.2f}"]
    lat = result["signal_latency_s"]
    if lat["n"]:
        lines += ["", f"A worker's classified fault to the repair agent: p50 {lat['p50'] * 1000:.1f} ms, "
                  f"p95 {lat['p95'] * 1000:.1f} ms, max {lat['max'] * 1000:.1f} ms over {lat['n']} signals."]
    save(args.json, result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
