"""Live progress: a rich view on a terminal (a real pty), plain lines elsewhere."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from .conftest import make_project, run_cli

SCENARIO = """
import asyncio

async def cycle(ctx):
    async with ctx.step("interview"):
        await asyncio.sleep(0.3)
    async with ctx.step("writer"):
        await asyncio.sleep(0.3)
"""


def test_terminal_gets_a_live_view(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", SCENARIO)
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "run", "--cycles", "4", "--parallel", "2"],
        cwd=proj,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen[-2000:]
    # The live view: counts of total, per-verdict tallies, ETA and running cycles' steps.
    assert "/4 cycles" in screen
    assert "ETA" in screen
    assert "interview" in screen or "writer" in screen
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "PASSED: all 4 cycles passed" in screen


def test_no_terminal_gets_plain_lines(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", SCENARIO)
    res = run_cli(["run", "--cycles", "2"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stderr
    # One line per attempt, with the night's progress; never a second line for the same one.
    lines = [ln for ln in res.stderr.splitlines() if "attempt 1" in ln]
    assert len(lines) == 2 and all("attempt 1: passed in" in ln for ln in lines)
    assert "[1/2 done: 1 passed, 0 failed, 0 infra" in lines[0]
    assert "[2/2 done: 2 passed, 0 failed, 0 infra" in lines[-1]
