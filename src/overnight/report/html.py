"""report.html: the morning report as one self-contained page, rendered from the report dict.

The page needs no network: its CSS is inline, its four charts are inline SVG drawn here in
Python (no JavaScript at all), and a Content-Security-Policy forbids loading anything. Every
number on it comes from the report dict (promise 6); a section without data says so in one
line instead of showing placeholder numbers. Everything from the report is escaped: the
template autoescapes, and the SVG builder below escapes every attribute and text node.

Charts (each an ``<svg class="chart" data-chart="NAME">`` whose data marks carry
``class="mark"`` and a ``<title>`` for hover; with no data: a "no data" text, no marks):

- ``cycle-timeline``: one mark per cycle with a start time, placed from its start to its end
  (all attempts), coloured by verdict; parallel cycles stack in lanes; fallback cycles hatched.
- ``health-timeline``: one row per component, one mark per state segment, per incident
  (detected → verified) and per injected fault (injected → cleared).
- ``step-durations``: one mark per step, a p50 bar with a whisker to p95 and a dot at the mean.
- ``score-distribution``: one mark per score bucket of ``quality.buckets``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from ..numbers import noun

TEMPLATE = "report.html.j2"

VERDICT_COLORS = {
    "passed": "#2e9e4f",
    "failed": "#d64541",
    "infra_error": "#f08c1a",
    "timeout": "#8e44ad",
    "harness_error": "#7f8c8d",
    "failed_on_fallback": "#c0813a",
    None: "#d5d8dc",  # not done (pending)
}
VERDICT_LABELS = {
    "passed": "passed",
    "failed": "failed",
    "infra_error": "infra error",
    "timeout": "timeout",
    "harness_error": "harness error",
    "failed_on_fallback": "failed on a fallback (no product verdict)",
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
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def render_html(report: dict[str, Any]) -> str:
    """The morning report as one HTML page (a str), from the report dict alone."""
    r = report if isinstance(report, dict) else {}
    tz = _night_tz(r)
    agent = _d(r.get("agent"))
    faults = _d(r.get("faults"))
    quality = r.get("quality") if isinstance(r.get("quality"), dict) else None
    failures = _l(r.get("failures"))
    product = [f for f in failures if isinstance(f, dict) and f.get("verdict") == "failed"]
    # Failures on a fallback are no product verdict, nor an infrastructure failure: listed apart.
    other = [
        f
        for f in failures
        if isinstance(f, dict) and f.get("verdict") not in ("failed", "failed_on_fallback")
    ]
    charts = {
        "cycle_timeline": cycle_timeline_svg(r),
        "health_timeline": health_timeline_svg(r),
        "step_durations": step_durations_svg(r),
        "score_distribution": score_distribution_svg(r),
    }
    return (
        _env()
        .get_template(TEMPLATE)
        .render(
            r=r,
            tz=tz,
            tz_label=_tz_label(tz),
            started=_parse_time(r.get("started_at"), tz) or _parse_time(r.get("started_ts"), tz),
            ended=_parse_time(r.get("ended_at"), tz) or _parse_time(r.get("ended_ts"), tz),
            totals=_d(r.get("totals")),
            components=[c for c in _l(r.get("components")) if isinstance(c, dict)],
            agent=agent,
            incidents=[i for i in _l(r.get("incidents")) if isinstance(i, dict)],
            fallbacks=[f for f in _l(r.get("fallbacks")) if isinstance(f, dict)],
            prevented=[p for p in _l(r.get("degradation_prevented")) if isinstance(p, dict)],
            blocked=[b for b in _l(r.get("blocked_attempts")) if isinstance(b, dict)],
            faults=faults,
            injections=[i for i in _l(faults.get("injections")) if isinstance(i, dict)],
            quality=quality,
            product_failures=product,
            fallback_failures=[f for f in _l(r.get("fallback_failures")) if isinstance(f, dict)],
            knob_changes=[k for k in _l(r.get("knob_changes")) if isinstance(k, dict)],
            infra_groups=_group_failures(other),
            flaky=[f for f in _l(r.get("flaky")) if isinstance(f, dict)],
            input_dependent=[f for f in _l(r.get("input_dependent_steps")) if isinstance(f, dict)],
            settings=_d(r.get("protected_settings")),
            choices=_d(r.get("plan_choices")),
            use=_d(r.get("component_use")),
            tokens=_d(r.get("tokens")),
            trend=r.get("trend") if isinstance(r.get("trend"), dict) else None,
            recommendations=[x for x in _l(r.get("recommendations")) if isinstance(x, dict | str)],
            charts=charts,
            verdict_colors=VERDICT_COLORS,
            health_colors=HEALTH_COLORS,
        )
    )


@cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("overnight.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        dur=fmt_duration,
        pct=fmt_pct,
        num=fmt_num,
        when=fmt_when,
        dl=_d,
        ll=_l,
        short=lambda s, n=12: "" if s is None else str(s)[:n],
        link=_relative_link,
        knobs=_fmt_knobs,
        plural=fmt_plural,
        figure=fmt_figure,
    )
    env.globals["yesno"] = _yesno
    env.globals["fault_name"] = _fault_name
    return env


# ------------------------------------------------------------------------------------------ formatting


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


def _group_failures(items: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Infrastructure failures grouped by fault kind; timeouts and harness errors by verdict."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in items:
        if f.get("verdict") == "infra_error":
            key = f"infra error: {f.get('fault_kind') or 'fault kind not diagnosed'}"
        else:
            key = VERDICT_LABELS.get(f.get("verdict"), str(f.get("verdict") or "unknown verdict"))
        groups.setdefault(key, []).append(f)
    return list(groups.items())


# ------------------------------------------------------------------------------------------ SVG builder


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


# ------------------------------------------------------------------------------------------ charts


def cycle_timeline_svg(r: dict[str, Any]) -> Markup:
    """One bar per cycle over the night's clock time, in lanes when cycles overlapped."""
    name, label = "cycle-timeline", "Cycle timeline"
    tz = _night_tz(r)
    night_start = _epoch(r.get("started_ts")) or _epoch(r.get("started_at"))
    night_end = _epoch(r.get("ended_ts")) or _epoch(r.get("ended_at"))
    items = []
    for c in _l(r.get("cycles")):
        if not isinstance(c, dict):
            continue
        s = _epoch(c.get("started_at"))
        if s is None:
            continue
        e = _epoch(c.get("ended_at"))
        dur = c.get("duration_s") if _is_num(c.get("duration_s")) else None
        if e is None and dur is not None:
            e = s + dur
        items.append((s, e, c))
    if not items:
        return _no_data(name, label)
    rng = _span([night_start, night_end, *(s for s, _, _ in items), *(e for _, e, _ in items)])
    assert rng is not None
    t0, t1 = rng
    x0, x1 = 40.0, W - 12.0
    px = (x1 - x0) / (t1 - t0)
    min_w = 2.0
    # Lanes: a cycle goes to the first lane free at its start (sequential nights use one lane).
    lanes: list[float] = []
    placed = []
    for s, e, c in sorted(
        items, key=lambda it: (it[0], it[2]["cycle"] if _is_num(it[2].get("cycle")) else 0)
    ):
        end = e if e is not None else (night_end if night_end and night_end > s else t1)
        end_px = max(end, s + min_w / px)
        lane = next((i for i, free in enumerate(lanes) if free <= s + 1e-9), None)
        if lane is None:
            lanes.append(end_px)
            lane = len(lanes) - 1
        else:
            lanes[lane] = end_px
        placed.append((s, end, lane, e is None, c))
    lane_h = 20.0 if len(lanes) <= 12 else max(6.0, 240.0 / len(lanes))
    top = 16.0
    axis_y = top + len(lanes) * lane_h + 4
    body = [
        "<defs>",
        _el(
            "pattern",
            {
                "id": "fallback-hatch",
                "width": 6,
                "height": 6,
                "patternUnits": "userSpaceOnUse",
                "patternTransform": "rotate(45)",
            },
            _el("line", {"x1": 0, "y1": 0, "x2": 0, "y2": 6, "stroke": "#ffffff", "stroke_width": 2.5}),
        ),
        "</defs>",
        _time_axis(x0, x1, t0, t1, top, axis_y, tz),
        _text(4, 11, "lane", cls="axislbl"),
        _text((x0 + x1) / 2, axis_y + 32, f"time of night ({_tz_label(tz)})", "middle", "axislbl"),
    ]
    for s, end, lane, open_end, c in placed:
        verdict = c.get("verdict") if c.get("status", "done") == "done" else None
        x = x0 + (s - t0) * px
        w = max(min_w, (end - s) * px)
        y = top + lane * lane_h + 2
        h = lane_h - 4
        fallback = bool(c.get("fallback"))
        atts = _l(c.get("attempts"))
        tip = (
            f"cycle {c.get('cycle')}: {VERDICT_LABELS.get(verdict, verdict)}"
            + (" on a fallback" if fallback else "")
            + f"; started {fmt_when(c.get('started_at'), tz)}"
            + (f", ended {fmt_when(c.get('ended_at'), tz)}" if not open_end else ", not ended")
            + (f"; final attempt {fmt_duration(c.get('duration_s'))}" if _is_num(c.get("duration_s")) else "")
            + (f"; {len(atts)} attempts" if len(atts) > 1 else "")
        )
        body.append(
            _el(
                "rect",
                {
                    "class": "mark cycle" + (" fallback" if fallback else ""),
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "fill": VERDICT_COLORS.get(verdict, "#b0b7bd"),
                    "stroke": "#222222" if fallback else None,
                    "stroke_dasharray": "3 2" if fallback else None,
                    "data_cycle": c.get("cycle"),
                    "data_verdict": verdict or "not done",
                },
                _title(tip),
            )
        )
        if fallback:
            body.append(
                _el(
                    "rect",
                    {
                        "class": "hatch",
                        "x": x,
                        "y": y,
                        "width": w,
                        "height": h,
                        "fill": "url(#fallback-hatch)",
                    },
                )
            )
    for i in range(len(lanes)):
        if len(lanes) <= 12:
            body.append(_text(x0 - 6, top + i * lane_h + lane_h / 2 + 4, i + 1, "end", "tick"))
    legend_items = [(VERDICT_LABELS[k], col) for k, col in VERDICT_COLORS.items()]
    legend, lh = _legend(8, axis_y + 52, legend_items)
    fb_x = 8.0
    fb_y = axis_y + 52 + lh
    legend += _el(
        "rect",
        {
            "x": fb_x,
            "y": fb_y - 10,
            "width": 11,
            "height": 11,
            "fill": "#9aa5ad",
            "stroke": "#222222",
            "stroke_dasharray": "3 2",
            "class": "swatch",
        },
    ) + _el("rect", {"x": fb_x, "y": fb_y - 10, "width": 11, "height": 11, "fill": "url(#fallback-hatch)"})
    legend += _text(fb_x + 15, fb_y, "hatched, dashed outline: ran while a fallback was active")
    body.append(legend)
    return _svg(name, fb_y + 10, body, label)


def health_timeline_svg(r: dict[str, Any]) -> Markup:
    """Component health over the night, with incidents and injected faults as markers."""
    name, label = "health-timeline", "Component health timeline"
    tz = _night_tz(r)
    timeline = _d(r.get("health_timeline"))
    incidents = [i for i in _l(r.get("incidents")) if isinstance(i, dict)]
    injections = [i for i in _l(_d(r.get("faults")).get("injections")) if isinstance(i, dict)]
    night_start = _epoch(r.get("started_ts")) or _epoch(r.get("started_at"))
    night_end = _epoch(r.get("ended_ts")) or _epoch(r.get("ended_at"))

    rows = [str(comp) for comp in timeline]
    segs: list[tuple[str, float, str]] = []  # (component, ts, state)
    for comp, changes in timeline.items():
        for ch in _l(changes):
            if isinstance(ch, dict) and _epoch(ch.get("ts")) is not None:
                segs.append((str(comp), _epoch(ch.get("ts")) or 0.0, str(ch.get("state") or "unknown")))
    inc = []
    for i in incidents:
        d = _epoch(i.get("detected_at"))
        if d is None:
            continue
        inc.append((str(i.get("component") or "unknown component"), d, _epoch(i.get("verified_at")), i))
    inj = []
    for f in injections:
        a = _epoch(f.get("injected_at"))
        if a is None:
            continue
        inj.append((str(f.get("component") or "unknown component"), a, _epoch(f.get("cleared_at")), f))
    for comp, *_ in inc + inj:
        if comp not in rows:
            rows.append(comp)
    if not segs and not inc and not inj:
        return _no_data(name, label)
    times = [night_start, night_end]
    times += [t for _, t, _ in segs]
    times += [t for _, a, b, _ in inc + inj for t in (a, b)]
    rng = _span(times)
    assert rng is not None
    t0, t1 = rng
    end_of_night = night_end if night_end is not None else t1
    label_w = 92.0
    x0, x1 = label_w, W - 12.0
    px = (x1 - x0) / (t1 - t0)
    row_h = 30.0
    top = 10.0
    axis_y = top + len(rows) * row_h + 4

    def X(t: float) -> float:
        return x0 + (t - t0) * px

    body = [_time_axis(x0, x1, t0, t1, top, axis_y, tz)]
    for idx, comp in enumerate(rows):
        y = top + idx * row_h
        short = comp if len(comp) <= 12 else comp[:11] + "…"
        body.append(
            _el(
                "text",
                {"x": label_w - 6, "y": y + 19, "text_anchor": "end", "class": "lbl"},
                _title(comp),
                text=short,
            )
        )
        body.append(_el("line", {"x1": x0, "x2": x1, "y1": y + row_h, "y2": y + row_h, "class": "rowline"}))
        changes = sorted((t, s) for c, t, s in segs if c == comp)
        for k, (t, state) in enumerate(changes):
            t_end = changes[k + 1][0] if k + 1 < len(changes) else max(end_of_night, t)
            w = max(1.5, (t_end - t) * px)
            body.append(
                _el(
                    "rect",
                    {
                        "class": "mark segment",
                        "data_kind": "segment",
                        "data_state": state,
                        "x": X(t),
                        "y": y + 10,
                        "width": w,
                        "height": 14,
                        "fill": HEALTH_COLORS.get(state, "#b0b7bd"),
                    },
                    _title(
                        f"{comp}: {state} from {fmt_when(t, tz)}"
                        + (
                            f" to {fmt_when(t_end, tz)}"
                            if k + 1 < len(changes) or night_end
                            else " (night not ended)"
                        )
                    ),
                )
            )
        for c, d, v, i in inc:
            if c != comp:
                continue
            end = v if v is not None else end_of_night
            body.append(
                _el(
                    "line",
                    {"x1": X(d), "x2": X(max(end, d)), "y1": y + 27, "y2": y + 27, "class": "incident-span"},
                )
            )
            tip = (
                f"incident {i.get('id')}: {comp} {i.get('fault_kind') or ''} detected {fmt_when(d, tz)}, "
                + (
                    f"verified healthy {fmt_when(v, tz)}"
                    if v is not None
                    else f"not verified ({i.get('state') or 'open'}"
                    + (f", {i.get('escalation')}" if i.get("escalation") else "")
                    + ")"
                )
            )
            xd = X(d)
            body.append(
                _el(
                    "path",
                    {
                        "class": "mark incident",
                        "data_kind": "incident",
                        "d": f"M{_v(xd)} {_v(y + 21.0)} l-5 8 h10 z",
                        "fill": "#d64541" if v is None else "#1f2d3d",
                    },
                    _title(tip),
                )
            )
        for c, a, b, f in inj:
            if c != comp:
                continue
            end = b if b is not None else end_of_night
            body.append(
                _el(
                    "line",
                    {"x1": X(a), "x2": X(max(end, a)), "y1": y + 3, "y2": y + 3, "class": "fault-span"},
                )
            )
            tip = (
                f"injected fault {_fault_name(f)}: {f.get('injected_kind') or 'kind not recorded'} "
                f"on {comp} at {fmt_when(a, tz)}, "
                + (f"cleared {fmt_when(b, tz)}" if b is not None else "not cleared")
                + ("; detected" if f.get("detected") else "; not detected")
            )
            xa = X(a)
            body.append(
                _el(
                    "path",
                    {
                        "class": "mark fault",
                        "data_kind": "fault",
                        "d": f"M{_v(xa)} {_v(y + 9.0)} l-5 -8 h10 z",
                        "fill": "#8e44ad",
                    },
                    _title(tip),
                )
            )
    body.append(_text((x0 + x1) / 2, axis_y + 32, f"time of night ({_tz_label(tz)})", "middle", "axislbl"))
    legend, lh = _legend(8, axis_y + 52, [(k, v) for k, v in HEALTH_COLORS.items()])
    ly = axis_y + 52 + lh
    legend += _el("path", {"d": f"M13 {_v(ly - 10.0)} l-5 8 h10 z", "fill": "#1f2d3d"})
    legend += _text(24, ly, "incident (line: until verified; red: not verified)")
    ly += FONT + 8
    legend += _el("path", {"d": f"M13 {_v(ly)} l-5 -8 h10 z", "fill": "#8e44ad"})
    legend += _text(24, ly, "fault injected (line: until cleared)")
    body.append(legend)
    return _svg(name, ly + 10, body, label)


def step_durations_svg(r: dict[str, Any]) -> Markup:
    """Per step: a bar to p50, a whisker to p95, a dot at the mean."""
    name, label = "step-durations", "Step durations"
    steps = _d(_d(r.get("durations")).get("steps"))
    rows = [
        (str(k), v)
        for k, v in steps.items()
        if isinstance(v, dict) and any(_is_num(v.get(q)) for q in ("p50", "p95", "mean"))
    ]
    if not rows:
        return _no_data(name, label)
    hi = max(float(v[q]) for _, v in rows for q in ("p50", "p95", "mean") if _is_num(v.get(q)))
    hi = hi if hi > 0 else 1.0
    step = _nice_step(hi)
    top_val = math.ceil(hi / step) * step
    label_w = 100.0
    x0, x1 = label_w, W - 20.0
    row_h = 24.0
    top = 8.0
    axis_y = top + len(rows) * row_h + 4

    def X(v: float) -> float:
        return x0 + v / top_val * (x1 - x0)

    body = [_el("line", {"x1": x0, "x2": x1, "y1": axis_y, "y2": axis_y, "class": "axis"})]
    k = 0
    while k * step <= top_val + 1e-12:
        v = k * step
        body.append(_el("line", {"x1": X(v), "x2": X(v), "y1": top, "y2": axis_y + 4, "class": "grid"}))
        body.append(_text(X(v), axis_y + 16, _tick_duration(v), "middle", "tick"))
        k += 1
    for idx, (step_name, st) in enumerate(rows):
        y = top + idx * row_h
        p50, p95, mean = (st.get(q) if _is_num(st.get(q)) else None for q in ("p50", "p95", "mean"))
        short = step_name if len(step_name) <= 13 else step_name[:12] + "…"
        body.append(
            _el(
                "text",
                {"x": label_w - 6, "y": y + 16, "text_anchor": "end", "class": "lbl"},
                _title(step_name),
                text=short,
            )
        )
        tip = (
            f"{step_name}: {fmt_num(st.get('n'))} runs, p50 {fmt_duration(p50)}, "
            f"p95 {fmt_duration(p95)}, mean {fmt_duration(mean)}"
        )
        bar = p50 if p50 is not None else (mean if mean is not None else 0.0)
        body.append(
            _el(
                "rect",
                {
                    "class": "mark bar",
                    "data_step": step_name,
                    "x": x0,
                    "y": y + 5,
                    "width": max(1.0, X(bar) - x0),
                    "height": 12,
                    "fill": "#3b82c4",
                },
                _title(tip),
            )
        )
        if p95 is not None:
            body.append(
                _el("line", {"x1": X(bar), "x2": X(p95), "y1": y + 11, "y2": y + 11, "class": "whisker"})
            )
            body.append(
                _el("line", {"x1": X(p95), "x2": X(p95), "y1": y + 5, "y2": y + 17, "class": "whisker"})
            )
        if mean is not None:
            body.append(_el("circle", {"cx": X(mean), "cy": y + 11, "r": 3.5, "class": "meandot"}))
    body.append(_text((x0 + x1) / 2, axis_y + 32, "duration per run", "middle", "axislbl"))
    legend = _el("rect", {"x": 8, "y": axis_y + 42, "width": 14, "height": 10, "fill": "#3b82c4"})
    legend += _text(26, axis_y + 51, "p50")
    legend += _el("line", {"x1": 64, "x2": 84, "y1": axis_y + 47, "y2": axis_y + 47, "class": "whisker"})
    legend += _el("line", {"x1": 84, "x2": 84, "y1": axis_y + 42, "y2": axis_y + 52, "class": "whisker"})
    legend += _text(90, axis_y + 51, "p95")
    legend += _el("circle", {"cx": 136, "cy": axis_y + 47, "r": 3.5, "class": "meandot"})
    legend += _text(144, axis_y + 51, "mean")
    body.append(legend)
    return _svg(name, axis_y + 62, body, label)


def score_distribution_svg(r: dict[str, Any]) -> Markup:
    """How many cycles scored in each bucket of quality.buckets."""
    name, label = "score-distribution", "Score distribution"
    quality = _d(r.get("quality"))
    buckets = _d(quality.get("buckets"))
    counts = {k: v for k, v in buckets.items() if _is_num(v)}
    if not counts or not any(counts.values()):
        return _no_data(name, label)
    order = [b for b in SCORE_BUCKETS if b in counts] + [b for b in counts if b not in SCORE_BUCKETS]
    hi: float = max(counts.values())
    step = max(1, int(_nice_step(hi, 4)))
    top_val = math.ceil(hi / step) * step
    x0, x1 = 50.0, W - 10.0
    top, base = 14.0, 150.0

    def Y(v: float) -> float:
        return base - v / top_val * (base - top)

    body = [_el("line", {"x1": x0, "x2": x1, "y1": base, "y2": base, "class": "axis"})]
    v = 0
    while v <= top_val:
        body.append(_el("line", {"x1": x0 - 4, "x2": x1, "y1": Y(v), "y2": Y(v), "class": "grid"}))
        body.append(_text(x0 - 8, Y(v) + 4, v, "end", "tick"))
        v += step
    slot = (x1 - x0) / len(order)
    bar_w = min(90.0, slot * 0.6)
    total = sum(counts.values())
    for i, b in enumerate(order):
        n = counts[b]
        cx = x0 + slot * (i + 0.5)
        h = base - Y(n)
        body.append(
            _el(
                "rect",
                {
                    "class": "mark bar",
                    "data_bucket": b,
                    "x": cx - bar_w / 2,
                    "y": base - h,
                    "width": bar_w,
                    "height": h,
                    "fill": SCORE_COLORS.get(b, "#3b82c4"),
                },
                _title(f"score {b}: {fmt_plural(n, 'cycle')} ({fmt_pct(n / total)})"),
            )
        )
        body.append(_text(cx, base - h - 4, fmt_num(n), "middle", "val"))
        body.append(_text(cx, base + 16, b, "middle", "tick"))
    body.append(
        _text((x0 + x1) / 2, base + 34, f"{quality.get('metric') or 'score'} (bucket)", "middle", "axislbl")
    )
    body.append(
        _text(
            12,
            (top + base) / 2,
            "cycles",
            "middle",
            "axislbl",
            transform=f"rotate(-90 12 {_v((top + base) / 2)})",
        )
    )
    return _svg(name, base + 44, body, label)
