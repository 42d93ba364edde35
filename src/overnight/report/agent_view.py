"""The repair agent's section of the report: system health per component, incidents with
their outcomes, repairs, fallbacks, injected faults and the agent's own figures, from the
ledger's rows."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from itertools import compress
from typing import Any

from ..ledger.queries import AttemptRow, CycleRow, column
from ..numbers import iso, spread
from ..numbers import rnd as _round
from .incidents import health_notes, incident_outcome, loop_blocked, loop_lag, repair_result
from .settings import json_field

_fault_component = column(AttemptRow, "fault_component")


def agent_section(
    report: dict[str, Any],
    incidents: list[dict[str, Any]],
    repairs: list[dict[str, Any]],
    fallbacks: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    events: dict[str, list[dict[str, Any]]],
    attempts: list[AttemptRow],
    cycles: list[CycleRow],
    faults: dict[str, Any],
    verified_repairs: set[int] | None = None,
) -> dict[str, Any]:
    if verified_repairs is not None:
        # "Verified" is the agent's flag *and* the healthy probe that earned it (one
        # definition: NightRows.verified_repairs); a flag without the probe is not evidence.
        repairs = [{**r, "verified": r["id"] in verified_repairs} for r in repairs]
    # A strategy that had nothing to do (reconnect on a component with no client) did not
    # repair anything: listed apart with its reason, never counted as a repair performed.
    skipped = [r for r in repairs if repair_result(r["result"]) == "skipped"]
    repairs = [r for r in repairs if repair_result(r["result"]) != "skipped"]
    skipped_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in skipped:
        skipped_of[r["incident_id"]].append({"strategy": r["strategy"], "detail": r["detail"]})
    unmonitored = {e["component"] for e in events["unmonitored"]}
    last_probe: dict[str, dict[str, Any]] = {}
    first_probe: dict[str, dict[str, Any]] = {}
    for probe in probes:
        last_probe[probe["component"]] = probe
        first_probe.setdefault(probe["component"], probe)
    incident_by_id = {i["id"]: i for i in incidents}
    injected = {r["incident_id"]: r for r in faults["injections"] if r.get("incident_id") is not None}
    failed_calls: dict[str, list[float]] = defaultdict(list)
    for e in events["component_fault"]:
        if e["component"]:
            failed_calls[e["component"]].append(e["ts"])
    fallbacks_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in fallbacks:
        fallbacks_of[f["incident_id"]].append(f)

    def time_to_detect(i: dict[str, Any]) -> float | None:
        """The one definition: from the fault's first known moment to the incident. An
        injected fault's start is known; otherwise a cycle's failed call is the first
        evidence; a fault a periodic probe found started at an unknown moment: None."""
        match = injected.get(i["id"])
        if match is not None:
            ttd: float | None = match["time_to_detect_s"]
            return ttd
        if i["trigger"] == "signal":
            earlier = [t for t in failed_calls.get(i["component"], []) if t <= i["detected_at"] + 1e-6]
            return _round(i["detected_at"] - max(earlier), 3) if earlier else 0.0
        return None

    def time_to_healthy(i: dict[str, Any]) -> float | None:
        """Detection → verified healthy by a probe, whatever (or whoever) restored it."""
        return _round(i["verified_at"] - i["detected_at"]) if i["verified_at"] is not None else None

    def cycle_of(component: str, t0: float, t1: float | None) -> int | None:
        hit: list[int] = [
            a.cycle
            for a in attempts
            if a.fault_component == component and a.ended_at and t0 - 1 <= a.ended_at <= (t1 or math.inf)
        ]
        if hit:
            return min(hit)
        running = [a.cycle for a in attempts if a.started_at <= t0 <= (a.ended_at or math.inf)]
        return min(running) if running else None

    # "Repaired" is said of an incident only when a repair of ours was followed by a
    # healthy probe (promise 6): its state is ``repaired`` and that repair's row is verified.
    # Anything else that ended healthy came back by itself, by a person's hand, or after a
    # fallback, and is said so.
    verified_repair: dict[int, dict[str, Any]] = {}
    for r in repairs:
        if r["verified"]:
            verified_repair.setdefault(r["incident_id"], r)

    def repaired_by_us(i: dict[str, Any]) -> bool:
        return i["state"] == "repaired" and i["id"] in verified_repair

    repair_rows = []
    for r in repairs:
        inc = incident_by_id.get(r["incident_id"], {})
        repair_rows.append(
            {
                "id": r["id"],
                "incident_id": r["incident_id"],
                "component": r["component"],
                "fault_kind": inc.get("fault_kind"),
                "cycle": cycle_of(
                    r["component"], inc.get("detected_at", r["started_at"]), inc.get("verified_at")
                ),
                "started_at": iso(r["started_at"]),
                "strategy": r["strategy"],
                # The action's own time: raising a timeout takes no time, restoring the
                # service may take long; the second is time_to_healthy_s.
                "duration_s": _round(r["duration_s"]),
                "result": repair_result(r["result"]),
                "verified": bool(r["verified"]),
                "time_to_healthy_s": time_to_healthy(inc)
                if r["verified"] and inc and repaired_by_us(inc) and verified_repair[inc["id"]] is r
                else None,
                "knobs_changed": json_field(r["knobs_changed"]) or {},
                "detail": r["detail"],
            }
        )
    repairs_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in repair_rows:
        repairs_of[row["incident_id"]].append(row)
    incident_rows = []
    for i in incidents:
        match = injected.get(i["id"])
        ours = repaired_by_us(i)
        incident_rows.append(
            {
                "id": i["id"],
                "component": i["component"],
                "fault_kind": i["fault_kind"],
                "trigger": i["trigger"],
                "detected_at": iso(i["detected_at"]),
                "diagnosed_at": iso(i["diagnosed_at"]),
                "verified_at": iso(i["verified_at"]),
                "detected_ts": i["detected_at"],
                "verified_ts": i["verified_at"],
                "state": i["state"],
                "escalation": i["escalation"],
                "detail": i["detail"],
                "cycle": cycle_of(i["component"], i["detected_at"], i["verified_at"]),
                "time_to_detect_s": time_to_detect(i),
                "time_to_healthy_s": time_to_healthy(i),
                "time_to_repair_s": time_to_healthy(i) if ours else None,
                "repaired_by_us": ours,
                "outcome": incident_outcome(
                    i,
                    repairs_of.get(i["id"], []),
                    fallbacks_of.get(i["id"], []),
                    ours,
                    skipped_of.get(i["id"], []),
                ),
                "repairs_skipped": skipped_of.get(i["id"], []),
                "repairs": [
                    {
                        k: row[k]
                        for k in (
                            "strategy",
                            "started_at",
                            "duration_s",
                            "verified",
                            "result",
                            "time_to_healthy_s",
                        )
                    }
                    for row in repairs_of.get(i["id"], [])
                ],
                "injected": {
                    k: match[k]
                    for k in (
                        "fault",
                        "spec",
                        "injected_kind",
                        "injected_at",
                        "time_to_detect_s",
                        "diagnosis_correct",
                    )
                }
                if match
                else None,
            }
        )
    # One definition of a repair, for every section that counts them: a row of the
    # repairs table (an action the agent started, whatever its result); "verified" only
    # when a healthy probe followed it.
    performed: Counter[str] = Counter(r["component"] for r in repairs)
    verified: Counter[str] = Counter(r["component"] for r in repairs if r["verified"])
    health = []
    for comp in report.get("components") or []:
        name = comp["name"]
        p = last_probe.get(name)
        if name in unmonitored:
            state = "unmonitored"
        elif p is None:
            state = "never probed"
        else:
            state = "healthy" if p["healthy"] else "unhealthy"
        mine = [row for row in incident_rows if row["component"] == name]
        health.append(
            {
                "component": name,
                "type": comp.get("type"),
                "sandbox": comp.get("sandbox"),
                "state": state,
                "last_probe_at": iso(p["ts"]) if p else None,
                "last_probe_trigger": p["trigger"] if p else None,
                "last_probe_latency_s": _round(p["latency_s"]) if p else None,
                "last_probe_detail": p["detail"] if p else None,
                "repairs": performed.get(name, 0),
                "repairs_verified": verified.get(name, 0),
                "incidents": len(mine),
                "incidents_repaired": sum(1 for row in mine if row["repaired_by_us"]),
                "notes": health_notes(mine),
            }
        )
    fallback_rows = []
    for f in fallbacks:
        end = f["ended_at"]
        touched = [
            c.cycle
            for c in cycles
            if c.fallback
            and c.started_at <= (end or math.inf)
            and (c.ended_at or math.inf) >= f["started_at"]
        ]
        fallback_rows.append(
            {
                "component": f["component"],
                "kind": f["kind"],
                "incident_id": f["incident_id"],
                "started_at": iso(f["started_at"]),
                "ended_at": iso(end),
                "duration_s": _round(end - f["started_at"]) if end else None,
                "cycles": touched,
            }
        )
    prevented = []
    for i in incidents:
        avoided = json_field(i["degradation_avoided"])
        # Ledgers written before the agent knew better recorded a shortcut "not taken" for
        # incidents its fallback served: that claim contradicts the fallback row.
        if avoided and i["id"] not in fallbacks_of:
            prevented.append({"incident_id": i["id"], "component": i["component"], **avoided})
    blocked = []
    for e in events["degradation_blocked"]:
        data = json_field(e["data"]) or {}
        blocked.append(
            {
                "at": iso(e["ts"]),
                "component": e["component"],
                "by": data.get("by"),
                "attempted": data.get("attempted"),
                "reason": data.get("reason"),
                "message": e["message"],
            }
        )
    # (A repair the guard refused is in the list once, by its degradation_blocked event:
    # every refusal of the guard records one.)
    ttd = [r["time_to_detect_s"] for r in incident_rows if r["time_to_detect_s"] is not None]
    ttr = [r["time_to_repair_s"] for r in incident_rows if r["time_to_repair_s"] is not None]
    waits = [
        r["duration_s"]
        for r in repairs
        if r["strategy"] == "wait_retry_after" and r["duration_s"] is not None
    ]
    by_component: dict[str, dict[str, int]] = defaultdict(lambda: {"repairs": 0, "verified": 0, "failed": 0})
    for r in repairs:
        row = by_component[r["component"]]
        row["repairs"] += 1
        row["verified" if r["verified"] else "failed"] += 1
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"incidents": 0, "restored": 0, "repaired": 0})
    for row in incident_rows:
        counts = by_kind[row["fault_kind"]]
        counts["incidents"] += 1
        if row["verified_ts"] is not None:
            counts["restored"] += 1
        if row["repaired_by_us"]:
            counts["repaired"] += 1
    timeline = health_timeline(
        [c["name"] for c in report.get("components") or []],
        unmonitored,
        first_probe,
        events["component_state"],
    )
    # InfraErrors naming a component the config does not declare (a scenario's own
    # ``InfraError("api", …)``): no probe watched it, no incident or repair could follow,
    # and a later pass of those cycles is a retry's, not a repair's.
    declared = {c["name"] for c in report.get("components") or []}
    undeclared: dict[str, dict[str, Any]] = {}
    for a in compress(attempts, map(_fault_component, attempts)):
        name = a.fault_component
        if not name or name in declared or a.verdict != "infra_error":
            continue
        row = undeclared.setdefault(name, {"component": name, "fault_kinds": [], "attempts": 0, "cycles": []})
        row["attempts"] += 1
        if a.fault_kind and a.fault_kind not in row["fault_kinds"]:
            row["fault_kinds"].append(a.fault_kind)
        if a.cycle not in row["cycles"]:
            row["cycles"].append(a.cycle)
    final = {c.cycle: c.verdict for c in cycles if c.status == "done"} if undeclared else {}
    for row in undeclared.values():
        row["cycles"].sort()
        row["passed_later"] = [c for c in row["cycles"] if final.get(c) == "passed"]
    return {
        "agent": {
            "system_health": health,
            "repairs": repair_rows,
            "repairs_total": len(repair_rows),
            "repairs_verified": sum(1 for r in repair_rows if r["verified"]),
            "repairs_skipped": [
                {
                    "incident_id": r["incident_id"],
                    "component": r["component"],
                    "strategy": r["strategy"],
                    "at": iso(r["started_at"]),
                    "detail": r["detail"],
                }
                for r in skipped
            ],
            "loop_blocked": loop_blocked(events["loop_blocked"]),
            "loop_lag": loop_lag(events["loop_lag"]),
            "restarts": [
                {"at": iso(e["ts"]), "component": e["component"], "message": e["message"]}
                for e in events["agent_restarted"]
            ],
            "time_to_detect_s": spread(ttd),
            "time_to_repair_s": spread(ttr),
            "retry_after_waits_s": spread(waits),
            "by_component": dict(by_component),
            "by_fault_kind": dict(by_kind),
            "unmonitored": sorted(unmonitored),
            "undeclared": sorted(undeclared.values(), key=lambda r: str(r["component"])),
        },
        "incidents": incident_rows,
        "fallbacks": fallback_rows,
        "degradation_prevented": prevented,
        "blocked_attempts": blocked,
        "health_timeline": timeline,
    }


def health_timeline(
    names: Iterable[str],
    unmonitored: Collection[str],
    first_probe: Mapping[str, Mapping[str, Any]],
    state_events: Iterable[Mapping[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Each monitored component's states over the night, ``{name: [{ts, state}, …]}`` in
    time order: its first probe's result, then each ``component_state`` change. The
    report's timeline and the live page's (``overnight serve``) are this one."""
    timeline: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        if name in unmonitored:
            continue
        points = []
        if name in first_probe:
            p = first_probe[name]
            points.append({"ts": p["ts"], "state": "healthy" if p["healthy"] else "unhealthy"})
        timeline[name] = points
    for e in state_events:
        data = json_field(e["data"]) or {}
        if e["component"] in timeline and data.get("to"):
            timeline[e["component"]].append({"ts": e["ts"], "state": data["to"]})
    for points in timeline.values():
        points.sort(key=lambda p: p["ts"])
    return timeline
