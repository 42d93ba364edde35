"""``python -m overnight`` as a process of its own that a test waits for, signals or kills."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def spawn_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, *, output: bool = True
) -> subprocess.Popen[str]:
    """Start ``python -m overnight ARGS`` in a fresh interpreter, stdin closed; stdout and
    stderr in pipes (text), or dropped with ``output=False``. ``env`` replaces the
    environment, as Popen's does. Its caller waits for it (or kills it)."""
    out = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "overnight", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        text=True,
    )
