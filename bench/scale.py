"""Benchmark: a 10,000- or 100,000-cycle night — memory, report time, resume time. A measurement, not a test.

    python bench/scale.py [--cycles 10000] [--parallel 8] [--configs both] [--skip-resume]
                          [--json OUT] [--keep]

A fast scenario (two ``ctx.step``s and a ``ctx.metric("score", ...)`` per cycle), run as
``python -m overnight run --cycles N --parallel P`` subprocesses, each in a fresh
temporary folder with its SQLite ledger there, in two configurations: ``[agent] enabled =
false`` without components, and the agent enabled with one ``system`` component, so that
the agent (its probes, its loop-lag sampler) is in the loop. For each:

1. **Memory**: RSS of the overnight process and its children (psutil, every 0.2 s): the
   peak, and the RSS when the ledger first shows 1,000 and 10,000 cycles done (polled
   with ``SELECT count(*) FROM cycles WHERE status = 'done'`` on a read-only SQLite
   connection, at every sample up to 20,000 cycles, every 5th beyond: the count scans
   the table). Targets: growth from 1,000 to 10,000 < 50 MB; for a longer night, peak RSS
   < 400 MB, the end-of-night report included, and growth from 1,000 to N < 100 MB. The
   night starts its report the moment its last cycle is done, so the sample at N may
   already hold part of the report's memory; the last sample before it is also given.
2. **Cycles/s** from the ledger: cycles ÷ (last ``ended_at`` − first ``started_at``).
3. **Report time** of that night: ``python -m overnight report NIGHT_ID`` (wall time,
   interpreter start included) and ``overnight.report.write_reports`` in this process
   (the first call, as at the end of a night). Target: < 5 s at 10,000 cycles, < 10 s at
   100,000.
4. **Resume**: another night of N cycles, SIGKILLed when the ledger shows about half of
   them done, then ``python -m overnight run --resume``. Measured: from just before
   ``Popen`` to the first attempt of session 2 in the ledger (``attempts.session = 2``,
   min ``started_at``) — target < 1 s — beside the interpreter + import baseline
   (``python -c "import overnight.cli"``, up to the end of the imports, no shutdown), so
   what remains is overnight's own work. Then: does the resumed night finish all N
   cycles, with no cycle run to a verdict twice?

``--configs`` runs one configuration only (``agent-off`` or ``agent-on``);
``--skip-resume`` leaves out the resume nights (at 100,000 cycles a night takes half an
hour on 2 cores). Writes JSON (``--json``, default ``bench/results/scale-<N>-p<P>.json``,
with a ``.md`` of the tables beside it) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
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

import psutil
from benchutil import machine, save

import overnight
from overnight.ledger import Ledger
from overnight.report import write_reports

RESUME_TARGET_S = 1.0
PEAK_TARGET_MB = 400.0
SEED = 7
# Poll the ledger's done count at every RSS sample up to this many cycles, then at every 5th.
EVERY_SAMPLE_UPTO = 20_000


def targets(cycles: int) -> dict[str, float]:
    """Up to 10,000 cycles: growth < 50 MB and the report < 5 s (the first scale issue's
    targets); beyond: the report < 10 s and the night's peak RSS, its report included,
    < 400 MB (the 100,000-cycle targets), growth < 100 MB."""
    if cycles <= 10_000:
        return {
            "rss_growth_mb": 50.0,
            "report_s": 5.0,
            "rss_peak_mb": PEAK_TARGET_MB,
            "resume_to_first_attempt_s": RESUME_TARGET_S,
        }
    return {
        "rss_growth_mb": 100.0,
        "report_s": 10.0,
        "rss_peak_mb": PEAK_TARGET_MB,
        "resume_to_first_attempt_s": RESUME_TARGET_S,
    }


SCENARIO = """
async def cycle(ctx):
    async with ctx.step("prepare"):
        rnd = ctx.input.random()
        words = [rnd.choice(["grant", "budget", "timeline", "evidence"]) for _ in range(20)]
    async with ctx.step("score"):
        ctx.metric("score", round(4.0 + 6.0 * words.count("evidence") / 20, 2))
"""

CONFIGS = {
    "agent off": 'scenario = "fast:cycle"\n\n[agent]\nenabled = false\n',
    "agent on + system": (
        'scenario = "fast:cycle"\n\n[agent]\nenabled = true\n\n'
        '[components.system]\ntype = "system"\nmin_free_disk_gb = 1\n'
    ),
}


def mb(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


class LedgerReader:
    """Read-only queries on the night's SQLite ledger while the night writes it (WAL)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "night_tests" / "overnight.db"
        self.conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self.conn is None and self.path.exists():
            try:
                self.conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False
                )
            except sqlite3.Error:
                return None
        return self.conn

    def scalar(self, sql: str, *params: Any) -> Any:
        conn = self._connect()
        if conn is None:
            return None
        try:
            return conn.execute(sql, params).fetchone()[0]
        except sqlite3.Error:  # the schema is not there yet
            return None

    def done(self) -> int:
        return self.scalar("SELECT count(*) FROM cycles WHERE status = 'done'") or 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Watcher(threading.Thread):
    """Every ``every`` s: RSS of the process tree and the ledger's done count."""

    def __init__(
        self, pid: int, ledger: LedgerReader, every: float, marks: tuple[int, ...], count_every: int = 1
    ) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.ledger = ledger
        self.every = every
        self.marks = marks
        self.count_every = count_every  # read the done count at every n-th sample (it scans the table)
        self.peak = 0
        self.at: dict[int, dict[str, Any]] = {}
        self.samples: list[tuple[float, int, int]] = []
        self.t0 = time.time()
        self._halt = threading.Event()

    def rss(self) -> int | None:
        try:
            total = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return None

    def run(self) -> None:
        n, done = 0, 0
        while not self._halt.is_set():
            rss = self.rss()
            if rss is None:
                return
            if n % self.count_every == 0:
                done = self.ledger.done()
            n += 1
            self.peak = max(self.peak, rss)
            self.samples.append((round(time.time() - self.t0, 2), done, rss))
            for mark in self.marks:
                if done >= mark and mark not in self.at:
                    self.at[mark] = {"done": done, "rss": rss}
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def project(workdir: Path, label: str, config: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=label.replace(" ", "-").replace("+", "") + "-", dir=workdir))
    (folder / "fast.py").write_text(SCENARIO, encoding="utf-8")
    (folder / "overnight.toml").write_text(config, encoding="utf-8")
    return folder


def overnight_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "overnight", *args]


ENV = {k: v for k, v in os.environ.items() if k != "COLUMNS"}


def popen(folder: Path, args: list[str], log: str) -> subprocess.Popen[bytes]:
    with open(folder / log, "ab") as console:
        return subprocess.Popen(
            overnight_cmd(*args),
            cwd=folder,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )


def wait(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Reap the process; (exit code, its kernel max RSS in bytes)."""
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, rusage.ru_maxrss * 1024


def fail(folder: Path, what: str, code: int) -> None:
    tail = (folder / "console.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"bench/scale.py: {what} exited {code}:\n{tail}")


def night_stats(led: LedgerReader) -> dict[str, Any]:
    night_id = led.scalar("SELECT id FROM nights ORDER BY started_at DESC LIMIT 1")
    conn = led._connect()
    assert conn is not None and night_id is not None
    first, last, done, rows = conn.execute(
        "SELECT min(started_at), max(ended_at), sum(status = 'done'), count(*) "
        "FROM cycles WHERE night_id = ?",
        (night_id,),
    ).fetchone()
    verdicts = dict(
        conn.execute(
            "SELECT verdict, count(*) FROM cycles WHERE night_id = ? GROUP BY verdict", (night_id,)
        ).fetchall()
    )
    probes = conn.execute("SELECT count(*) FROM probes WHERE night_id = ?", (night_id,)).fetchone()[0]
    lag = conn.execute(
        "SELECT data FROM events WHERE night_id = ? AND kind = 'loop_lag' ORDER BY id DESC LIMIT 1",
        (night_id,),
    ).fetchone()
    return {
        "night_id": night_id,
        "cycles_rows": rows,
        "cycles_done": done,
        "verdicts": verdicts,
        "ledger_span_s": round(last - first, 3),
        "cycles_per_s": round(done / (last - first), 1),
        "probes": probes,
        "loop_lag": json.loads(lag[0]) if lag else None,
    }


def full_night(workdir: Path, label: str, config: str, cycles: int, parallel: int) -> dict[str, Any]:
    """A whole night, watched; then its report, timed twice."""
    folder = project(workdir, label, config)
    led = LedgerReader(folder)
    marks = (1000, cycles)
    t0 = time.perf_counter()
    proc = popen(
        folder,
        ["run", "--cycles", str(cycles), "--parallel", str(parallel), "--seed", str(SEED)],
        "console.log",
    )
    watcher = Watcher(proc.pid, led, 0.2, marks, 1 if cycles <= EVERY_SAMPLE_UPTO else 5)
    watcher.start()
    code, kernel_max = wait(proc)
    wall = time.perf_counter() - t0
    watcher.stop()
    if code != 0:
        fail(folder, f"the {label} night", code)
    stats = night_stats(led)
    led.close()

    # The report: as a command, then in this process.
    t = time.perf_counter()
    cli = subprocess.run(
        overnight_cmd("report", stats["night_id"]),
        cwd=folder,
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    cli_s = time.perf_counter() - t
    if cli.returncode != 0:
        raise SystemExit(f"bench/scale.py: overnight report exited {cli.returncode}: {cli.stderr[-1000:]!r}")
    ledger = Ledger(str(folder / "night_tests" / "overnight.db"))
    try:
        t = time.perf_counter()
        write_reports(ledger, stats["night_id"])
        inproc_s = time.perf_counter() - t
    finally:
        ledger.close()

    at1k, atn = watcher.at.get(1000), watcher.at.get(cycles)
    growth = atn["rss"] - at1k["rss"] if at1k and atn else None
    # The night writes its report as soon as the last cycle is done, so the sample at N done
    # may already hold some of the report's memory: the last sample before is the cycles' alone.
    before = [(d, r) for _, d, r in watcher.samples if 1000 <= d < cycles]
    last_before = {"done": before[-1][0], "rss_mb": mb(before[-1][1])} if before else None
    cycles_growth = before[-1][1] - at1k["rss"] if before and at1k else None
    step = max(1, len(watcher.samples) // 60)
    return {
        "label": label,
        "config": config,
        "process_wall_s": round(wall, 2),
        **stats,
        "rss_peak_mb": mb(watcher.peak),
        "rss_kernel_max_mb": mb(kernel_max),
        "rss_at": {
            str(m): (
                {"done": watcher.at[m]["done"], "rss_mb": mb(watcher.at[m]["rss"])}
                if m in watcher.at
                else None
            )
            for m in marks
        },
        "rss_last_sample_before_all_done": last_before,
        "rss_growth_mb": mb(growth),
        "rss_growth_cycles_only_mb": mb(cycles_growth),
        "rss_samples": [{"t": t_, "done": d, "rss_mb": mb(r)} for t_, d, r in watcher.samples[::step]],
        "report_cli_s": round(cli_s, 3),
        "report_in_process_s": round(inproc_s, 3),
    }


def import_baseline(repeat: int = 7) -> dict[str, float]:
    """Wall time of ``python -c "import overnight.cli"`` (and of a bare interpreter), medians.

    Both end with ``os._exit(0)``: the resume is timed to its first attempt, while the
    process still runs, so the interpreter's shutdown must not be in the baseline either.
    """

    def median_of(code: str) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=ENV, check=True)
            times.append(time.perf_counter() - t)
        return round(statistics.median(times), 3)

    return {
        "median_s": median_of("import overnight.cli, os; os._exit(0)"),
        "bare_interpreter_s": median_of("import os; os._exit(0)"),
    }


def resume_night(workdir: Path, label: str, config: str, cycles: int, parallel: int) -> dict[str, Any]:
    """Kill -9 a night halfway, resume it, time the resume, check the result."""
    folder = project(workdir, label + " resume", config)
    led = LedgerReader(folder)
    kill_at = cycles // 2
    proc = popen(
        folder,
        ["run", "--cycles", str(cycles), "--parallel", str(parallel), "--seed", str(SEED)],
        "console.log",
    )
    done_at_kill = None
    while proc.poll() is None:
        done = led.done()
        if done >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            done_at_kill = done
            break
        time.sleep(0.02)
    code, _ = wait(proc) if proc.returncode is None else (proc.returncode, 0)
    if done_at_kill is None:
        raise SystemExit(f"bench/scale.py: the night to kill ended first (exit {code}); use more cycles")
    night_id = led.scalar("SELECT id FROM nights ORDER BY started_at DESC LIMIT 1")
    done_after_kill = led.done()  # what the ledger kept: the count when killed, or a few more
    running_left = led.scalar(
        "SELECT count(*) FROM attempts WHERE night_id = ? AND verdict IS NULL", night_id
    )

    exec_at = time.time()
    proc = popen(folder, ["run", "--resume"], "console.log")
    code, _ = wait(proc)
    end_wall = time.time() - exec_at
    if code != 0:
        fail(folder, "the resumed night", code)
    # Both times are the resumed process's own records: nothing here polls while it starts.
    session_at = led.scalar("SELECT started_at FROM sessions WHERE night_id = ? AND seq = 2", night_id)
    first_attempt_at = led.scalar(
        "SELECT min(started_at) FROM attempts WHERE night_id = ? AND session = 2", night_id
    )

    conn = led._connect()
    assert conn is not None
    rows, distinct, done = conn.execute(
        "SELECT count(*), count(DISTINCT cycle), sum(status = 'done') FROM cycles WHERE night_id = ?",
        (night_id,),
    ).fetchone()
    # A duplicate would be a cycle that ran to a verdict (not 'interrupted') more than once.
    twice = conn.execute(
        "SELECT count(*) FROM (SELECT cycle FROM attempts WHERE night_id = ? AND verdict IS NOT NULL "
        "AND verdict != 'interrupted' GROUP BY cycle HAVING count(*) > 1)",
        (night_id,),
    ).fetchone()[0]
    interrupted = conn.execute(
        "SELECT count(*) FROM attempts WHERE night_id = ? AND verdict = 'interrupted'", (night_id,)
    ).fetchone()[0]
    ran_in_session_2 = conn.execute(
        "SELECT count(DISTINCT cycle) FROM attempts WHERE night_id = ? AND session = 2", (night_id,)
    ).fetchone()[0]
    status = conn.execute("SELECT status FROM nights WHERE id = ?", (night_id,)).fetchone()[0]
    led.close()
    return {
        "label": label,
        "night_id": night_id,
        "killed_when_done": done_at_kill,
        "done_after_kill": done_after_kill,
        "attempts_left_running": running_left,
        "exec_to_session_s": round(session_at - exec_at, 3) if session_at else None,
        "exec_to_first_attempt_s": round(first_attempt_at - exec_at, 3) if first_attempt_at else None,
        "session_to_first_attempt_s": (
            round(first_attempt_at - session_at, 3) if first_attempt_at and session_at else None
        ),
        "resumed_process_wall_s": round(end_wall, 2),
        "resumed_exit": code,
        "night_status": status,
        "cycles_rows": rows,
        "cycles_distinct": distinct,
        "cycles_done": done,
        "cycles_run_in_session_2": ran_in_session_2,
        "interrupted_attempts": interrupted,
        "cycles_with_two_verdicts": twice,
        "complete_no_duplicates": rows == cycles and distinct == cycles and done == cycles and twice == 0,
    }


def bench(
    cycles: int, parallel: int, keep: bool, configs: dict[str, str], skip_resume: bool
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ovbench-scale-"))
    try:
        nights = [full_night(workdir, label, cfg, cycles, parallel) for label, cfg in configs.items()]
        resumes = []
        for label, cfg in configs.items() if not skip_resume else ():
            resumes.append(resume_night(workdir, label, cfg, cycles, parallel))
            # Measured right after each resume, in the same conditions.
            resumes[-1]["import_baseline"] = import_baseline()
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for r in resumes:
        first, base = r["exec_to_first_attempt_s"], r["import_baseline"]["median_s"]
        r["own_work_s"] = round(first - base, 3) if first is not None else None
    return {
        "benchmark": "overnight-scale",
        "version": 1,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "overnight": overnight.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cycles": cycles,
        "parallel": parallel,
        "seed": SEED,
        "scenario": SCENARIO.strip(),
        "targets": targets(cycles),
        "nights": nights,
        "resume": resumes,
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def markdown(report: dict[str, Any]) -> str:
    n, p = report["cycles"], report["parallel"]
    where = report["machine"]["summary"] if "machine" in report else f"{report['cpu_count']} CPUs"
    load = report.get("load_average_at_end")
    lines = [
        f"{n:,} cycles, parallel {p}, SQLite ledger; {where}"
        + (f"; load average at the end {load[0]} / {load[1]} / {load[2]}" if load else "")
        + ".",
        "",
        "| night | cycles/s (ledger) | process s | peak RSS MB | RSS @1,000 done | RSS just before "
        f"all done | RSS @{n:,} done | growth MB | `overnight report` s | write_reports s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["nights"]:
        at = r["rss_at"]
        a1, an, lb = at.get("1000"), at.get(str(n)), r["rss_last_sample_before_all_done"]
        just_before = f"{lb['rss_mb']} ({lb['done']:,})" if lb else "–"
        lines.append(
            f"| {r['label']} | {r['cycles_per_s']} | {r['process_wall_s']} | {r['rss_peak_mb']} "
            f"| {a1['rss_mb'] if a1 else '–'} | {just_before} "
            f"| {an['rss_mb'] if an else '–'} | {r['rss_growth_mb']} "
            f"| {r['report_cli_s']} | {r['report_in_process_s']} |"
        )
    if report["resume"]:
        lines += [
            "",
            "| resume of | killed at (done) | exec → session 2 s | session 2 → first new attempt s "
            "| exec → first new attempt s | `import overnight.cli` s (bare python) | difference s "
            "| cycles run again "
            "| done / rows | run twice |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in report["resume"]:
        lines.append(
            f"| {r['label']} | {r['done_after_kill']:,} | {r['exec_to_session_s']} "
            f"| {r['session_to_first_attempt_s']} | {r['exec_to_first_attempt_s']} "
            f"| {r['import_baseline']['median_s']} ({r['import_baseline']['bare_interpreter_s']}) "
            f"| {r['own_work_s']} "
            f"| {r['cycles_run_in_session_2']:,} | {r['cycles_done']:,} / {r['cycles_rows']:,} "
            f"| {r['cycles_with_two_verdicts']} |"
        )
    t = report["targets"]
    growth = [r["rss_growth_mb"] for r in report["nights"] if r["rss_growth_mb"] is not None]
    growth_ok = bool(growth) and max(growth) < t["rss_growth_mb"]
    reports = [max(r["report_cli_s"], r["report_in_process_s"]) for r in report["nights"]]
    peaks = [max(r["rss_peak_mb"] or 0, r["rss_kernel_max_mb"] or 0) for r in report["nights"]]
    resumes = [r["exec_to_first_attempt_s"] for r in report["resume"] if r["exec_to_first_attempt_s"]]
    complete = all(r["complete_no_duplicates"] for r in report["resume"])
    lines += [
        "",
        "| target | worst | |",
        "|---|---:|---|",
        f"| RSS growth 1,000 → {n:,} cycles < {t['rss_growth_mb']:g} MB "
        f"| {max(growth) if growth else '–'} MB | {verdict(growth_ok)} |",
        f"| peak RSS of `overnight run` (its report included) < {t['rss_peak_mb']:g} MB "
        f"| {max(peaks)} MB | {verdict(max(peaks) < t['rss_peak_mb'])} |",
        f"| report < {t['report_s']:g} s (`overnight report` and write_reports) "
        f"| {max(reports)} s | {verdict(max(reports) < t['report_s'])} |",
    ]
    if report["resume"]:
        lines += [
            f"| resume, exec → first new attempt < {t['resume_to_first_attempt_s']:g} s "
            f"| {max(resumes) if resumes else '–'} s "
            f"| {verdict(bool(resumes) and max(resumes) < t['resume_to_first_attempt_s'])} |",
            f"| resumed night complete, no cycle run twice | {'yes' if complete else 'no'} "
            f"| {verdict(complete)} |",
        ]
    else:
        lines.append("| resume | not run (`--skip-resume`) | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000, help="cycles per night (default 10000)")
    parser.add_argument("--parallel", type=int, default=8, help="cycles at once (default 8)")
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/scale-<N>-p<P>.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--configs",
        choices=("both", "agent-off", "agent-on"),
        default="both",
        help="the configurations to run (default both)",
    )
    parser.add_argument("--skip-resume", action="store_true", help="leave out the kill -9 and resume nights")
    args = parser.parse_args(argv)
    if args.cycles < 2000 or args.parallel < 1:
        parser.error("--cycles must be at least 2000 (RSS is read at 1,000 done) and --parallel at least 1")
    labels = {"both": list(CONFIGS), "agent-off": ["agent off"], "agent-on": ["agent on + system"]}[
        args.configs
    ]

    report = bench(args.cycles, args.parallel, args.keep, {k: CONFIGS[k] for k in labels}, args.skip_resume)
    out = args.json or (
        Path(__file__).resolve().parent / "results" / f"scale-{args.cycles}-p{args.parallel}.json"
    )
    table = markdown(report)
    save(out, report, table)
    print(table)
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
