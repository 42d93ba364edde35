"""Signals at random moments of step-heavy nights, on SQLite and PostgreSQL.

Each test is one chain: a night is started, hit by a signal at a seeded random moment
(once a few more cycles are done, plus 0-60 ms: inside steps, inside group commits,
between cycles), resumed, hit again, … and finally resumed to its end. After every
signal the process must be gone within its bound with the documented exit code
(SIGTERM 143, SIGINT 130, each within 10 s; SIGKILL at once), and at the end every
planned cycle is done exactly once on its own input, nothing a signal interrupted was
lost, nothing finished was run again, and the report agrees with the ledger.

The trial counts here keep the suite within its time budget; ``bench/resilience.py``
runs the same chains with any count.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from overnight.engine.context import CycleInput

from ..test_resume import (
    NightRunner,
    Snapshot,
    _progress,
    final_snapshot,
    read_only,
    snapshot,
    snapshot_after_kill,
    wait_for,
)

# Every cycle: a first step naming its input, then many short steps (each two ledger
# writes), an artifact, and a last step. Nothing fails: every verdict must be "passed".
STEP_HEAVY = """
import asyncio
import os


async def cycle(ctx):
    async with ctx.step(f"input-{ctx.input.seed}"):
        pass
    for i in range(int(os.environ.get("OVN_STEPS", "30"))):
        async with ctx.step(f"s{i % 7}"):
            await asyncio.sleep(0)
    ctx.artifact("input.txt", str(ctx.input.seed))
    async with ctx.step("check"):
        await asyncio.sleep(0)
"""

EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
GRACEFUL_BOUND_S = 10.0
TRIALS_SQLITE = int(os.environ.get("OVERNIGHT_RESILIENCE_TRIALS", "8"))
TRIALS_PG = int(os.environ.get("OVERNIGHT_RESILIENCE_TRIALS_PG", "3"))


def run_chain(
    tmp_path: Path, url: str, sig: signal.Signals, trials: int, seed: int, procs: list[subprocess.Popen]
) -> dict[str, float]:
    """``trials`` signals on one night, then a resume to the end; returns timings."""
    rng = random.Random(f"resilience-{sig.name}-{seed}")
    cycles = 6 * trials + 30
    runner = NightRunner(tmp_path, url, {"OVN_STEPS": "30"}, cycles, seed, parallel=3, procs=procs)
    (runner.project / "scenario.py").write_text(STEP_HEAVY)
    hits: list[Snapshot] = []
    night_id: str | None = None
    done = 0
    exit_times: list[float] = []
    with read_only(url) as ro:
        for trial in range(trials):
            proc = runner.start() if night_id is None else runner.resume()
            target = done + rng.randint(1, 4)
            progress = wait_for(
                lambda t=target, nid=night_id: (p := _progress(ro, nid)) is not None and len(p[1]) >= t and p,
                f"{target} cycles done (trial {trial + 1})",
                proc,
            )
            night_id = progress[0]
            time.sleep(rng.uniform(0.0, 0.06))  # the random moment (not a synchronisation)
            t0 = time.monotonic()
            os.kill(proc.pid, sig)
            try:
                rc = proc.wait(timeout=GRACEFUL_BOUND_S + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(
                    f"trial {trial + 1}: still running {GRACEFUL_BOUND_S + 20:.0f} s after {sig.name}"
                )
            exit_times.append(time.monotonic() - t0)
            log = Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
            assert rc == EXIT[sig], f"trial {trial + 1}: {sig.name} gave exit {rc}:\n{log[-3000:]}"
            assert "Traceback" not in log, f"trial {trial + 1}:\n{log[-3000:]}"
            if sig is not signal.SIGKILL:
                assert exit_times[-1] < GRACEFUL_BOUND_S, f"trial {trial + 1}: {exit_times[-1]:.1f} s"
                hits.append(snapshot(ro, night_id))
            else:
                hits.append(snapshot_after_kill(ro, url, night_id))
            done = len(hits[-1].done)
            assert done < cycles, "the night finished before the signal; raise the cycle count"
        assert night_id is not None
        last = runner.resume()
        rc = last.wait(timeout=300)
        assert rc == 0, Path(last.log_path).read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]
    check_night(url, night_id, seed, cycles, hits, graceful=sig is not signal.SIGKILL)
    return {"max_exit_s": max(exit_times), "trials": float(trials)}


def check_night(
    url: str, night_id: str, seed: int, cycles: int, hits: list[Snapshot], graceful: bool
) -> None:
    final = final_snapshot(url, night_id)
    assert final.night["status"] == "completed", final.night
    assert sorted(final.cycles) == list(range(1, cycles + 1)), "a planned cycle is missing"
    for c, row in final.cycles.items():
        expected = CycleInput.derive(seed, c).seed
        atts = final.attempts_of(c)
        assert (row["status"], row["verdict"], row["input_seed"]) == ("done", "passed", str(expected)), row
        # One finished attempt, the last; every earlier one was interrupted by a signal.
        assert [a["verdict"] for a in atts] == ["interrupted"] * (len(atts) - 1) + ["passed"], (c, atts)
        assert row["attempts"] == len(atts)
        for a in atts:
            steps = final.steps.get((c, a["attempt"]), [])
            assert all(st["outcome"] not in ("running", "cancelled") for st in steps), (c, steps)
            assert [st["name"] for st in steps][:1] in ([], [f"input-{expected}"]), (c, steps[:1])
        finished = final.steps[(c, atts[-1]["attempt"])]
        assert len(finished) == 32 and finished[-1]["name"] == "check", (c, len(finished))
        # Every attempt's artifacts hold its own input; the finished one has its artifact.
        for a in atts:
            for art in final.artifacts.get((c, a["attempt"]), []):
                assert Path(art["path"]).read_text() == str(expected), art
        assert [x["name"] for x in final.artifacts.get((c, atts[-1]["attempt"]), [])] == ["input.txt"]

    for i, snap in enumerate(hits, 1):
        # What was finished when the signal landed was kept exactly, never run again.
        for c in snap.done:
            assert final.attempts_of(c) == snap.attempts_of(c), f"signal {i}: cycle {c} was rerun"
            for a in snap.attempts_of(c):
                key = (c, a["attempt"])
                assert final.steps.get(key) == snap.steps.get(key), f"signal {i}: cycle {c} steps changed"
        if graceful:
            # A graceful stop closes its own work: nothing left open, the night interrupted.
            assert snap.night["status"] == "interrupted", f"signal {i}: {snap.night['status']}"
            assert not snap.open_attempts, f"signal {i}: {snap.open_attempts}"
            assert snap.sessions[-1]["ended_at"] is not None
        else:
            assert snap.night["status"] == "running"
        session = max(x["seq"] for x in snap.sessions)
        cut = [
            x
            for x in snap.attempts.values()
            if x["session"] == session and x["verdict"] in (None, "interrupted")
        ]
        for a in cut:  # the attempts this signal cut short: closed as interrupted, rerun later
            c = a["cycle"]
            assert c not in snap.done, f"signal {i}: cycle {c} is done but its attempt was cut"
            assert final.attempts[(c, a["attempt"])]["verdict"] == "interrupted"
            assert any(x["session"] > session for x in final.attempts_of(c)), (c, final.attempts_of(c))

    seqs = [s["seq"] for s in final.sessions]
    assert seqs == list(range(1, len(hits) + 2)), final.sessions
    report = json.loads((Path(final.night["night_dir"]) / night_id / "report.json").read_text())
    assert report["status"] == "completed" and report["exit_code"] == 0
    assert report["cycles_run"] == cycles and report["totals"]["passed"] == cycles
    assert report["attempts_total"] == len(final.attempts)
    assert report["interrupted_attempts"] == sum(
        1 for a in final.attempts.values() if a["verdict"] == "interrupted"
    )
    assert len(report["sessions"]) == len(hits) + 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_signals_on_a_sqlite_night(
    sig: signal.Signals, tmp_path: Path, spawned: list[subprocess.Popen]
) -> None:
    run_chain(tmp_path, str(tmp_path / "ledger" / "overnight.db"), sig, TRIALS_SQLITE, 4242, spawned)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_signals_on_a_postgresql_night(
    sig: signal.Signals, tmp_path: Path, pg_url: str, spawned: list[subprocess.Popen]
) -> None:
    run_chain(tmp_path, pg_url, sig, TRIALS_PG, 2424, spawned)
