"""The report page's two timeline charts, drawn over the night's clock time:

- ``cycle-timeline``: one mark per cycle with a start time, placed from its start to its end
  (all attempts), coloured by verdict; parallel cycles stack in lanes; fallback cycles hatched.
  A night of more than ``CYCLE_MARKS_MAX`` cycles is drawn in ``TIME_SLICES`` time slices
  instead: per slice and lane, the cycles that started in it, one mark per verdict (its
  height the verdict's share, its title the counts).
- ``health-timeline``: one row per component, one mark per state segment, per incident
  (detected → verified) and per injected fault (injected → cleared).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from markupsafe import Markup

from .fmt import _d, _epoch, _fault_name, _is_num, _l, _night_tz, _tz_label, fmt_duration, fmt_when
from .model import CycleEntries
from .svg import (
    FONT,
    HEALTH_COLORS,
    VERDICT_COLORS,
    VERDICT_LABELS,
    W,
    _el,
    _legend,
    _no_data,
    _span,
    _svg,
    _text,
    _time_axis,
    _title,
    _v,
)

# More cycles than this, and the cycle timeline draws time slices, not one mark per cycle.
CYCLE_MARKS_MAX = 2000
TIME_SLICES = 120


def _cycles(r: dict[str, Any]) -> Sequence[Any]:
    """The report's cycles: a list, or the ``CycleEntries`` write_reports streams."""
    cycles = r.get("cycles")
    return cycles if isinstance(cycles, Sequence) and not isinstance(cycles, str | bytes) else []


def cycle_timeline_svg(r: dict[str, Any]) -> Markup:
    """One bar per cycle over the night's clock time, in lanes when cycles overlapped."""
    name, label = "cycle-timeline", "Cycle timeline"
    cycles = _cycles(r)
    if len(cycles) > CYCLE_MARKS_MAX:
        return _sliced_cycle_timeline(r, cycles)
    tz = _night_tz(r)
    night_start = _epoch(r.get("started_ts")) or _epoch(r.get("started_at"))
    night_end = _epoch(r.get("ended_ts")) or _epoch(r.get("ended_at"))
    items = []
    for c in cycles:
        if not isinstance(c, dict):
            continue
        s, e = _cycle_span(c, _epoch)
        if s is None:
            continue
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
        # A lane is free again at the cycle's real end: lanes count cycles run at once
        # (a sub-second cycle is drawn min_w wide, over the next one's start if need be).
        lane = next((i for i, free in enumerate(lanes) if free <= s + 1e-9), None)
        if lane is None:
            lanes.append(end)
            lane = len(lanes) - 1
        else:
            lanes[lane] = end
        placed.append((s, end, lane, e is None, c))
    lane_h = 20.0 if len(lanes) <= 12 else max(6.0, 240.0 / len(lanes))
    top = 16.0
    axis_y = top + len(lanes) * lane_h + 4
    body = [
        *_fallback_hatch(),
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
    body += _lane_numbers(len(lanes), x0, top, lane_h)
    legend, fb_y = _verdict_legend(
        axis_y,
        "hatched, dashed outline: ran while a fallback was active",
        {"stroke": "#222222", "stroke_dasharray": "3 2"},
    )
    body.append(legend)
    return _svg(name, fb_y + 10, body, label)


def _lane_numbers(lanes: int, x0: float, top: float, lane_h: float) -> list[str]:
    """Each lane's number beside it, when there are few enough to read."""
    if lanes > 12:
        return []
    return [_text(x0 - 6, top + i * lane_h + lane_h / 2 + 4, i + 1, "end", "tick") for i in range(lanes)]


def _verdict_legend(axis_y: float, fallback_note: str, swatch_outline: dict[str, Any]) -> tuple[str, float]:
    """The verdicts' colours, then the fallback swatch and what it means. Returns the
    legend and the baseline of its last line."""
    legend, lh = _legend(8, axis_y + 52, [(VERDICT_LABELS[k], col) for k, col in VERDICT_COLORS.items()])
    fb_y = axis_y + 52 + lh
    swatch = {"x": 8.0, "y": fb_y - 10, "width": 11, "height": 11, "fill": "#9aa5ad", **swatch_outline}
    legend += _el("rect", swatch | {"class": "swatch"})
    legend += _el(
        "rect", {"x": 8.0, "y": fb_y - 10, "width": 11, "height": 11, "fill": "url(#fallback-hatch)"}
    )
    legend += _text(23.0, fb_y, fallback_note)
    return legend, fb_y


def _fallback_hatch() -> list[str]:
    return [
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
    ]


def _cycle_span(c: dict[str, Any], epoch: Callable[[Any], float | None]) -> tuple[float | None, float | None]:
    """A cycle's start and end as epoch seconds: exact (``started_ts``) where the report
    has them, else from its ISO times (whole seconds)."""
    start = c.get("started_ts") if _is_num(c.get("started_ts")) else epoch(c.get("started_at"))
    end = c.get("ended_ts") if _is_num(c.get("ended_ts")) else epoch(c.get("ended_at"))
    return start, end


# (start, end or None, cycle number, verdict, on a fallback, attempts): what the sliced
# timeline needs of a cycle.
Span = tuple[float, float | None, int, str | None, bool, int]


def _spans(cycles: Sequence[Any], epoch: Callable[[Any], float | None]) -> list[Span]:
    """Each cycle's ``Span`` (cycles without a start left out): from the night's rows for
    the report's own ``CycleEntries`` (no entry is built), else from each entry."""
    if isinstance(cycles, CycleEntries):
        return cycles.spans()
    items: list[Span] = []
    for c in cycles:
        if not isinstance(c, dict):
            continue
        s, e = _cycle_span(c, epoch)
        if s is None:
            continue
        dur = c.get("duration_s") if _is_num(c.get("duration_s")) else None
        if e is None and dur is not None:
            e = s + dur
        verdict = c.get("verdict") if c.get("status", "done") == "done" else None
        number = c["cycle"] if _is_num(c.get("cycle")) else 0
        items.append((s, e, number, verdict, bool(c.get("fallback")), len(_l(c.get("attempts")))))
    return items


def _sliced_cycle_timeline(r: dict[str, Any], cycles: Sequence[Any]) -> Markup:
    """A long night's cycle timeline: the night cut into ``TIME_SLICES`` slices; per slice
    and lane (lanes as in the per-cycle chart, from the cycles' real ends), the cycles
    that started in it, one mark per verdict stacked in the lane, its height the verdict's
    share of them (at least a sliver, so one failure among thousands still shows), its
    title the slice's counts. Marks: at most slices × lanes × verdicts."""
    name, label = "cycle-timeline", "Cycle timeline"
    tz = _night_tz(r)
    night_start = _epoch(r.get("started_ts")) or _epoch(r.get("started_at"))
    night_end = _epoch(r.get("ended_ts")) or _epoch(r.get("ended_at"))
    epoch_of: dict[Any, float | None] = {}  # the entries' times repeat: many cycles a second

    def epoch(x: Any) -> float | None:
        if x.__class__ is not str:
            return _epoch(x)
        t = epoch_of.get(x, -1.0)
        if t == -1.0:
            t = epoch_of[x] = _epoch(x)
        return t

    items = _spans(cycles, epoch)
    if not items:
        return _no_data(name, label)
    # (C code over a long night's cycles: itemgetter, not a lambda per cycle)
    rng = _span([night_start, night_end, *map(itemgetter(0), items), *map(itemgetter(1), items)])
    assert rng is not None
    t0, t1 = rng
    x0, x1 = 40.0, W - 12.0
    slice_s = (t1 - t0) / TIME_SLICES
    slice_w = (x1 - x0) / TIME_SLICES
    items.sort(key=itemgetter(0, 2))  # (start, number)
    # Lanes: a cycle goes to the first lane free at its start, as in the per-cycle chart,
    # but a lane is free again at the cycle's real end (no minimum width to reserve).
    busy: list[tuple[float, int]] = []  # (free from, lane)
    free: list[int] = []  # lanes free now, lowest first
    lanes = 0
    # (slice, lane) -> {verdict: cycles}, and per (slice, lane): on a fallback, retried
    bins: dict[tuple[int, int], dict[str | None, int]] = {}
    extra: dict[tuple[int, int], list[int]] = {}
    push, pop = heapq.heappush, heapq.heappop  # (once a cycle: written out)
    last_slice = TIME_SLICES - 1
    for s, e, _number, verdict, fallback, attempts in items:
        while busy and busy[0][0] <= s + 1e-9:
            push(free, pop(busy)[1])
        if free:
            lane = pop(free)
        else:
            lane, lanes = lanes, lanes + 1
        end = e if e is not None else (night_end if night_end and night_end > s else t1)
        push(busy, (s if s > end else end, lane))
        slot = int((s - t0) / slice_s)
        key = (slot if slot < last_slice else last_slice, lane)
        counts = bins.get(key)
        if counts is None:
            counts = bins[key] = {}
            extra[key] = [0, 0]
        counts[verdict] = counts.get(verdict, 0) + 1
        flags = extra[key]
        flags[0] += fallback
        flags[1] += attempts > 1
    lane_h = 20.0 if lanes <= 12 else max(6.0, 240.0 / lanes)
    top = 16.0
    axis_y = top + lanes * lane_h + 4
    body = [
        *_fallback_hatch(),
        _time_axis(x0, x1, t0, t1, top, axis_y, tz),
        _text(4, 11, "lane", cls="axislbl"),
        _text((x0 + x1) / 2, axis_y + 32, f"time of night ({_tz_label(tz)})", "middle", "axislbl"),
    ]
    order = list(VERDICT_COLORS)
    for (slot, lane), counts in sorted(bins.items()):
        n = sum(counts.values())
        on_fallback, retried = extra[(slot, lane)]
        start = t0 + slot * slice_s
        kinds = [v for v in order if counts.get(v)] + [v for v in counts if v not in VERDICT_COLORS]
        tip = (
            f"from {fmt_when(start, tz)} for {fmt_duration(slice_s)}, lane {lane + 1}: "
            + f"{n:,} {'cycle' if n == 1 else 'cycles'} started: "
            + ", ".join(f"{counts[v]:,} {VERDICT_LABELS.get(v, v)}" for v in kinds)
            + (f"; {on_fallback:,} on a fallback" if on_fallback else "")
            + (f"; {retried:,} with more than one attempt" if retried else "")
        )
        x = x0 + slot * slice_w
        y = top + lane * lane_h + 2
        h = lane_h - 4
        heights = _shares([counts[v] for v in kinds], h, min(1.5, h / len(kinds)))
        for v, part in zip(kinds, heights, strict=True):
            body.append(
                _el(
                    "rect",
                    {
                        "class": "mark cycle-slice" + (" fallback" if on_fallback else ""),
                        "x": x,
                        "y": y,
                        "width": slice_w,
                        "height": part,
                        "fill": VERDICT_COLORS.get(v, "#b0b7bd"),
                        "data_verdict": v or "not done",
                        "data_cycles": counts[v],
                        "data_lane": lane + 1,
                        "data_slice": slot + 1,
                    },
                    _title(tip),
                )
            )
            y += part
        if on_fallback:
            body.append(
                _el(
                    "rect",
                    {
                        "class": "hatch",
                        "x": x,
                        "y": top + lane * lane_h + 2,
                        "width": slice_w,
                        "height": h,
                        "fill": "url(#fallback-hatch)",
                    },
                )
            )
    body += _lane_numbers(lanes, x0, top, lane_h)
    legend, fb_y = _verdict_legend(axis_y, "hatched: some of its cycles ran on a fallback", {})
    note_y = fb_y + FONT + 8
    legend += _text(
        8, note_y, f"{len(items):,} cycles, in {TIME_SLICES} slices of {fmt_duration(slice_s)} each:"
    )
    note_y += FONT + 4
    legend += _text(8, note_y, "per slice and lane, a mark per verdict, as tall as its share")
    body.append(legend)
    return _svg(name, note_y + 10, body, f"{label}: {len(items):,} cycles in {TIME_SLICES} time slices")


def _shares(counts: list[int], total: float, least: float) -> list[float]:
    """``total`` split in proportion to ``counts``, each part at least ``least`` (taken
    from the largest part)."""
    n = sum(counts)
    parts = [max(least, total * k / n) for k in counts]
    over = sum(parts) - total
    if over > 0:
        big = max(range(len(parts)), key=parts.__getitem__)
        parts[big] = max(parts[big] - over, least)
    return parts


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
                # (the live page draws faults before they are matched to an incident)
                + (("; detected" if f.get("detected") else "; not detected") if "detected" in f else "")
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
