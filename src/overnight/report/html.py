"""report.html: the morning report as one self-contained page, rendered from the report dict.

The page needs no network: its CSS is inline, its four charts are inline SVG drawn in
Python (no JavaScript at all), and a Content-Security-Policy forbids loading anything. Every
number on it comes from the report dict (promise 6); a section without data says so in one
line instead of showing placeholder numbers. Everything from the report is escaped: the
template autoescapes, and the SVG builder (``svg.py``) escapes every attribute and text node.

The template's filters and time helpers are in ``fmt.py``; the charts in ``timelines.py``
(cycle and health timelines) and ``charts.py`` (step durations, score distribution).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from .charts import score_distribution_svg, step_durations_svg
from .fmt import (
    _d,
    _fault_name,
    _fmt_knobs,
    _l,
    _night_tz,
    _parse_time,
    _relative_link,
    _tz_label,
    _yesno,
    fmt_duration,
    fmt_figure,
    fmt_num,
    fmt_pct,
    fmt_plural,
    fmt_when,
)
from .svg import HEALTH_COLORS, VERDICT_COLORS, VERDICT_LABELS
from .timelines import cycle_timeline_svg, health_timeline_svg

TEMPLATE = "report.html.j2"


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
        if isinstance(f, dict) and f.get("verdict") not in ("failed", "failed_on_fallback", "crashed")
    ]
    crashes = [f for f in failures if isinstance(f, dict) and f.get("verdict") == "crashed"]
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
            crashes=crashes,
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
