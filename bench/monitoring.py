"""Benchmark: what the repair agent's monitoring costs. A measurement, not a test.

    python bench/monitoring.py [--minutes 10] [--fault-minutes 2] [--json OUT] [--keep]

Six components that probe for real — ``db`` (database, SQLite in the night dir), ``llm``
(gigachat, ``sandbox = true``), ``search`` (websearch, ``sandbox = true``), ``vectors``
(vectorstore, Qdrant local mode), ``system`` and ``db2`` (a second database) — at the
default probe period (``AgentConfig.probe_period``, read from overnight itself), beside a
night whose only cycle sleeps for ``--minutes``, so whatever CPU the process spends is the
night's idle cost plus the agent's. Each night is ``python -m overnight run`` as a
subprocess in a fresh temporary folder (SQLite ledger there).

1. **Monitoring cost**: the same night with ``[agent] enabled = true`` and with
   ``enabled = false``. The overnight process's CPU time (user + sys, all its threads:
   psutil ``cpu_times()``, sampled every second) over the window in which the cycle ran
   (its attempt's ``started_at`` … ``ended_at`` in the ledger: start-up, imports and the
   report are outside it). (CPU on − CPU off) ÷ window = the share of one core used by
   monitoring. The sandbox servers the ``llm`` and ``search`` probes talk to run as threads
   of the same process, so the probes' cost includes the servers' side of each request.
   Target: < 1 % of one core.
2. **Event-loop lag while probing**: the agent samples the loop's lag every 0.1 s and
   records a ``loop_lag`` event (p99, max, samples) when the night ends; read from the
   ledger. Target: p99 < 50 ms.
3. **While probing and repairing**: a ``--fault-minutes`` night of the same six
   components, still at the default probe period, with faults injected so that the agent
   has incidents to repair: ``llm:rate_limited@every=20s,retry_after=2s`` and
   ``vectors:unavailable@every=30s``. Its loop lag, and the incidents and repairs it made.

Writes JSON (``--json``, default ``bench/results/monitoring-<M>min.json``, with a ``.md``
of the table beside it) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from benchutil import save

import overnight
from overnight.config import AgentConfig

PROBE_PERIOD = AgentConfig.model_fields["probe_period"].default
CPU_TARGET_PCT = 1.0
LAG_TARGET_MS = 50.0
FAULTS = ("llm:rate_limited@every=20s,retry_after=2s", "vectors:unavailable@every=30s")

SCENARIO = """
import asyncio


async def cycle(ctx):
    # Nothing but waiting: the process's CPU is the idle night's plus the agent's.
    async with ctx.step("idle"):
        await asyncio.sleep(ctx.settings["idle_s"])
"""

CONFIG = """
scenario = "idle:cycle"

[run]
cycles = 1
cycle_timeout = {timeout}

[settings]
idle_s = {idle}

[agent]
enabled = {enabled}

[components.db]
type = "database"

[components.llm]
type = "llm"
provider = "gigachat"
sandbox = true

[components.search]
type = "websearch"
sandbox = true

[components.vectors]
type = "vectorstore"

[components.system]
type = "system"

[components.db2]
type = "database"
"""


class Sampler(threading.Thread):
    """Samples the process's CPU times (all threads, and the main thread alone) and RSS."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def sample(self) -> None:
        try:
            with self.proc.oneshot():
                t = time.time()
                cpu = self.proc.cpu_times()
                main = next((th for th in self.proc.threads() if th.id == self.proc.pid), None)
                rss = self.proc.memory_info().rss
                threads = self.proc.num_threads()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return
        self.samples.append(
            {
                "t": t,
                "cpu": cpu.user + cpu.system,
                "main": (main.user_time + main.system_time) if main else float("nan"),
                "rss": rss,
                "threads": threads,
            }
        )

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def ledger_ro(folder: Path) -> sqlite3.Connection:
    db = folder / "night_tests" / "overnight.db"
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def run_night(
    workdir: Path, label: str, seconds: float, enabled: bool, inject: tuple[str, ...]
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
    (folder / "idle.py").write_text(SCENARIO, encoding="utf-8")
    (folder / "overnight.toml").write_text(
        CONFIG.format(timeout=seconds + 600, idle=seconds, enabled=str(enabled).lower()), encoding="utf-8"
    )
    cmd = [sys.executable, "-m", "overnight", "run", "--seed", "1"]
    for spec in inject:
        cmd += ["--inject", spec]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with open(folder / "console.log", "wb") as console:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
        )
        sampler = Sampler(proc.pid, 1.0)
        sampler.start()
        # wait4, not Popen.wait: its rusage is the whole process's CPU, start-up and report included.
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    if proc.returncode not in (0, 1):
        tail = (folder / "console.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench/monitoring.py: the {label} night exited {proc.returncode}:\n{tail}")

    with ledger_ro(folder) as conn:
        night_id, status_ = conn.execute(
            "SELECT id, status FROM nights ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        start, end, verdict = conn.execute(
            "SELECT started_at, ended_at, verdict FROM attempts WHERE night_id = ? AND cycle = 1 "
            "ORDER BY attempt DESC LIMIT 1",
            (night_id,),
        ).fetchone()
        probes = dict(
            conn.execute(
                "SELECT component, count(*) FROM probes WHERE night_id = ? AND ts BETWEEN ? AND ? "
                "GROUP BY component",
                (night_id, start, end),
            ).fetchall()
        )
        probes_all, probes_unhealthy = conn.execute(
            "SELECT count(*), coalesce(sum(NOT healthy), 0) FROM probes WHERE night_id = ?", (night_id,)
        ).fetchone()
        lag_row = conn.execute(
            "SELECT data FROM events WHERE night_id = ? AND kind = 'loop_lag' ORDER BY id DESC LIMIT 1",
            (night_id,),
        ).fetchone()
        incidents = [
            {"component": c, "fault_kind": k, "trigger": tr, "state": s}
            for c, k, tr, s in conn.execute(
                "SELECT component, fault_kind, trigger, state FROM incidents WHERE night_id = ? ORDER BY id",
                (night_id,),
            )
        ]
        repairs = [
            {"component": c, "strategy": st, "result": r, "verified": bool(v), "duration_s": round(d or 0, 3)}
            for c, st, r, v, d in conn.execute(
                "SELECT component, strategy, result, verified, duration_s FROM repairs "
                "WHERE night_id = ? ORDER BY id",
                (night_id,),
            )
        ]
        events = dict(
            conn.execute(
                "SELECT kind, count(*) FROM events WHERE night_id = ? AND kind IN "
                "('fault_injected', 'fault_skipped', 'fault_failed', 'escalated', 'flapping', "
                "'agent_restarted') GROUP BY kind",
                (night_id,),
            ).fetchall()
        )

    # The window: the samples inside the cycle's attempt (the night's idle time).
    inside = [s for s in sampler.samples if start <= s["t"] <= end]
    if len(inside) < 2:
        raise SystemExit(f"bench/monitoring.py: too few CPU samples inside the {label} night's cycle")
    a, b = inside[0], inside[-1]
    window = b["t"] - a["t"]
    cpu = b["cpu"] - a["cpu"]
    main = b["main"] - a["main"]
    lag = json.loads(lag_row[0]) if lag_row else None
    return {
        "label": label,
        "agent_enabled": enabled,
        "inject": list(inject),
        "night_id": night_id,
        "night_status": status_,
        "verdict": verdict,
        "exit_code": proc.returncode,
        "process_wall_s": round(wall, 2),
        "process_cpu_s": round(rusage.ru_utime + rusage.ru_stime, 3),
        "process_max_rss_mb": round(rusage.ru_maxrss / 1024, 1),
        "window_s": round(window, 2),
        "window_cpu_s": round(cpu, 3),
        "window_cpu_main_thread_s": round(main, 3),
        "window_cpu_other_threads_s": round(cpu - main, 3),
        "window_cpu_pct_of_one_core": round(cpu / window * 100, 3),
        "threads_at_end_of_window": b["threads"],
        "rss_mb_start_end_of_window": [round(a["rss"] / 2**20, 1), round(b["rss"] / 2**20, 1)],
        "probes_in_window": probes,
        "probes_total": probes_all,
        "probes_unhealthy": probes_unhealthy,
        "loop_lag": (
            {
                "p99_ms": round(lag["p99_s"] * 1000, 2),
                "max_ms": round(lag["max_s"] * 1000, 2),
                "samples": lag["samples"],
            }
            if lag
            else None
        ),
        "incidents": incidents,
        "repairs": repairs,
        "events": events,
        "folder": str(folder),
    }


def bench(minutes: float, fault_minutes: float, keep: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ovbench-monitoring-"))
    try:
        on = run_night(workdir, "agent-on", minutes * 60, True, ())
        off = run_night(workdir, "agent-off", minutes * 60, False, ())
        faults = run_night(workdir, "faults", fault_minutes * 60, True, FAULTS) if fault_minutes > 0 else None
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    share = on["window_cpu_pct_of_one_core"] - off["window_cpu_pct_of_one_core"]
    probes = sum(on["probes_in_window"].values())
    extra_cpu = on["window_cpu_s"] - off["window_cpu_s"] * on["window_s"] / off["window_s"]
    lifetime = (on["process_cpu_s"] - off["process_cpu_s"]) / on["process_wall_s"] * 100
    lag = on["loop_lag"] or {}
    faults_lag = (faults or {}).get("loop_lag") or {}
    return {
        "benchmark": "overnight-monitoring",
        "version": 1,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "overnight": overnight.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "minutes": minutes,
        "fault_minutes": fault_minutes,
        "probe_period_s": PROBE_PERIOD,
        "components": ["db", "llm", "search", "vectors", "system", "db2"],
        "nights": {"agent_on": on, "agent_off": off, "faults": faults},
        "monitoring": {
            "pct_of_one_core": round(share, 3),
            "pct_of_one_core_whole_process": round(lifetime, 3),
            "cpu_s": round(extra_cpu, 3),
            "probes": probes,
            "cpu_ms_per_probe": round(extra_cpu / probes * 1000, 2) if probes else None,
            "target_pct": CPU_TARGET_PCT,
            "met": share < CPU_TARGET_PCT,
        },
        "loop_lag": {
            "p99_ms": lag.get("p99_ms"),
            "max_ms": lag.get("max_ms"),
            "target_p99_ms": LAG_TARGET_MS,
            "met": lag.get("p99_ms") is not None and lag["p99_ms"] < LAG_TARGET_MS,
            "faults_p99_ms": faults_lag.get("p99_ms"),
            "faults_met": faults_lag.get("p99_ms") is not None and faults_lag["p99_ms"] < LAG_TARGET_MS,
        },
    }


def markdown(report: dict[str, Any]) -> str:
    n = report["nights"]
    lines = [
        f"Six components, probe period {report['probe_period_s']:g} s (the default); "
        f"{report['cpu_count']} CPUs, Python {report['python']}.",
        "",
        "| night | agent | cycle window s | CPU s (user+sys) | main thread s | other threads s "
        "| % of one core | probes | loop lag p99 ms | max ms | incidents | repairs (verified) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in (
        ("agent_on", f"idle {report['minutes']:g} min"),
        ("agent_off", f"idle {report['minutes']:g} min"),
        ("faults", f"faults {report['fault_minutes']:g} min"),
    ):
        r = n.get(key)
        if r is None:
            continue
        lag = r["loop_lag"] or {}
        verified = sum(x["verified"] for x in r["repairs"])
        lines.append(
            f"| {name} | {'on' if r['agent_enabled'] else 'off'} | {r['window_s']} | {r['window_cpu_s']} "
            f"| {r['window_cpu_main_thread_s']} | {r['window_cpu_other_threads_s']} "
            f"| {r['window_cpu_pct_of_one_core']:.2f} | {sum(r['probes_in_window'].values())} "
            f"| {lag.get('p99_ms', '–')} | {lag.get('max_ms', '–')} | {len(r['incidents'])} "
            f"| {len(r['repairs'])} ({verified}) |"
        )
    m, lag = report["monitoring"], report["loop_lag"]
    lines += [
        "",
        "| measure | result | target | |",
        "|---|---:|---:|---|",
        f"| monitoring, % of one core (on − off, cycle window) | {m['pct_of_one_core']:.3f} % "
        f"| < {m['target_pct']:g} % | {'met' if m['met'] else '**MISSED**'} |",
        f"| monitoring, % of one core (whole process lifetimes) | {m['pct_of_one_core_whole_process']:.3f} % "
        "| | start-up and report included |",
        f"| CPU per probe | {m['cpu_ms_per_probe']} ms | | {m['probes']} probes in the window |",
        f"| loop lag p99 while probing | {lag['p99_ms']} ms | < {lag['target_p99_ms']:g} ms "
        f"| {'met' if lag['met'] else '**MISSED**'} |",
    ]
    f = n.get("faults")
    if f is not None:
        flag = "met" if lag["faults_met"] else "**MISSED**"
        lines.append(
            f"| loop lag p99 while probing and repairing | {lag['faults_p99_ms']} ms "
            f"| < {lag['target_p99_ms']:g} ms | {flag} |"
        )
        strategies: dict[str, int] = {}
        for r in f["repairs"]:
            key = f"{r['component']} {r['strategy']} {r['result']}"
            strategies[key] = strategies.get(key, 0) + 1
        lines += [
            "",
            f"Fault night: {f['events'].get('fault_injected', 0)} faults injected "
            f"({', '.join(f'`{s}`' for s in f['inject'])}), {len(f['incidents'])} incidents "
            f"({', '.join(sorted({i['state'] for i in f['incidents']})) or 'none'}), "
            f"{len(f['repairs'])} repairs: "
            + (", ".join(f"{k} ×{v}" for k, v in sorted(strategies.items())) or "none")
            + f"; escalations {f['events'].get('escalated', 0)}, flapping {f['events'].get('flapping', 0)}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="idle night length (default 10)")
    parser.add_argument(
        "--fault-minutes", type=float, default=2.0, help="the night with injected faults (default 2; 0: skip)"
    )
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/monitoring-<M>min.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.fault_minutes < 0:
        parser.error("--minutes must be > 0 and --fault-minutes >= 0")

    report = bench(args.minutes, args.fault_minutes, args.keep)
    out = args.json or (Path(__file__).resolve().parent / "results" / f"monitoring-{args.minutes:g}min.json")
    table = markdown(report)
    save(out, report, table)
    print(table)
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
