"""Benchmark: what ``--metrics-port`` costs a night, side by side with no metrics in one
run. A measurement, not a test.

    python bench/metrics_cost.py [--cycles 2000] [--parallel 1] [--repeat 5]
                                 [--scrape-every 1.0] [--json OUT]

Each round runs two real nights of ``overnight.scenarios.noop:cycle`` (``python -m
overnight run --cycles N --parallel P`` in a fresh folder with its own SQLite ledger), one
without metrics and one with ``--metrics-port 0``, in alternating order (so that a
machine growing busier or quieter during the run favours neither). While the second kind
runs, a thread of this script reads the URL the night printed and scrapes it every
``--scrape-every`` seconds with httpx, as Prometheus would (each scrape is parsed, so a
broken endpoint stops the benchmark). Per night:

- *cycles/s (ledger)*: cycles ÷ (last cycle's ``ended_at`` − first cycle's
  ``started_at``), read from the ledger: the engine's steady rate.
- *wall s*: the whole process (interpreter start, imports, binding the port, the
  report).
- *CPU s*: user + system CPU of the process (``getrusage`` of the waited child).

The table gives the medians and the with/without ratios. On a shared machine the nights'
rates swing more than the endpoint costs, so the script also times its two pieces alone,
in this process: one refresh of the snapshot (the loop's work, ``TICK_S`` apart) with 8
attempts running and 6 monitored components, and one scrape's exposition
(``generate_latest``, the server thread's work).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from benchutil import log, machine, save
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
SCENARIO = "overnight.scenarios.noop:cycle"
SAID = "overnight: metrics at "
# The night's last log line (``Orchestrator._close_night``); the endpoint closes after it.
ENDED = re.compile(r"INFO night \S+ (completed|stopped|interrupted|aborted): ")


class Scraper(threading.Thread):
    """Waits for the night to say its URL on stderr, then scrapes it every ``every`` s
    until told to stop."""

    def __init__(self, stderr_file: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.stderr_file = stderr_file
        self.every = every
        self.halt = threading.Event()
        self.scrapes = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.last_cycles = 0.0

    def _url(self) -> str | None:
        while not self.halt.is_set():
            text = self.stderr_file.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                if line.startswith(SAID):
                    return line.removeprefix(SAID).strip()
            self.halt.wait(0.01)
        return None

    def _night_ended(self) -> bool:
        """The night logged its end: it closes the endpoint right after."""
        text = self.stderr_file.read_text(encoding="utf-8", errors="replace")
        return ENDED.search(text) is not None

    def run(self) -> None:
        url = self._url()
        if url is None:
            return
        with httpx.Client(timeout=5) as client:
            while not self.halt.is_set():
                t0 = time.perf_counter()
                try:
                    response = client.get(url)
                    response.raise_for_status()
                    families = {f.name: f for f in text_string_to_metric_families(response.text)}
                    cycles = families.get("overnight_cycles")
                    if cycles is not None:
                        self.last_cycles = sum(s.value for s in cycles.samples if s.name.endswith("_total"))
                    self.scrapes += 1
                    self.latencies.append(time.perf_counter() - t0)
                except httpx.TransportError as exc:
                    if self._night_ended():
                        return  # the night is closing its endpoint: this scrape met the close
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                except Exception as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.halt.wait(self.every)


def night(cycles: int, parallel: int, metrics: bool, every: float, folder: Path) -> dict[str, Any]:
    """One real night of the no-op scenario; its rate from the ledger, wall and CPU time."""
    folder.mkdir(parents=True)
    (folder / "overnight.toml").write_text(f'scenario = "{SCENARIO}"\n', encoding="utf-8")
    args = ["run", "--cycles", str(cycles), "--parallel", str(parallel)]
    if metrics:
        args += ["--metrics-port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(REPO / "src")}
    stderr_file = folder / "stderr.txt"
    scraper = Scraper(stderr_file, every) if metrics else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with stderr_file.open("w", encoding="utf-8") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "overnight", *args],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        if scraper is not None:
            scraper.start()
        code = proc.wait(timeout=600)
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if scraper is not None:
        scraper.halt.set()
        scraper.join(10)
    if code != 0:
        tail = stderr_file.read_text(encoding="utf-8", errors="replace")[-2000:]
        sys.exit(f"metrics_cost.py: overnight {' '.join(args)} exited {code}:\n{tail}")
    query = "SELECT min(started_at), max(ended_at), count(*) FROM cycles WHERE status = 'done'"
    with sqlite3.connect(folder / "night_tests" / "overnight.db") as conn:
        first, last, done = conn.execute(query).fetchone()
    if done != cycles:
        sys.exit(f"metrics_cost.py: a night finished {done} of {cycles} cycles")
    out: dict[str, Any] = {
        "cycles_per_s": round(done / (last - first), 1),
        "wall_s": round(wall, 3),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
    }
    if scraper is not None:
        if scraper.failures or not scraper.scrapes:
            sys.exit(f"metrics_cost.py: scraping failed: {scraper.failures or 'no scrape answered'}")
        out["scrapes"] = scraper.scrapes
        out["scrape_ms_max"] = round(max(scraper.latencies) * 1000, 2)
        out["cycles_seen_by_last_scrape"] = scraper.last_cycles
    return out


def pieces(n: int = 20_000) -> dict[str, float]:
    """Microseconds of one snapshot refresh and of one scrape's exposition, alone (this
    tree's, as the nights run it)."""
    sys.path.insert(0, str(REPO / "src"))
    from collections import Counter
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from overnight.components import ProbeResult
    from overnight.engine.gate import Gate
    from overnight.engine.metrics import TICK_S, MetricsEndpoint, NightView
    from overnight.engine.progress import ProgressSink

    sink = ProgressSink()
    sink.night_started("bench", 2000, 8, Counter(passed=900, failed=40, infra_error=3), False)
    for cycle in range(8):
        sink.attempt_started(1000 + cycle, 1)
    names = ("db", "llm", "search", "vectors", "system", "db2")
    monitors = {name: SimpleNamespace(last_probe=ProbeResult(True, 0.01), incident=None) for name in names}
    agent = SimpleNamespace(
        monitors=monitors, repair_counts=Counter({("llm", "wait_retry_after", "verified"): 3})
    )
    endpoint = MetricsEndpoint("127.0.0.1", 0)
    try:
        endpoint.watch(NightView("bench", 2000, Gate(), sink, names, agent, None, time.time))  # type: ignore[arg-type]
        endpoint._passed_ref = time.time()
        t0 = time.perf_counter()
        for _ in range(n):
            endpoint._refresh(0.0)
        refresh = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n // 10):
            generate_latest(endpoint.registry)
        scrape = (time.perf_counter() - t0) / (n // 10)
    finally:
        endpoint.close()
    # Closing waits for serve_forever's next poll (every 0.5 s): at most that, once a night.
    closes = []
    for _ in range(10):
        endpoint = MetricsEndpoint("127.0.0.1", 0)
        time.sleep(random.uniform(0.0, 0.5))  # any moment of the server's poll
        t0 = time.perf_counter()
        endpoint.close()
        closes.append(time.perf_counter() - t0)
    # Importing the endpoint (prometheus-client, http.server, wsgiref) in a process that
    # has imported the CLI already, as `run --metrics-port` does: once a night.
    code = (
        "import time, overnight.cli; t = time.perf_counter(); import overnight.engine.metrics; "
        "print(time.perf_counter() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    imports = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    return {
        "refresh_us": round(refresh * 1e6, 1),
        "refresh_cpu_share_pct": round(refresh / TICK_S * 100, 4),
        "scrape_us": round(scrape * 1e6, 1),
        "close_ms_median": round(statistics.median(closes) * 1000, 1),
        "close_ms_max": round(max(closes) * 1000, 1),
        "import_ms_median": round(statistics.median(imports) * 1000, 1),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overnight-metrics-cost-") as tmp:
        base = Path(tmp)
        for round_no in range(args.repeat):
            order = ["without", "with"] if round_no % 2 == 0 else ["with", "without"]
            for label in order:
                result = night(
                    args.cycles,
                    args.parallel,
                    label == "with",
                    args.scrape_every,
                    base / f"r{round_no}-{label}",
                )
                runs[label].append(result)
                log(f"round {round_no + 1}/{args.repeat}, {label} metrics: {result}")
    alone = pieces()
    log(f"alone: {alone}")
    medians = {
        label: {k: statistics.median(r[k] for r in rs) for k in ("cycles_per_s", "wall_s", "cpu_s")}
        for label, rs in runs.items()
    }
    # Each round's with ÷ without, then their median: the two nights of a round ran
    # back to back, so a load that drifts over the run cancels out of the ratio.
    paired = {
        k: statistics.median(w[k] / o[k] for w, o in zip(runs["with"], runs["without"], strict=True))
        for k in ("cycles_per_s", "wall_s", "cpu_s")
    }
    return {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "cycles": args.cycles,
        "parallel": args.parallel,
        "repeat": args.repeat,
        "scrape_every_s": args.scrape_every,
        "scenario": SCENARIO,
        # The machine is shared: its load average (1, 5, 15 min) before and after the run.
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "median": medians,
        "median_of_round_ratios": paired,
        "alone": alone,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["median"]
    scrapes = [r["scrapes"] for r in report["runs"]["with"]]
    lines = [
        f"No-op night, {report['cycles']} cycles, `--parallel {report['parallel']}`, SQLite, "
        f"median of {report['repeat']} alternating rounds; with metrics: `--metrics-port 0`, "
        f"scraped every {report['scrape_every_s']:g} s ({min(scrapes)}–{max(scrapes)} scrapes a night); "
        f"{report['machine']['summary']}; load average (1 min) {report['load_before'][0]:g} before, "
        f"{report['load_after'][0]:g} after.",
        "",
        "| | without metrics | with metrics | with / without (medians) | with / without (median of rounds) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name, fmt in (
        ("cycles_per_s", "cycles/s (ledger)", "{:.0f}"),
        ("wall_s", "wall s (process)", "{:.2f}"),
        ("cpu_s", "CPU s (process)", "{:.2f}"),
    ):
        a, b = m["without"][key], m["with"][key]
        lines.append(
            f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.3f} "
            f"| {report['median_of_round_ratios'][key]:.3f} |"
        )
    a = report["alone"]
    lines += [
        "",
        f"Alone, in one process: a snapshot refresh takes {a['refresh_us']:.0f} µs (every "
        f"0.1 s: {a['refresh_cpu_share_pct']:.3f} % of a core), a scrape's exposition "
        f"{a['scrape_us']:.0f} µs (8 attempts running, 6 monitored components). Once a night: "
        f"importing the endpoint takes {a['import_ms_median']:.0f} ms (median of 5), closing it "
        f"{a['close_ms_median']:.0f} ms (median of 10, max {a['close_ms_max']:.0f} ms: it waits "
        "for the server's next poll, every 0.5 s).",
    ]
    lines += [
        "",
        "Every night:",
        "",
        "| round | metrics | cycles/s | wall s | CPU s | scrapes |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for label in ("without", "with"):
        for i, r in enumerate(report["runs"][label], 1):
            lines.append(
                f"| {i} | {label} | {r['cycles_per_s']:.0f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
                f"| {r.get('scrapes', '')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="rounds, each one night of each kind")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--json", type=Path, help="default: bench/results/metrics-cost-p<P>.json")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.parallel < 1 or args.repeat < 1 or args.scrape_every <= 0:
        parser.error("--cycles, --parallel and --repeat must be at least 1, --scrape-every above 0")
    report = bench(args)
    out = args.json or REPO / "bench" / "results" / f"metrics-cost-p{args.parallel}.json"
    table = markdown(report)
    save(out, report, table)
    print(table)


if __name__ == "__main__":
    main()
