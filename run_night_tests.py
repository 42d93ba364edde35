#!/usr/bin/env python3
"""Compatibility entry point for cron jobs that still call ``run_night_tests.py``.

``python3 run_night_tests.py ARGS`` is ``overnight run ARGS`` (same flags, same exit
codes), with the old script's own flags mapped: ``--mock-websearch`` is ``--set
mock_websearch=true`` and ``--no-expert`` is ``--set expert=false``. Without a config here
(no overnight.toml, no --config), it runs the reference grant pipeline's, and says so.
"""

import sys
from pathlib import Path

from overnight.cli import main
from overnight.config import find_config

OLD_FLAGS = {"--mock-websearch": "mock_websearch=true", "--no-expert": "expert=false"}
REFERENCE = Path(__file__).resolve().parent / "examples" / "grant_pipeline" / "overnight.toml"


def translate(args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        out += ["--set", OLD_FLAGS[arg]] if arg in OLD_FLAGS else [arg]
    given = any(a in ("--config", "-c") or a.startswith("--config=") for a in out)
    if not given and "--resume" not in out and find_config() is None and REFERENCE.is_file():
        print(f"run_night_tests.py: no overnight.toml here; running {REFERENCE}", file=sys.stderr)
        out += ["--config", str(REFERENCE)]
    return out


if __name__ == "__main__":
    sys.argv = ["overnight", "run", *translate(sys.argv[1:])]
    main()
