"""The report page's formatting: the template's filters (durations, percentages, numbers,
plurals, times in the night's time zone) and the lenient readers of the report dict they
share with the charts."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..numbers import noun

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _d(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _l(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_duration(x: Any) -> str:
    if not _is_num(x):
        return "–"
    if x < 0:
        return "-" + fmt_duration(-x)
    if x < 1:
        return f"{x * 1000:.0f} ms"
    if x < 120:
        return f"{x:.2f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


def fmt_pct(x: Any, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f}%" if _is_num(x) else "–"


def fmt_num(x: Any, signed: bool = False) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not _is_num(x):
        return "–" if x is None else str(x)
    sign = "+" if signed and x > 0 else ""
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e15):
        return f"{sign}{int(x):,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{sign}{x:,.0f}"
    if ax >= 10:
        return f"{sign}{x:.1f}"
    return f"{sign}{x:.3g}"


def fmt_plural(x: Any, word: str, many: str | None = None) -> str:
    """``1 cycle``, ``1,200 cycles``: the count as ``num`` shows it, the word that goes with it."""
    return f"{fmt_num(x)} {noun(x if _is_num(x) else 0, word, many)}"


def fmt_figure(x: Any, name: str, change: bool = False) -> str:
    """A trend figure as the summary shows it: the success rate in percent (its change in
    percentage points), the rest as numbers."""
    if name == "success_rate" and _is_num(x):
        return f"{'+' if change and x > 0 else ''}{x * 100:.1f} pp" if change else fmt_pct(x)
    return fmt_num(x, signed=change)


def _yesno(x: Any) -> str:
    return "–" if x is None else ("yes" if x else "no")


def _fmt_knobs(knobs: Any) -> str:
    if not isinstance(knobs, dict) or not knobs:
        return ""
    parts = []
    for k, v in knobs.items():
        if isinstance(v, list | tuple) and len(v) == 2:
            parts.append(f"{k}: {v[0]} → {v[1]}")
        else:
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


def _relative_link(path: Any) -> str | None:
    """The artifacts folder as a relative link, or None when it is not a plain relative path."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or _SCHEME.match(path):
        return None
    return path.rstrip("/") + "/"


def _parse_time(x: Any, tz: tzinfo | None = None) -> datetime | None:
    """An ISO 8601 string or an epoch number as an aware datetime (in tz when given)."""
    if _is_num(x):
        try:
            return datetime.fromtimestamp(float(x), tz or UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(x, str) and x:
        try:
            dt = datetime.fromisoformat(x)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz or UTC)
        return dt.astimezone(tz) if tz else dt
    return None


def _epoch(x: Any) -> float | None:
    dt = _parse_time(x)
    return dt.timestamp() if dt else None


def _night_tz(r: dict[str, Any]) -> tzinfo:
    dt = _parse_time(r.get("started_at")) or _parse_time(r.get("ended_at"))
    return dt.tzinfo if dt and dt.tzinfo else UTC


def _tz_label(tz: tzinfo) -> str:
    off = datetime.now(tz).utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def fmt_when(x: Any, tz: tzinfo | None = None, date: bool = False) -> str:
    """A time from the report (ISO string or epoch) as local clock time of the night."""
    dt = _parse_time(x, tz)
    if dt is None:
        return "–" if x is None else str(x)
    return dt.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def _fault_name(f: dict[str, Any]) -> str:
    name, spec = f.get("fault"), f.get("spec")
    if name and spec and spec != name:
        return f"{name} ({spec})"
    return str(name or spec or "unnamed")
