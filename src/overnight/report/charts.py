"""The report page's two bar charts:

- ``step-durations``: one mark per step, a p50 bar with a whisker to p95 and a dot at the mean.
- ``score-distribution``: one mark per score bucket of ``quality.buckets``.
"""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup

from .fmt import _d, _is_num, fmt_duration, fmt_num, fmt_pct, fmt_plural
from .svg import (
    SCORE_BUCKETS,
    SCORE_COLORS,
    W,
    _el,
    _nice_step,
    _no_data,
    _svg,
    _text,
    _tick_duration,
    _title,
    _v,
)


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
