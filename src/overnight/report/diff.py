"""Two nights side by side: the comparison ``overnight diff`` prints, and the figures the
report's Trend section shows of it (the trend is its short form, against the previous
night).

Pure: what is compared is what the report computed for each night (``side`` takes a
report, or the trend's partial one, and keeps what the comparison reads), so every
number is the report's number, defined once. The one thing a report does not hold is
each cycle's final verdict by input: ``VerdictFlips`` is fed one night's (input seed,
cycle, verdict) rows as they are streamed from the ledger, against the other night's
held compactly, so two long nights' cycle entries are never in memory at once.

Orientation: night ``a`` is the earlier (the trend's ``before``), ``b`` the later
(``now``); a ``delta`` is ``b - a``. Deltas are given only when the two nights ran the
same plan (the same protected settings, plan choices and fault plan): never like for
like otherwise, the figures are shown side by side without them.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from ..numbers import rnd
from ..redaction import MASK
from ..weakening.settings import flatten

DIFF_FORMAT = "overnight-diff"
DIFF_VERSION = 1

# Flipped inputs listed (in the later night's cycle order); the counts cover them all.
FLIPS_SHOWN = 50

PASSED = "passed"


# -- one night -------------------------------------------------------------------------------


def figures(r: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of one night (the trend's): from a report, or a mapping with
    its ``success_rate``, ``cycles_run``, ``totals``, ``durations.cycle``, ``quality``,
    ``tokens`` and ``incidents``."""
    quality = r.get("quality") or {}
    tokens = (r.get("tokens") or {}).get("total") or {}
    run = r.get("cycles_run")
    return {
        "success_rate": r.get("success_rate"),
        "cycles_run": run,
        "failed": r["totals"].get("failed", 0),
        "infra_error": r["totals"].get("infra_error", 0),
        "cycle_p50_s": r["durations"]["cycle"].get("p50"),
        "cycle_p95_s": r["durations"]["cycle"].get("p95"),
        "mean_score": quality.get("mean"),
        "incidents": len(r.get("incidents") or []),
        "tokens_per_cycle": rnd(tokens.get("total_tokens", 0) / run, 1) if run and tokens else None,
    }


def side(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the comparison reads of one night's report, and nothing of its cycle
    entries: a small dict that outlives the report."""
    quality = report.get("quality")
    tokens = report.get("tokens") or {}
    cost = tokens.get("cost")
    incidents: dict[str, dict[str, int]] = {}
    for i in report.get("incidents") or []:
        per = incidents.setdefault(str(i.get("component") or "-"), {})
        kind = str(i.get("fault_kind") or "-")
        per[kind] = per.get(kind, 0) + 1
    durations = report["durations"]

    def spread(stats: Mapping[str, Any]) -> dict[str, Any]:
        return {"n": stats.get("n"), "p50": stats.get("p50"), "p95": stats.get("p95")}

    return {
        "night_id": report["night_id"],
        "scenario": report.get("scenario"),
        "seed": report.get("seed"),
        "status": report.get("status"),
        "verdict": report.get("verdict"),
        "exit_code": report.get("exit_code"),
        "started_at": report.get("started_at"),
        "ended_at": report.get("ended_at"),
        "git_commit": report.get("git_commit"),
        "planned_cycles": report.get("planned_cycles"),
        "cycles_run": report.get("cycles_run"),
        "totals": dict(report["totals"]),
        "success_rate": report.get("success_rate"),
        "figures": figures(report),
        "durations": {
            "cycle": spread(durations["cycle"]),
            "steps": {name: spread(st) for name, st in (durations.get("steps") or {}).items()},
        },
        "incidents": {c: dict(sorted(kinds.items())) for c, kinds in sorted(incidents.items())},
        "tokens": dict(tokens["total"]) if tokens.get("total") else None,
        "cost": {"currency": cost["currency"], "total": cost["total"]} if cost else None,
        "quality": (
            {"metric": quality.get("metric"), "n": quality.get("n"), "mean": quality.get("mean")}
            if quality
            else None
        ),
        "protected_settings": dict(report.get("protected_settings") or {}),
        "plan_choices": dict(report.get("plan_choices") or {}),
        "protected_fingerprint": (report.get("protected_fingerprint") or {}).get("start"),
    }


# -- verdicts per input ----------------------------------------------------------------------


class VerdictFlips:
    """Final verdicts of the inputs two nights both ran (the same input seed: the same
    input), and those that differ. One night's finished cycles are ``held`` (input seed →
    (cycle, verdict)); the other's are given to ``add`` one at a time, as they are
    streamed. ``held_is``: which of the two, ``names``, the held one is; ``names``: how
    the two are called in each flipped input's entry (``("a", "b")``; the trend's
    ``("before", "now")``), the earlier first."""

    def __init__(
        self,
        held: Mapping[str, tuple[int, str | None]],
        held_is: str,
        names: tuple[str, str] = ("a", "b"),
        shown: int = FLIPS_SHOWN,
    ) -> None:
        if held_is not in names:
            raise ValueError(f"held_is must be one of {names}")
        self._held = held
        self._held_first = held_is == names[0]
        self._names = names
        self._shown = shown
        self.common = 0
        self.streamed = 0
        self.flipped = 0
        self.now_passing = 0  # not passed in the earlier night, passed in the later
        self.now_failing = 0  # passed in the earlier night, not in the later
        self._heap: list[tuple[int, int, dict[str, Any]]] = []  # (-later cycle, tie, entry)

    def add(self, input_seed: str, cycle: int, verdict: str | None) -> None:
        """One finished cycle of the streamed night."""
        self.streamed += 1
        other = self._held.get(input_seed)
        if other is None:
            return
        self.common += 1
        if other[1] == verdict:
            return
        self.flipped += 1
        (first_cycle, first), (later_cycle, later) = (
            (other, (cycle, verdict)) if self._held_first else ((cycle, verdict), other)
        )
        if first != PASSED and later == PASSED:
            self.now_passing += 1
        elif first == PASSED and later != PASSED:
            self.now_failing += 1
        entry = {
            "input_seed": input_seed,
            self._names[0]: {"cycle": first_cycle, "verdict": first},
            self._names[1]: {"cycle": later_cycle, "verdict": later},
        }
        item = (-later_cycle, self.flipped, entry)
        if len(self._heap) < self._shown:
            heapq.heappush(self._heap, item)
        elif self._heap and item[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def result(self) -> dict[str, Any]:
        """``inputs_in_common``, ``only_<earlier>`` / ``only_<later>`` (finished inputs one
        night ran and the other did not), ``flipped`` and how (``now_passing``,
        ``now_failing``, ``other``: two verdicts that are not a pass), and ``cycles``:
        the first ``FLIPS_SHOWN`` flipped inputs by the later night's cycle."""
        first, later = self._names
        held_only = len(self._held) - self.common
        streamed_only = self.streamed - self.common
        shown = [entry for _, _, entry in sorted(self._heap, key=lambda x: (-x[0], x[1]))]
        return {
            "inputs_in_common": self.common,
            f"only_{first}": held_only if self._held_first else streamed_only,
            f"only_{later}": streamed_only if self._held_first else held_only,
            "flipped": self.flipped,
            "now_passing": self.now_passing,
            "now_failing": self.now_failing,
            "other": self.flipped - self.now_passing - self.now_failing,
            "cycles": shown,
        }


def flips_text(v: Mapping[str, Any]) -> str:
    """One line: ``3 of 10 inputs in common flipped: 2 now passing, 1 now failing``."""
    common, flipped = v.get("inputs_in_common") or 0, v.get("flipped") or 0
    if not common:
        return "no input in common (a night's inputs derive from its seed: another seed, other inputs)"
    inputs = "input" if common == 1 else "inputs"
    if not flipped:
        return f"none of {common} {inputs} in common flipped: every one has the same final verdict"
    parts = [
        f"{v[key]} {words}"
        for key, words in (("now_passing", "now passing"), ("now_failing", "now failing"), ("other", "other"))
        if v.get(key)
    ]
    return f"{flipped} of {common} {inputs} in common flipped ({', '.join(parts)})"


# -- two nights ------------------------------------------------------------------------------


def delta(a: Any, b: Any, like: bool) -> Any:
    """``b - a`` of two numbers when the nights are like for like; else None."""
    if not like or not _number(a) or not _number(b):
        return None
    return rnd(b - a)


def compare_figures(a: Mapping[str, Any], b: Mapping[str, Any], like: bool) -> dict[str, dict[str, Any]]:
    """Each figure of either night: ``{a, b, delta}``."""
    return {k: {"a": a.get(k), "b": b.get(k), "delta": delta(a.get(k), b.get(k), like)} for k in _keys(a, b)}


def compare(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    plan: Mapping[str, Any],
    verdicts: Mapping[str, Any],
    weakening: Mapping[str, Any],
    weakened: list[dict[str, Any]],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The comparison of two nights' ``side``s. ``plan``: whether they ran the same plan
    (the trend's ``comparison``, of ``b`` against ``a``); ``verdicts``: a
    ``VerdictFlips`` result; ``weakening`` / ``weakened``: the weakening watch's section
    and findings of ``b`` against ``a`` (as the report's, each setting's change named as
    ``setting_change`` names it); ``notes``: what else the reader must know."""
    like = bool(plan.get("comparable"))
    changes = [setting_change(c) for c in weakening.get("settings") or []]

    def pair(x: Any, y: Any) -> dict[str, Any]:
        return {"a": x, "b": y, "delta": delta(x, y, like)}

    steps_a, steps_b = a["durations"]["steps"], b["durations"]["steps"]
    steps = {
        name: {
            q: pair((steps_a.get(name) or {}).get(q), (steps_b.get(name) or {}).get(q))
            for q in ("n", "p50", "p95")
        }
        for name in _keys(steps_a, steps_b)
    }
    incidents = [
        {"component": c, "kind": k, **pair(_count(a, c, k), _count(b, c, k))}
        for c in _keys(a["incidents"], b["incidents"])
        for k in _keys(a["incidents"].get(c) or {}, b["incidents"].get(c) or {})
    ]
    tokens = None
    if a["tokens"] or b["tokens"]:
        ta, tb = a["tokens"] or {}, b["tokens"] or {}
        tokens = {k: pair(ta.get(k), tb.get(k)) for k in _keys(ta, tb)}
    cost = None
    if a["cost"] or b["cost"]:
        ca, cb = a["cost"] or {}, b["cost"] or {}
        same = ca.get("currency") == cb.get("currency") or not (ca and cb)
        cost = {
            "currency": cb.get("currency") or ca.get("currency"),
            "currency_a": ca.get("currency"),
            "currency_b": cb.get("currency"),
            **pair(ca.get("total"), cb.get("total")),
        }
        if not same:
            cost["delta"] = None
    quality = None
    if a["quality"] or b["quality"]:
        qa, qb = a["quality"] or {}, b["quality"] or {}
        quality = {
            "metric": qb.get("metric") or qa.get("metric"),
            "n": pair(qa.get("n"), qb.get("n")),
            "mean": pair(qa.get("mean"), qb.get("mean")),
        }
    return {
        "format": DIFF_FORMAT,
        "version": DIFF_VERSION,
        "a": dict(a),
        "b": dict(b),
        "comparable": like,
        "plan": {
            "comparable": like,
            "settings_differ": [
                {"setting": x.get("key"), "a": x.get("before"), "b": x.get("now")}
                for x in plan.get("settings_differ") or []
            ],
            "choices_a": plan.get("choices_before"),
            "choices_b": plan.get("choices_now"),
            "faults_a": plan.get("faults_before"),
            "faults_b": plan.get("faults_now"),
        },
        "verdicts": {**verdicts, "text": flips_text(verdicts)},
        "figures": compare_figures(a["figures"], b["figures"], like),
        "totals": {
            k: pair(a["totals"].get(k, 0), b["totals"].get(k, 0)) for k in _keys(a["totals"], b["totals"])
        },
        "cycle_durations": {
            q: pair(a["durations"]["cycle"].get(q), b["durations"]["cycle"].get(q))
            for q in ("n", "p50", "p95")
        },
        "steps": steps,
        "incidents": incidents,
        "tokens": tokens,
        "cost": cost,
        "quality": quality,
        "settings": settings_side_by_side(a, b, changes),
        "git_commits": {"a": a.get("git_commit"), "b": b.get("git_commit")},
        "weakening": {
            "mode": weakening.get("mode"),
            "text": weakening.get("text"),
            "settings": changes,
            "code": weakening.get("code"),
            "acknowledged": [c for c in changes if c["acknowledged"] is not None],
            "notes": list(weakening.get("notes") or []),
        },
        "weakened": [_weakened_item(item) for item in weakened],
        "notes": list(notes or []),
    }


def settings_side_by_side(
    a: Mapping[str, Any], b: Mapping[str, Any], changes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every protected setting of either night, dotted, with both values as the reports
    show them (secrets masked), whether each was in the night (``in_a``, ``in_b``), and
    how it changed (``change``: one of ``changes``, as ``setting_change`` gives the
    weakening watch's, or None), in a ``status``: ``changed``, ``unchanged``, or ``not
    known`` (a secret stored masked alike both nights, while the nights' protected
    fingerprints differ and other changes explain it)."""
    was, now = flatten(a["protected_settings"]), flatten(b["protected_settings"])
    by_setting: dict[str, dict[str, Any]] = {}
    for each in changes:
        for name in str(each.get("setting")).split(", "):  # "a, b": secrets seen together
            by_setting[name] = each
    same_fingerprint = a.get("protected_fingerprint") == b.get("protected_fingerprint")
    rows = []
    for name in sorted(set(was) | set(now) | set(by_setting)):
        change = by_setting.get(name)
        if change is not None:
            status = "changed"
        elif _masked(was.get(name)) and not same_fingerprint:
            status = "not known"
        else:
            status = "unchanged"
        rows.append(
            {
                "setting": name,
                "a": was.get(name),
                "b": now.get(name),
                "in_a": name in was,
                "in_b": name in now,
                "status": status,
                "change": {k: v for k, v in change.items() if k not in ("setting", "a", "b")}
                if change
                else None,
            }
        )
    return rows


def setting_change(change: Mapping[str, Any]) -> dict[str, Any]:
    """A change of the weakening watch (``weakening.settings[]`` of report.json) as the
    comparison names its fields: ``setting`` for ``key``, ``a`` / ``b`` for ``before`` /
    ``now``, ``masked`` for ``secret``. (The CLI's output passes through the secret
    net, which masks the value of any field called ``key`` or ``secret``.)"""
    return {
        "setting": change.get("key"),
        "a": change.get("before"),
        "b": change.get("now"),
        "direction": change.get("direction"),
        "classification": change.get("classification"),
        "rule": change.get("rule"),
        "masked": bool(change.get("secret")),
        "acknowledged": change.get("acknowledged"),
        "text": change.get("text"),
    }


def _weakened_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``weakened`` finding, a setting's named as ``setting_change`` names them."""
    if item.get("source") != "settings":
        return dict(item)
    out = {"source": "settings", "setting": item.get("key"), "a": item.get("before"), "b": item.get("now")}
    out.update((k, v) for k, v in item.items() if k not in ("source", "key", "before", "now"))
    return out


def _masked(value: Any) -> bool:
    return isinstance(value, str) and MASK in value


def _keys(*maps: Mapping[str, Any]) -> list[str]:
    """The keys of every map, each once, in the first map's order then the next's."""
    return list(dict.fromkeys(k for m in maps for k in m))


def _count(s: Mapping[str, Any], component: str, kind: str) -> int:
    return int((s["incidents"].get(component) or {}).get(kind, 0))


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


__all__ = [
    "DIFF_FORMAT",
    "DIFF_VERSION",
    "FLIPS_SHOWN",
    "VerdictFlips",
    "compare",
    "compare_figures",
    "delta",
    "figures",
    "flips_text",
    "setting_change",
    "settings_side_by_side",
    "side",
]
