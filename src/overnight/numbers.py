"""Numbers as the reports say them: percentiles, rounding, times, a pass-rate interval.

A leaf module (it imports nothing of overnight), so the report, the fault timeline, the
CLI and the benchmarks share one definition of each.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    return _percentile_of_sorted(sorted(values), q)


def _percentile_of_sorted(data: list[float], q: float) -> float | None:
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rnd(x: float | None, digits: int = 4) -> float | None:
    """Rounded for a report (None stays None)."""
    return None if x is None else round(x, digits)


def duration_stats(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, max and mean of durations (seconds)."""
    data = sorted(values)  # once for both percentiles (a long night has 100,000s of values)
    return {
        "n": len(values),
        "p50": rnd(_percentile_of_sorted(data, 50)),
        "p95": rnd(_percentile_of_sorted(data, 95)),
        "max": rnd(data[-1]) if data else None,
        "mean": rnd(sum(values) / len(values)) if values else None,
    }


def value_stats(values: list[float]) -> dict[str, Any]:
    """n, mean, p50, p95, min and max of measured values (a metric), sorted once."""
    data = sorted(values)
    return {
        "n": len(data),
        "mean": rnd(sum(data) / len(data)) if data else None,
        "p50": rnd(_percentile_of_sorted(data, 50)),
        "p95": rnd(_percentile_of_sorted(data, 95)),
        "min": data[0] if data else None,
        "max": data[-1] if data else None,
    }


def spread(values: list[float]) -> dict[str, Any]:
    """n, p50 and p95: how the report gives times to detect and to repair."""
    return {"n": len(values), "p50": rnd(percentile(values, 50)), "p95": rnd(percentile(values, 95))}


def iso(ts: float | None) -> str | None:
    """Local ISO 8601 with the UTC offset, to the second (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def hhmm(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def hhmmss(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def span(seconds: float) -> str:
    """A duration as a person says it: 4.2 s, 45 s, 30 min, 2.5 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def wilson(passed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a pass rate (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = passed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def noun(count: float, word: str, many: str | None = None) -> str:
    """The form of ``word`` that goes with ``count``: ``cycle`` for 1, ``cycles`` otherwise."""
    return word if count == 1 else (many or word + "s")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 cycle``, ``2 cycles`` (``many`` for irregular plurals)."""
    return f"{count} {noun(count, word, many)}"
