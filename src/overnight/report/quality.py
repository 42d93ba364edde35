"""The report's quality, metrics and token sections: scores and weaknesses of final
attempts, numeric metrics, and tokens with their cost at the night's prices."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import chain, compress, islice, repeat
from operator import eq, neg
from typing import Any

from ..ledger.queries import CallEvent, CycleRow, column
from ..numbers import rnd as _round
from ..numbers import value_stats
from .settings import json_field

# Metric values repeat (a score with one decimal, a weakness from a short list): each
# distinct recorded JSON is parsed once, up to this many of them.
_PARSED_MAX = 4096
# Metric events handled at a time.
_CHUNK = 4096
_cycle_of = column(CallEvent, "cycle")
_attempt_of = column(CallEvent, "attempt")
_data_of = column(CallEvent, "data")


def _chunks(events: Iterable[CallEvent]) -> Iterator[list[CallEvent]]:
    it = iter(events)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


BUCKETS = (("9-10", 9.0, 10.0), ("7-8.9", 7.0, 9.0), ("5-6.9", 5.0, 7.0), ("0-4.9", 0.0, 5.0))


# -- quality, metrics, flaky steps --------------------------------------------------------------


def final_attempts(cycles: list[CycleRow]) -> dict[int, int]:
    """Each finished cycle's final attempt."""
    done = list(map(eq, map(_status, cycles), repeat("done")))
    return dict(
        zip(compress(map(_number, cycles), done), compress(map(_attempts, cycles), done), strict=True)
    )


_number = column(CycleRow, "cycle")
_status = column(CycleRow, "status")
_attempts = column(CycleRow, "attempts")


def quality_section(
    metric_events: Iterable[CallEvent], final: dict[int, int], settings: dict[str, Any]
) -> dict[str, Any] | None:
    return quality_and_metrics(metric_events, final, settings)[0]


# One recorded metric, as the loop below needs it: ((name, step), value) with a number as a
# float and a text stripped; (None, None) for anything else.
_Entry = tuple[tuple[str, str | None] | None, float | str | None]
_NOTHING: _Entry = (None, None)


def _entry(data: dict[str, Any]) -> _Entry:
    name, value, step = data.get("name"), data.get("value"), data.get("step")
    if not isinstance(name, str):
        return _NOTHING
    key = (name, step if isinstance(step, str) else None)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return key, float(value)
    if isinstance(value, str):
        return key, value.strip()
    return _NOTHING


def quality_and_metrics(
    metric_events: Iterable[CallEvent], final: dict[int, int], settings: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """The quality section (None without ``settings``, or without scores and weaknesses),
    the numeric metrics (per name: n, mean, p50, p95, min, max, and the same per step
    where a step was recorded) and the text metrics (per name: n, distinct values, the
    most frequent ones, counts per step), each event's data parsed once. Only what a
    cycle's final attempt measured counts (``final``: cycle → its final attempt, as
    ``final_attempts`` gives it)."""
    score_metric = settings["score_metric"] if settings else None
    weakness_metric = settings["weakness_metric"] if settings else None
    numbers: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    texts: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    scores: dict[int | None, float] = {}
    weaknesses: Counter[str] = Counter()
    parsed: dict[Any, _Entry] = {}  # the same recorded JSON, read once (up to _PARSED_MAX kinds)
    # A chunk of events at a time, each distinct recorded JSON of it handled once with its
    # count (the order a value or text was first met kept; the figures' values are sorted).
    for chunk in _chunks(metric_events):
        # Only the final attempts' events count: a retried attempt's measurements do not.
        kept = list(compress(chunk, map(eq, map(final.get, map(_cycle_of, chunk)), map(_attempt_of, chunk))))
        recorded = list(map(_data_of, kept))
        score_of: dict[Any, float] = {}  # the recorded JSON of a score, and its value
        for raw, n in Counter(recorded).items():
            entry = parsed.get(raw) if raw.__class__ is str else None
            if entry is None:
                entry = _entry(json_field(raw) or {})
                if raw.__class__ is str and len(parsed) < _PARSED_MAX:
                    parsed[raw] = entry
            key, value = entry
            if key is None:
                continue
            if isinstance(value, float):
                numbers[key].extend(repeat(value, n))
                if key[0] == score_metric:
                    score_of[raw] = value
            elif value is not None:
                texts[key][value] += n
                if key[0] == weakness_metric:
                    weaknesses[value] += n
        if score_of:
            # Each cycle's score: its last (an event of no cycle is dropped below).
            pairs = zip(map(_cycle_of, kept), map(score_of.get, recorded, repeat(0.0)), strict=True)
            scores.update(compress(pairs, map(score_of.__contains__, recorded)))
    scores.pop(None, None)
    metrics = _numeric_metrics(numbers)
    text_metrics = _text_metrics(texts)
    if settings is None or (not scores and not weaknesses):
        return None, metrics, text_metrics
    buckets = {name: 0 for name, _, _ in BUCKETS}
    for v in scores.values():
        for name, lo, hi in BUCKETS:
            if lo <= v < hi or (hi == 10.0 and v == 10.0):
                buckets[name] += 1
                break
    # Ranked by score, then cycle: (-score, cycle) pairs sorted by C code, no key per score.
    ranked = sorted(zip(map(neg, scores.values()), scores.keys(), strict=True))
    k = min(3, len(ranked) // 2)  # best and worst never overlap
    quality = {
        "metric": settings["score_metric"],
        "n": len(scores),
        "mean": _round(sum(scores.values()) / len(scores)) if scores else None,
        "buckets": buckets,
        "best": [{"cycle": c, "score": -v} for v, c in ranked[:k]],
        "worst": [{"cycle": c, "score": -v} for v, c in reversed(ranked[len(ranked) - k :])] if k else [],
        "weaknesses": [{"text": t, "count": n} for t, n in weaknesses.most_common(5)],
    }
    return quality, metrics, text_metrics


def _numeric_metrics(numbers: dict[tuple[str, str | None], list[float]]) -> dict[str, Any]:
    """name → its figures over every final attempt, and per step (in the order the steps
    were first seen) when the metric was recorded inside one."""
    by_name: dict[str, dict[str | None, list[float]]] = defaultdict(dict)
    for (name, step), values in numbers.items():
        by_name[name][step] = values
    out: dict[str, Any] = {}
    for name in sorted(by_name):
        per_step = by_name[name]
        every = next(iter(per_step.values())) if len(per_step) == 1 else list(chain(*per_step.values()))
        out[name] = {
            **value_stats(every),
            "steps": {step: value_stats(v) for step, v in per_step.items() if step is not None},
        }
    return out


def _text_metrics(texts: dict[tuple[str, str | None], Counter[str]]) -> dict[str, Any]:
    """name → how often it was recorded, how many distinct texts, the 5 most frequent, and
    how often per step."""
    by_name: dict[str, dict[str | None, Counter[str]]] = defaultdict(dict)
    for (name, step), counts in texts.items():
        by_name[name][step] = counts
    out: dict[str, Any] = {}
    for name in sorted(by_name):
        per_step = by_name[name]
        every: Counter[str] = Counter()
        for counts in per_step.values():
            every.update(counts)
        out[name] = {
            "n": every.total(),
            "distinct": len(every),
            "top": [{"text": t, "count": n} for t, n in every.most_common(5)],
            "steps": {step: c.total() for step, c in per_step.items() if step is not None},
        }
    return out


# -- tokens and cost ---------------------------------------------------------------------------


def tokens_section(usage: Iterable[CallEvent], settings: dict[str, Any]) -> dict[str, Any] | None:
    """Tokens in total, per step and per model, and their cost; None without usage."""

    def empty() -> dict[str, int]:
        return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    total = empty()
    per_step: defaultdict[str, dict[str, int]] = defaultdict(empty)
    per_model: defaultdict[str, dict[str, int]] = defaultdict(empty)
    for e in usage:
        data = json_field(e.data) or {}
        for bucket in (total, per_step[data.get("step") or "-"], per_model[data.get("model") or "-"]):
            bucket["calls"] += 1
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                bucket[key] += int(data.get(key) or 0)
    if not total["calls"]:
        return None
    cost = None
    prices = settings["prices"]
    if prices:
        amounts = {}
        unpriced = []
        for model, t in per_model.items():
            price = prices.get(model)
            if price is None:
                unpriced.append(model)
                continue
            amounts[model] = round(
                t["prompt_tokens"] / 1000 * float(price["prompt"])
                + t["completion_tokens"] / 1000 * float(price["completion"]),
                4,
            )
        cost = {
            "currency": settings["currency"],
            "total": round(sum(amounts.values()), 4),
            "per_model": amounts,
            "unpriced_models": sorted(unpriced),
        }
    return {"total": total, "per_step": dict(per_step), "per_model": dict(per_model), "cost": cost}
