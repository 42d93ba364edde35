"""Benchmark: a pytest suite as the night's cycle — what a cycle costs over plain pytest,
and a night of the example suite. A measurement, not a test.

    python bench/pytest_overhead.py [--runs 10] [--tests 20] [--example-cycles 6] [--json OUT]

1. **Overhead per cycle, side by side**: one synthetic suite of ``--tests`` tests (asserts,
   SQLite writes, HTTP requests to a local server the suite starts itself; none uses
   overnight's fixtures) run ``--runs`` times with plain ``python -m pytest`` (the same
   plugins disabled as in a night's cycle: cacheprovider, xdist, rerunfailures), half
   before and half after a night of ``--runs`` cycles of the same suite
   (``overnight run --pytest``). Plain: each run's wall time. Night: each cycle's
   ``duration_s`` from the ledger (the pytest process, the results streamed, a step per
   test written, the output kept), and the night process's wall time (startup, imports,
   the report). Overhead per cycle = cycle − plain run.
2. **A night of examples/pytest_suite**: ``overnight run`` of ``--example-cycles`` cycles
   (the sandbox APIs and SQLite), with cycles, attempts, tests per cycle, verdict and the
   wall time, read from the ledger.

It writes JSON and a Markdown table (``bench/results/pytest-overhead.{json,md}``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from benchutil import machine, save

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pytest_suite"
DISABLED = ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:rerunfailures"]

CONFTEST = """
import http.server
import threading

import pytest


@pytest.fixture(scope="session")
def server():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
"""

TESTS = """
import sqlite3

import httpx
import pytest


@pytest.mark.parametrize("n", range({asserts}))
def test_arithmetic(n):
    assert sum(range(n + 1)) == n * (n + 1) // 2


@pytest.mark.parametrize("n", range({writes}))
def test_sqlite(n, tmp_path):
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100


@pytest.mark.parametrize("n", range({requests}))
def test_http(n, server):
    assert httpx.get(server, timeout=5).status_code == 200
"""


def write_suite(folder: Path, tests: int) -> Path:
    suite = folder / "suite"
    suite.mkdir(parents=True)
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "conftest.py").write_text(CONFTEST)
    share = tests // 4
    (suite / "test_bench.py").write_text(
        textwrap.dedent(TESTS).format(asserts=tests - 2 * share, writes=share, requests=share)
    )
    return suite


def plain_run(suite: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *DISABLED, "."],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"plain pytest failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took


def night(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "overnight", "run", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=3600,
    )  # fmt: skip
    return time.perf_counter() - t0, res


def ledger_figures(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        cycles = conn.execute("SELECT cycle, verdict, duration_s FROM cycles ORDER BY cycle").fetchall()
        attempts = conn.execute("SELECT cycle, attempt, duration_s, verdict FROM attempts").fetchall()
        steps = conn.execute("SELECT cycle, attempt, count(*) FROM steps GROUP BY cycle, attempt").fetchall()
        span = conn.execute("SELECT min(started_at), max(ended_at) FROM cycles").fetchone()
    first_attempt_tests = [n for c, a, n in steps if a == 1]
    return {
        "cycles": len(cycles),
        "attempts": len(attempts),
        "verdicts": {v: sum(1 for _, x, _ in cycles if x == v) for v in sorted({c[1] for c in cycles})},
        "attempt_s": [round(d, 4) for _, _, d, _ in attempts],
        "tests_per_cycle": max(first_attempt_tests) if first_attempt_tests else 0,
        "cycles_span_s": round(span[1] - span[0], 3) if span[0] else None,
    }


def read_back(path: Path) -> list[dict[str, Any]] | str:
    """junit.xml as a real consumer of the format reads it (junitparser, when installed):
    each testcase's result, and the Surefire elements nested in it."""
    try:
        from junitparser import JUnitXml
    except ImportError:
        return "junitparser is not installed (pip install junitparser)"
    out = []
    for suite in JUnitXml.fromfile(str(path)):
        for case in suite:
            nested = [c.tag for c in case._elem if c.tag.startswith(("flaky", "rerun"))]
            results = [type(r).__name__ for r in case.result]
            out.append({"testcase": f"{case.classname}::{case.name}", "result": results, "nested": nested})
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 4),
        "p50": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="plain pytest runs, and cycles of the night")
    ap.add_argument("--tests", type=int, default=20, help="tests in the synthetic suite")
    ap.add_argument("--example-cycles", type=int, default=6, help="cycles of the example night (0: skip it)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pytest-overhead.json")
    opts = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result: dict[str, Any] = {"machine": machine(), "runs": opts.runs, "tests": opts.tests}
    result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="overnight-bench-pytest-") as tmp:
        folder = Path(tmp)
        suite = write_suite(folder, opts.tests)
        plain_run(suite, env)  # warm the caches (the .pyc files) for both
        half = opts.runs // 2
        plain = [plain_run(suite, env) for _ in range(half)]
        wall, res = night(
            [
                "--pytest",
                str(suite),
                "--cycles",
                str(opts.runs),
                "--seed",
                "1",
                "--night-dir",
                str(folder / "n"),
            ],
            folder,
            env,
        )
        if res.returncode != 0:
            raise SystemExit(f"the night failed:\n{res.stdout}\n{res.stderr[-3000:]}")
        plain += [plain_run(suite, env) for _ in range(opts.runs - half)]
        fig = ledger_figures(folder / "n" / "overnight.db")
        cycle = stats(fig["attempt_s"])
        plain_s = stats(plain)
        result["side_by_side"] = {
            "plain_pytest_s": plain_s,
            "overnight_cycle_s": cycle,
            "overhead_per_cycle_s": round(cycle["mean"] - plain_s["mean"], 4),
            "overhead_per_cycle_pct": round(100 * (cycle["mean"] - plain_s["mean"]) / plain_s["mean"], 1),
            "night_process_wall_s": round(wall, 3),
            "night_verdict": res.stdout.splitlines()[0] if res.stdout else None,
            "tests_per_cycle": fig["tests_per_cycle"],
        }
        if opts.example_cycles:
            wall, res = night(
                ["--cycles", str(opts.example_cycles), "--seed", "11", "--night-dir", str(folder / "ex")],
                EXAMPLE,
                env,
            )
            fig = ledger_figures(folder / "ex" / "overnight.db")
            night_dir = next((folder / "ex").glob("*/junit.xml")).parent
            result["junit_read_back"] = read_back(night_dir / "junit.xml")
            result["example_night"] = {
                "cycles": fig["cycles"],
                "attempts": fig["attempts"],
                "tests_per_cycle": fig["tests_per_cycle"],
                "verdicts": fig["verdicts"],
                "verdict_line": res.stdout.splitlines()[0] if res.stdout else None,
                "exit_code": res.returncode,
                "wall_s": round(wall, 3),
                "attempt_s": stats(fig["attempt_s"]),
            }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    sbs = result["side_by_side"]
    lines = [
        f"# A pytest suite as the cycle: overhead ({result['machine']['summary']})",
        "",
        f"Synthetic suite of {sbs['tests_per_cycle']} tests, {opts.runs} plain runs (half before, half after)"
        f" and a night of {opts.runs} cycles, in one run; load average (1, 5, 15 min) "
        f"{result['load_average_before']} before, {result['load_average_after']} after.",
        "",
        "| | n | mean s | p50 s | min s | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in (
        ("plain `python -m pytest`", sbs["plain_pytest_s"]),
        ("overnight cycle", sbs["overnight_cycle_s"]),
    ):
        lines.append(f"| {name} | {s['n']} | {s['mean']} | {s['p50']} | {s['min']} | {s['max']} |")
    lines += [
        "",
        f"Overhead per cycle: **{sbs['overhead_per_cycle_s']} s** ({sbs['overhead_per_cycle_pct']} %). "
        f"The night's process: {sbs['night_process_wall_s']} s for {opts.runs} cycles "
        f"(startup, imports and the report included): {sbs['night_verdict']}.",
    ]
    ex = result.get("example_night")
    if ex:
        lines += [
            "",
            "## A night of examples/pytest_suite",
            "",
            f"{ex['cycles']} cycles, {ex['attempts']} attempts, {ex['tests_per_cycle']} tests per cycle, "
            f"{ex['wall_s']} s wall ({ex['attempt_s']['mean']} s per attempt on average); verdicts "
            f"{ex['verdicts']}: `{ex['verdict_line']}` (exit {ex['exit_code']}).",
        ]
    back = result.get("junit_read_back")
    if isinstance(back, list):
        lines += [
            "",
            "junit.xml read back by junitparser:",
            "",
            "| testcase | result | nested |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{c['testcase']}` | {', '.join(c['result']) or 'passed'} | {', '.join(c['nested'])} |"
            for c in back
        ]
    elif back:
        lines += ["", f"junit.xml not read back: {back}"]
    table = "\n".join(lines)
    save(opts.json, result, table)
    print(table)


if __name__ == "__main__":
    main()
