#!/usr/bin/env python3
"""Compatibility entry point for cron jobs that still call ``run_night_tests.py``.

Forwards every argument to ``overnight run`` unchanged, so
``python3 run_night_tests.py --cycles 100 --parallel 2`` is exactly
``overnight run --cycles 100 --parallel 2`` (same flags, same exit codes).
"""

import sys

from overnight.cli import main

if __name__ == "__main__":
    sys.argv = ["overnight", "run", *sys.argv[1:]]
    main()
