"""The SVG builder the report page's charts share, and their palette and geometry.

Charts (each an ``<svg class="chart" data-chart="NAME">`` whose data marks carry
``class="mark"`` and a ``<title>`` for hover; with no data: a "no data" text, no marks).
Every attribute and text node is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo
from typing import Any

from markupsafe import Markup, escape

VERDICT_COLORS = {
    "passed": "#2e9e4f",
    "failed": "#d64541",
    "infra_error": "#f08c1a",
    "timeout": "#8e44ad",
    "harness_error": "#7f8c8d",
    "failed_on_fallback": "#c0813a",
    "crashed": "#5b2c6f",
    None: "#d5d8dc",  # not done (pending)
}
VERDICT_LABELS = {
    "passed": "passed",
    "failed": "failed",
    "infra_error": "infra error",
    "timeout": "timeout",
    "harness_error": "harness error",
    "failed_on_fallback": "failed on a fallback (no product verdict)",
    "crashed": "crashed (a worker died twice on the same input)",
    None: "not done",
}
HEALTH_COLORS = {
    "healthy": "#2e9e4f",
    "suspect": "#f4d03f",
    "unhealthy": "#d64541",
    "repairing": "#3b82c4",
    "fallback": "#f08c1a",
    "failed": "#7b1e1e",
}
SCORE_BUCKETS = ("0-4.9", "5-6.9", "7-8.9", "9-10")
SCORE_COLORS = {"0-4.9": "#d64541", "5-6.9": "#f08c1a", "7-8.9": "#8bbf3f", "9-10": "#2e9e4f"}

# Chart geometry, in viewBox units (the SVGs scale to the page width).
W = 460
FONT = 12


def _v(x: Any) -> str:
    if isinstance(x, float):
        s = f"{x:.2f}".rstrip("0").rstrip(".")
        return "0" if s == "-0" else s
    return str(x)


def _el(tag: str, attrs: dict[str, Any] | None = None, *children: str, text: Any = None) -> str:
    """One element; attribute names: trailing '_' dropped, '_' → '-'; all values escaped."""
    parts = [f"<{tag}"]
    for k, v in (attrs or {}).items():
        if v is None or v is False:
            continue
        name = k.rstrip("_").replace("_", "-")
        parts.append(f' {name}="{escape(_v(v))}"')
    body = "".join(children) + ("" if text is None else str(escape(str(text))))
    parts.append(f">{body}</{tag}>")
    return "".join(parts)


def _title(text: str) -> str:
    return _el("title", text=text)


def _svg(name: str, height: float, body: Iterable[str], label: str) -> Markup:
    return Markup(
        _el(
            "svg",
            {
                "class": "chart",
                "data_chart": name,
                "viewBox": f"0 0 {W} {_v(float(height))}",
                "width": "100%",
                "role": "img",
                "aria_label": label,
                "preserveAspectRatio": "xMinYMin meet",
            },
            "".join(body),
        )
    )


def _no_data(name: str, label: str, why: str = "no data") -> Markup:
    return Markup(
        _el(
            "svg",
            {
                "class": "chart",
                "data_chart": name,
                "data_empty": "true",
                "viewBox": f"0 0 {W} 60",
                "width": "100%",
                "role": "img",
                "aria_label": f"{label}: {why}",
            },
            _el("rect", {"x": 0.5, "y": 0.5, "width": W - 1, "height": 59, "class": "frame"}),
            _el("text", {"x": W / 2, "y": 35, "text_anchor": "middle", "class": "nodata"}, text=why),
        )
    )


def _text(x: float, y: float, s: Any, anchor: str = "start", cls: str = "lbl", **kw: Any) -> str:
    return _el("text", {"x": x, "y": y, "text_anchor": anchor, "class": cls, **kw}, text=s)


def _legend(x: float, y: float, items: list[tuple[str, str]]) -> tuple[str, float]:
    """Colour swatches wrapped over lines; returns (svg, height used)."""
    out, cx, cy = [], x, y
    for label, color in items:
        w = 16 + len(label) * FONT * 0.6 + 14
        if cx + w > W - 4 and cx > x:
            cx, cy = x, cy + FONT + 8
        out.append(
            _el("rect", {"x": cx, "y": cy - 10, "width": 11, "height": 11, "fill": color, "class": "swatch"})
        )
        out.append(_text(cx + 15, cy, label))
        cx += w
    return "".join(out), cy - y + FONT + 8


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    if raw <= 0:
        return 1.0
    mag: float = 10 ** math.floor(math.log10(raw))  # an int when raw >= 1: tick labels print as ints
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_axis(x0: float, x1: float, t0: float, t1: float, y_top: float, y_axis: float, tz: tzinfo) -> str:
    """Clock-time ticks (in the night's time zone) along [t0, t1] mapped to [x0, x1]."""
    span = max(t1 - t0, 1e-9)
    step = float(next((s for s in _TIME_STEPS if span / s <= 6), _TIME_STEPS[-1]))
    if span / step > 6:  # a span of days: whole days, at most 6 ticks
        step = math.ceil(span / 6 / 86400) * 86400.0
    off = (datetime.fromtimestamp(t0, tz).utcoffset() or timedelta(0)).total_seconds()
    first = math.ceil((t0 + off) / step) * step - off
    fmt = "%H:%M:%S" if step < 60 else ("%H:%M" if span < 86400 else "%m-%d %H:%M")
    out = [_el("line", {"x1": x0, "x2": x1, "y1": y_axis, "y2": y_axis, "class": "axis"})]
    t = first
    while t <= t1 + 1e-9:
        x = x0 + (t - t0) / span * (x1 - x0)
        out.append(_el("line", {"x1": x, "x2": x, "y1": y_top, "y2": y_axis + 4, "class": "grid"}))
        out.append(_text(x, y_axis + 16, datetime.fromtimestamp(t, tz).strftime(fmt), "middle", "tick"))
        t += step
    return "".join(out)


def _tick_duration(v: float) -> str:
    if v == 0:
        return "0"
    if v < 1:
        return f"{v * 1000:g} ms"
    if v < 120:
        return f"{v:g} s"
    if v < 7200:
        return f"{v / 60:g} min"
    return f"{v / 3600:g} h"


def _span(times: Iterable[float | None]) -> tuple[float, float] | None:
    ts = [t for t in times if t is not None]
    if not ts:
        return None
    lo, hi = min(ts), max(ts)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return lo, hi
