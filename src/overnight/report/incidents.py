"""The parts of the repair agent's record beside its main section: how each incident ended,
what a component's incidents came to, the knobs repairs changed and for how long, the
cycles that failed on a fallback, and what held the event loop."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from ..ledger.queries import AttemptRow
from ..numbers import hhmmss, iso, plural, span
from ..numbers import rnd as _round
from .settings import json_field


def incident_outcome(
    i: dict[str, Any],
    repairs: list[dict[str, Any]],
    fallbacks: list[dict[str, Any]],
    ours: bool,
    skipped: list[dict[str, Any]] | None = None,
) -> str:
    """How an incident ended, in one sentence, from its rows alone (``skipped``: the
    strategies that had nothing to do, with why)."""
    healthy = i["verified_at"]
    down = span(max(healthy - i["detected_at"], 0.0)) if healthy is not None else None
    failed = [r for r in repairs if not r["verified"]]
    tried = f"{plural(len(failed), 'repair attempt')} did not restore it" if failed else "no repair was tried"
    if skipped:
        why = "; ".join(f"{r['strategy']} skipped: {r['detail']}" for r in skipped)
        tried += f" ({why})"
    served = [
        f"served by its {f['kind']} fallback from {hhmmss(f['started_at'])} to "
        + (hhmmss(f["ended_at"]) if f["ended_at"] else "the end of the night")
        for f in fallbacks
    ]
    if ours:
        fixed = next(r for r in repairs if r["verified"])
        earlier = f", after {tried}" if failed else ""
        return f"repaired by {fixed['strategy']}{earlier}; verified healthy by a probe {down} after detection"
    if i["state"] == "transient":
        return f"healthy at the next probe, {down} after detection; nothing to repair"
    if healthy is not None:
        return "; ".join(
            [
                f"down for {down}",
                tried,
                *served,
                f"healthy again at {hhmmss(healthy)} without a verified repair of ours",
            ]
        )
    if i["state"] == "escalated":
        return "; ".join(["not restored", tried, *served, f"escalated ({i['escalation']})"])
    return "; ".join(["not verified healthy by the end of the record", tried, *served])


def health_notes(incidents: list[dict[str, Any]]) -> list[str]:
    """What a component's incidents came to, for System Health: one line per incident that
    was not transient, one for the transient ones."""
    notes = [
        f"incident #{i['id']} ({i['fault_kind']}): {i['outcome']}"
        for i in incidents
        if i["state"] != "transient"
    ]
    transient = [i for i in incidents if i["state"] == "transient"]
    if transient:
        ids = ", ".join(f"#{i['id']}" for i in transient)
        many = plural(len(transient), "transient incident")
        notes.append(f"{many} ({ids}): healthy at the next probe, nothing to repair")
    return notes


def knob_changes(
    events: dict[str, list[dict[str, Any]]],
    attempts: list[AttemptRow],
    report: dict[str, Any],
    night_end: float | None,
) -> list[dict[str, Any]]:
    """Each knob a repair changed, with its time in force: until the next change of that
    knob (its return to the configured value, or a further change) or the end of the
    night, and the cycles an attempt of which ran with it off (the engine's knobs_off marks)."""
    configured = {(c["name"], k): v for c in report.get("components") or [] for k, v in c["knobs"].items()}
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(events["knob_changed"] + events["knob_restored"], key=lambda e: e["ts"]):
        data = json_field(e["data"]) or {}
        if e["component"] and data.get("knob"):
            history[(e["component"], data["knob"])].append({**e, "data": data})
    marks = [(a, json_field(a.knobs_off) or {}) for a in attempts] if history else []
    out = []
    for (component, knob), changes in history.items():
        for k, e in enumerate(changes):
            if e["kind"] != "knob_changed":
                continue
            data = e["data"]
            end = changes[k + 1] if k + 1 < len(changes) else None
            until = end["ts"] if end else night_end
            ran_off = sorted(
                {
                    a.cycle
                    for a, off in marks
                    if knob in (off.get(component) or {})
                    and a.started_at <= (until if until is not None else math.inf)
                    and (a.ended_at or math.inf) >= e["ts"]
                }
            )
            out.append(
                {
                    "component": component,
                    "knob": knob,
                    "configured": configured.get((component, knob)),
                    "from": data.get("from"),
                    "to": data.get("to"),
                    "by": data.get("by"),
                    "incident_id": data.get("incident_id"),
                    "changed_at": iso(e["ts"]),
                    "ended_at": iso(end["ts"]) if end else None,
                    "ended_by": end["kind"] if end else None,
                    "returned_by": end["data"].get("by") if end and end["kind"] == "knob_restored" else None,
                    "in_force_s": _round(until - e["ts"]) if until is not None else None,
                    "cycles": ran_off,
                    "changed_ts": e["ts"],
                }
            )
    out.sort(key=lambda r: r["changed_ts"])
    for row in out:
        del row["changed_ts"]
    return out


def fallback_failures(
    report: dict[str, Any], attempts: list[AttemptRow], fallbacks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Cycles that failed on a fallback (no product verdict), each with the fallback
    periods that served its final attempt: the evidence that it was not tested on the
    primary."""
    final: dict[int, AttemptRow] = {}
    if any(f["verdict"] == "failed_on_fallback" for f in report["failures"]):
        for a in attempts:
            if a.verdict not in (None, "interrupted"):
                final[a.cycle] = a
    out = []
    for f in report["failures"]:
        if f["verdict"] != "failed_on_fallback" or f["cycle"] not in final:
            continue
        a = final[f["cycle"]]
        served = [
            {
                "component": fb["component"],
                "kind": fb["kind"],
                "incident_id": fb["incident_id"],
                "started_at": iso(fb["started_at"]),
                "ended_at": iso(fb["ended_at"]),
            }
            for fb in fallbacks
            if fb["started_at"] <= (a.ended_at or math.inf) and (fb["ended_at"] or math.inf) >= a.started_at
        ]
        keys = ("cycle", "step", "error_type", "error_message", "attempts", "artifacts_dir")
        out.append({**{k: f[k] for k in keys}, "fallbacks": served})
    return out


def repair_result(result: str | None) -> str | None:
    """A repair's result as the report says it. Older ledgers wrote "ok" for an
    action that ran to its end, verified or not; that is "done" (``verified`` says more)."""
    return "done" if result == "ok" else result


def loop_blocked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probes and repairs that held the event loop (froze every cycle meanwhile), by
    component and what ran: how often, the longest stretch, the last time."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        data = json_field(e["data"]) or {}
        by = data.get("by") or "probe"
        what = f"{by} {data['strategy']}" if data.get("strategy") else by
        row = groups.setdefault(
            (e["component"] or "-", what),
            {"component": e["component"], "what": what, "times": 0, "longest_s": 0.0, "total_s": 0.0},
        )
        row["times"] += 1
        row["longest_s"] = max(row["longest_s"], float(data.get("longest_s") or 0.0))
        row["total_s"] = _round(row["total_s"] + float(data.get("held_s") or 0.0))
        row["last_at"] = iso(e["ts"])
    return sorted(groups.values(), key=lambda r: -r["longest_s"])


def loop_lag(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The event loop's lag over the night (the agent samples it every 0.1 s): the worst
    of its sessions."""
    rows = [json_field(e["data"]) or {} for e in events]
    rows = [r for r in rows if isinstance(r.get("max_s"), int | float)]
    if not rows:
        return None
    return {
        "p99_s": _round(max(float(r.get("p99_s") or 0.0) for r in rows)),
        "max_s": _round(max(float(r["max_s"]) for r in rows)),
        "samples": sum(int(r.get("samples") or 0) for r in rows),
    }
