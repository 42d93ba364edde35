"""axe-core, the accessibility engine, for the pages' tests: its ``axe.min.js`` from the npm
registry (``npm install axe-core@AXE_VERSION``), kept in a cache folder between runs."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

AXE_VERSION = "4.14.1"
# What an accessibility check of ours fails on (axe's own impact levels).
BLOCKING = ("serious", "critical")


def _cache() -> Path:
    base = (
        os.environ.get("OVERNIGHT_TEST_CACHE")
        or os.environ.get("XDG_CACHE_HOME")
        or str(Path.home() / ".cache")
    )
    return Path(base) / "overnight-tests" / f"axe-core-{AXE_VERSION}"


def axe_source() -> str:
    """The text of axe.min.js, installed with npm on first use (one worker at a time)."""
    folder = _cache()
    script = folder / "node_modules" / "axe-core" / "axe.min.js"
    if script.exists():
        return script.read_text()
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not installed (apt-get install nodejs npm)")
        pytest.skip("npm is not installed (apt-get install nodejs npm): no axe-core")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be installing it
        if not script.exists():
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(folder),
                    "--no-save",
                    "--no-package-lock",
                    "--no-audit",
                    "--no-fund",
                    f"axe-core@{AXE_VERSION}",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0 and script.exists(), (
                f"npm install axe-core failed: {done.stderr[-2000:]}"
            )
    return script.read_text()
