"""Injected faults matched to the incidents they caused, from the ledger alone.

For each injection: the incident on the same component detected first at or after the
injection (and before the fault ended, plus a grace period, and before the next fault on
that component went in), with time to detect
(injection → detection), time to diagnose (detection → diagnosis), time to repair
(detection → verified healthy), the diagnosed kind against the injected kind, the cycles
the fault hit and how they ended (by time, per fault: an attempt's infra error is the
fault's that was on when the attempt met it, ``_cycles_hit``). A fault no incident
answers is "not detected": shown, never hidden.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import compress
from typing import Any

from sqlalchemy.engine import Connection

from ..ledger import queries
from ..numbers import percentile, rnd

# An incident detected this long after a fault ended still counts as caused by it (a
# one-shot fault is noticed at the next use of the component).
MATCH_GRACE_S = 120.0
_INFRA = ("infra_error", "timeout")

_cycle = queries.column(queries.CycleRow, "cycle")
_verdict = queries.column(queries.CycleRow, "verdict")
_status = queries.column(queries.CycleRow, "status")
_attempt_cycle = queries.column(queries.AttemptRow, "cycle")
_fault_component = queries.column(queries.AttemptRow, "fault_component")


def event_data(raw: Any) -> dict[str, Any]:
    """An event's ``data`` column as a dict ({} when empty or not a JSON object)."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _r(value: float | None, digits: int = 3) -> float | None:
    return rnd(value, digits)


def fault_timeline(conn: Connection, night_id: str) -> dict[str, Any]:
    """The timeline of one night (``overnight faults``); see ``timeline_of``."""
    rows = queries.read_night(conn, night_id)
    if rows is None:
        raise KeyError(night_id)
    return timeline_of(rows)


def timeline_of(rows: queries.NightRows) -> dict[str, Any]:
    """``{"injections": [...], "skipped": [...], "failed": [...], "summary": {...}}``,
    from the night's rows as read once for its report."""
    events = rows.events_of(
        "fault_injected", "fault_cleared", "fault_undo_failed", "fault_skipped", "fault_failed"
    )
    injections: list[dict[str, Any]] = []
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    skipped, failed = [], []
    for ev in events:
        data = event_data(ev["data"])
        key = (str(data.get("fault", "")), int(data.get("occurrence", 1)))
        if ev["kind"] == "fault_injected":
            row = {
                "fault": key[0],
                "occurrence": key[1],
                "spec": data.get("spec"),
                "component": data.get("target") or ev["component"],
                "injected_kind": data.get("kind"),
                "mechanism": data.get("mechanism"),
                "cycle": data.get("cycle"),
                "injected_at": ev["ts"],
                "cleared_at": None,
                "clear_reason": None,
                "undo_failed": False,
            }
            injections.append(row)
            by_key[key] = row
        elif ev["kind"] in ("fault_cleared", "fault_undo_failed") and key in by_key:
            row = by_key[key]
            row["cleared_at"] = ev["ts"]
            row["clear_reason"] = data.get("reason")
            row["undo_failed"] = ev["kind"] == "fault_undo_failed"
        elif ev["kind"] == "fault_skipped":
            skipped.append(
                {"fault": key[0], "occurrence": key[1], "at": ev["ts"], "reason": data.get("reason")}
            )
        elif ev["kind"] == "fault_failed":
            failed.append(
                {
                    "fault": key[0],
                    "occurrence": key[1],
                    "at": ev["ts"],
                    "spec": data.get("spec"),
                    "error": data.get("error"),
                }
            )

    incidents = rows.incidents  # in the order they were detected
    repairs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.repairs:
        if r["result"] != "skipped":  # a strategy that had nothing to do repaired nothing
            repairs[r["incident_id"]].append(r)
    attempts = rows.attempts
    verified = rows.verified_repairs
    # (C code over the cycles and attempts: a long night has hundreds of thousands)
    cycles = rows.cycles
    final = dict(
        zip(map(_cycle, cycles), zip(map(_verdict, cycles), map(_status, cycles), strict=True), strict=True)
    )
    # (attempts in order: a cycle's last one wins)
    last_attempt = dict(zip(map(_attempt_cycle, attempts), attempts, strict=True))
    night = rows.night
    night_end = night.get("ended_at")

    # An incident detected after a later fault on the same component went in answers that
    # later fault: a fault that came and went unseen is "not detected", never credited
    # with the next one's detection.
    next_on_component: dict[int, float] = {}
    last_seen: dict[str, int] = {}
    for i, row in sorted(enumerate(injections), key=lambda item: item[1]["injected_at"]):
        if row["component"] in last_seen:
            next_on_component[last_seen[row["component"]]] = row["injected_at"]
        last_seen[row["component"]] = i

    used: set[int] = set()
    for i, row in enumerate(injections):
        end = row["cleared_at"] if row["cleared_at"] is not None else night_end
        horizon = (end if end is not None else float("inf")) + MATCH_GRACE_S
        if i in next_on_component:
            # (less the same 1 ms the next fault's own match allows before it)
            horizon = min(horizon, next_on_component[i] - 0.001)
        match = next(
            (
                inc
                for inc in incidents
                if inc["id"] not in used
                and inc["component"] == row["component"]
                and row["injected_at"] - 0.001 <= inc["detected_at"] <= horizon
            ),
            None,
        )
        row.update(
            detected=match is not None,
            incident_id=None,
            detected_at=None,
            diagnosed_kind=None,
            diagnosis_correct=None,
            time_to_detect_s=None,
            time_to_diagnose_s=None,
            verified_at=None,
            time_to_healthy_s=None,
            time_to_repair_s=None,
            incident_state=None,
            repairs=[],
        )
        if match is not None:
            used.add(match["id"])
            healthy = (
                _r(match["verified_at"] - match["detected_at"]) if match["verified_at"] is not None else None
            )
            ours = match["state"] == "repaired" and any(
                r["id"] in verified for r in repairs.get(match["id"], [])
            )
            row.update(
                incident_id=match["id"],
                detected_at=match["detected_at"],
                diagnosed_kind=match["fault_kind"],
                diagnosis_correct=match["fault_kind"] == row["injected_kind"],
                time_to_detect_s=_r(match["detected_at"] - row["injected_at"]),
                time_to_diagnose_s=_r(match["diagnosed_at"] - match["detected_at"])
                if match["diagnosed_at"] is not None
                else None,
                verified_at=match["verified_at"],
                # Detection → verified healthy, whatever restored it; "repair" only when a
                # verified repair of ours did (the report's definitions, said once).
                time_to_healthy_s=healthy,
                time_to_repair_s=healthy if ours else None,
                incident_state=match["state"],
                repairs=[
                    {
                        "strategy": r["strategy"],
                        "result": "done" if r["result"] == "ok" else r["result"],  # "ok": older ledgers
                        "verified": r["id"] in verified,
                        "duration_s": _r(r["duration_s"]),
                    }
                    for r in repairs.get(match["id"], [])
                ],
            )
    hits = _cycles_hit(injections, attempts, rows.events_of("component_fault"))
    for i, row in enumerate(injections):
        until = _until(row)
        hit = hits[i]
        verdicts: dict[str | None, int] = defaultdict(int)
        for c in hit:
            verdict, status = final.get(c, (None, None))
            verdicts[verdict if status == "done" else "unfinished"] += 1
        # Product failures whose final attempt ran while the fault was on: shown so a
        # person can check that the fault did not make them (retries never hide them).
        during = sorted(
            c
            for c, a in last_attempt.items()
            if final.get(c, (None, None))[0] == "failed"
            and a.started_at <= until
            and (a.ended_at or 0) >= row["injected_at"]
        )
        row.update(
            cycles_hit=hit,
            hit_verdicts=dict(verdicts),
            # Every hit cycle reached a product verdict (passed or failed) on a later attempt.
            verdicts_kept=all(final.get(c, (None, None))[0] in ("passed", "failed") for c in hit),
            product_failures_during=during,
        )
    return {
        "injections": injections,
        "skipped": skipped,
        "failed": failed,
        "summary": summarise(injections),
    }


def _until(row: dict[str, Any]) -> float:
    """The last moment a fault can have been on: its end, or the verified recovery of the
    incident it caused, whichever is later (a one-shot fault is met after it "ended")."""
    return float(max(x for x in (row["cleared_at"], row["verified_at"], row["injected_at"]) if x is not None))


def _cycles_hit(
    injections: list[dict[str, Any]], attempts: list[queries.AttemptRow], faults_met: list[dict[str, Any]]
) -> list[list[int]]:
    """The cycles each fault hit, by attempt: an attempt that ended in an infra error (or a
    timeout) on a component is credited to the fault on that component that was on when
    the attempt met its error, preferring one of the kind the attempt was given (injected
    or diagnosed), then the latest injected. So of two faults in sequence on one component
    (a 429, then a timeout), each is credited only with the cycles that met it, however
    long the first one's incident stayed open. When an attempt met its error is its first
    ``component_fault`` on that component, else its end."""
    met_at: dict[tuple[int, int, str], float] = {}
    for ev in faults_met:
        if ev["cycle"] is None or ev["attempt"] is None or not ev["component"]:
            continue
        met_at.setdefault((ev["cycle"], ev["attempt"], ev["component"]), ev["ts"])
    hits: list[set[int]] = [set() for _ in injections]
    for a in compress(attempts, map(_fault_component, attempts)):
        component = a.fault_component
        if not component or a.verdict not in _INFRA:
            continue
        met = met_at.get((a.cycle, a.attempt, component), a.ended_at or a.started_at)
        on = [
            i
            for i, row in enumerate(injections)
            if row["component"] == component
            and row["injected_at"] - 0.001 <= met <= _until(row) + 1.0  # (the old grace for a late record)
        ]
        same_kind = [
            i for i in on if a.fault_kind in (injections[i]["injected_kind"], injections[i]["diagnosed_kind"])
        ]
        if on:
            hits[max(same_kind or on, key=lambda i: injections[i]["injected_at"])].add(a.cycle)
    return [sorted(h) for h in hits]


def summarise(injections: list[dict[str, Any]]) -> dict[str, Any]:
    """Per injected kind: count, detected, correctly diagnosed, repaired, p50/p95 TTD/TTR."""
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in injections:
        kinds[str(row["injected_kind"])].append(row)
    per_kind = {}
    for kind, rows in sorted(kinds.items()):
        ttd = [r["time_to_detect_s"] for r in rows if r["time_to_detect_s"] is not None]
        ttr = [r["time_to_repair_s"] for r in rows if r["time_to_repair_s"] is not None]
        tth = [r["time_to_healthy_s"] for r in rows if r["time_to_healthy_s"] is not None]
        per_kind[kind] = {
            "injected": len(rows),
            "detected": sum(1 for r in rows if r["detected"]),
            "diagnosed_correctly": sum(1 for r in rows if r["diagnosis_correct"]),
            "verified": sum(1 for r in rows if r["verified_at"] is not None),
            "time_to_detect_s": {
                "p50": _r(percentile(ttd, 50)),
                "p95": _r(percentile(ttd, 95)),
                "n": len(ttd),
            },
            "time_to_repair_s": {
                "p50": _r(percentile(ttr, 50)),
                "p95": _r(percentile(ttr, 95)),
                "n": len(ttr),
            },
            "time_to_healthy_s": {
                "p50": _r(percentile(tth, 50)),
                "p95": _r(percentile(tth, 95)),
                "n": len(tth),
            },
        }
    detected = [r for r in injections if r["detected"]]
    return {
        "injected": len(injections),
        "detected": len(detected),
        "diagnosed_correctly": sum(1 for r in detected if r["diagnosis_correct"]),
        "diagnosis_accuracy": _r(sum(1 for r in detected if r["diagnosis_correct"]) / len(detected), 4)
        if detected
        else None,
        "verified": sum(1 for r in injections if r["verified_at"] is not None),
        "verdicts_kept": all(r["verdicts_kept"] for r in injections),
        "per_kind": per_kind,
    }
