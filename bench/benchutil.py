"""What every benchmark script shares: the machine it ran on, and how its results are saved
(JSON plus the same figures as a Markdown table next to it)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    """Cores, memory, system and Python, and the one-line summary BENCHMARKS.md quotes."""
    mem = psutil.virtual_memory().total / 1024**3
    system = f"{platform.system()} {platform.release()}"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "system": system,
        "python": platform.python_version(),
        "summary": f"{os.cpu_count()} cores, {mem:.0f} GiB, {system}, Python {platform.python_version()}",
    }


def save(out: Path, result: dict[str, Any], table: str) -> None:
    """``out`` (JSON) and ``out`` with ``.md`` (the table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(table.rstrip("\n") + "\n", encoding="utf-8")
