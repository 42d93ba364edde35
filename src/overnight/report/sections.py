"""The report's sections beyond the cycle counts: the repair agent, incidents and faults,
quality, flaky steps, tokens and cost, the trend against the previous night, and
recommendations. Every figure comes from the ledger (the night's own config, prices
included, is in its stored plan)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..faults.timeline import timeline_of
from ..ledger import queries
from ..ledger import schema as s
from ..numbers import hhmm, hhmmss, iso, plural, span, spread
from ..numbers import rnd as _round
from .inputs import flaky_inputs, input_dependent_steps
from .plan_view import comparison, component_use, plan_choices, protected_settings

BUCKETS = (("9-10", 9.0, 10.0), ("7-8.9", 7.0, 9.0), ("5-6.9", 5.0, 7.0), ("0-4.9", 0.0, 5.0))
ADVICE = {
    "quota_exceeded": "raise the quota or lower --parallel",
    "rate_limited": "raise the rate limit or lower --parallel",
    "timeout": "check the dependency's latency; raise timeout_max if it is slow by nature",
    "connection_lost": "check the network path and the server's idle-connection timeouts",
    "unavailable": "check the service's availability (restarts, maintenance windows, connection limits)",
    "auth_expired": "renew the credentials, or declare a second key in api_key_envs so the agent can rotate",
    "server_error": "report the provider's 5xx errors; check its status page",
    "resource_low": "free disk or memory on the host before the next night",
    "bad_response": "check the API's answers: it returned malformed data",
}


def _json(raw: Any) -> Any:
    if raw is None or isinstance(raw, dict | list):
        return raw
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def report_settings(night: dict[str, Any]) -> dict[str, Any]:
    """The night's ``[report]`` table, from its stored plan (defaults when absent)."""
    plan = _json(night.get("plan")) or {}
    raw = ((plan.get("config_raw") or {}).get("report")) or {}
    return {
        "currency": raw.get("currency", "USD"),
        "prices": raw.get("prices") or {},
        "score_metric": raw.get("score_metric", "score"),
        "weakness_metric": raw.get("weakness_metric", "weakness"),
    }


def build_sections(
    rows: queries.NightRows,
    report: dict[str, Any],
    previous: queries.NightRows | None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every section beyond the cycle counts, from the rows read once (``previous``: the
    previous ended night of the same scenario, for the trend; ``history``: earlier
    nights' cycles on the same inputs, for flakiness across nights)."""
    night = rows.night
    settings = report_settings(night)
    incidents = rows.incidents
    repairs = rows.repairs
    fallbacks = rows.fallbacks
    probes = rows.probes
    events = rows.events_of(
        "unmonitored",
        "component_state",
        "degradation_blocked",
        "metric",
        "usage",
        "night_started",
        "loop_blocked",
        "loop_lag",
        "agent_restarted",
        "component_fault",
        "knob_changed",
        "knob_restored",
    )
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_kind[e["kind"]].append(e)
    attempts = rows.attempts
    cycles = rows.cycles
    faults = timeline_of(rows)

    out: dict[str, Any] = {}
    started = next((_json(e["data"]) or {} for e in by_kind["night_started"]), {})
    out["git_commit"] = started.get("git_commit")
    out["protected_settings"] = protected_settings(rows)
    out["plan_choices"] = plan_choices(rows)
    out["component_use"] = component_use(rows, [c["name"] for c in report.get("components") or []])
    out["started_ts"] = night["started_at"]
    out["ended_ts"] = night["ended_at"]
    out["faults"] = faults
    out.update(
        _agent(
            report,
            incidents,
            repairs,
            fallbacks,
            probes,
            by_kind,
            attempts,
            cycles,
            faults,
            rows.verified_repairs,
        )
    )
    out["knob_changes"] = _knob_changes(by_kind, attempts, report, night["ended_at"])
    out["fallback_failures"] = _fallback_failures(report, attempts, fallbacks)
    out["quality"] = _quality(by_kind["metric"], cycles, settings)
    out["metrics"] = _metrics(by_kind["metric"], cycles)
    out["input_dependent_steps"] = input_dependent_steps(rows.steps, cycles)
    out["flaky"] = flaky_inputs(cycles, attempts, history or [], rows.id)
    out["tokens"] = _tokens(by_kind["usage"], settings)
    out["trend"] = _trend(previous, report, out, comparison(rows, previous))
    out["recommendations"] = _recommendations(report, out, incidents)
    return out


# -- the repair agent ---------------------------------------------------------------------


def _agent(
    report: dict[str, Any],
    incidents: list[dict[str, Any]],
    repairs: list[dict[str, Any]],
    fallbacks: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    events: dict[str, list[dict[str, Any]]],
    attempts: list[dict[str, Any]],
    cycles: list[dict[str, Any]],
    faults: dict[str, Any],
    verified_repairs: set[int] | None = None,
) -> dict[str, Any]:
    if verified_repairs is not None:
        # "Verified" is the agent's flag *and* the healthy probe that earned it (one
        # definition: NightRows.verified_repairs); a flag without the probe is not evidence.
        repairs = [{**r, "verified": r["id"] in verified_repairs} for r in repairs]
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
            a["cycle"]
            for a in attempts
            if a["fault_component"] == component
            and a["ended_at"]
            and t0 - 1 <= a["ended_at"] <= (t1 or math.inf)
        ]
        if hit:
            return min(hit)
        running = [a["cycle"] for a in attempts if a["started_at"] <= t0 <= (a["ended_at"] or math.inf)]
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
                "knobs_changed": _json(r["knobs_changed"]) or {},
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
                "outcome": _outcome(i, repairs_of.get(i["id"], []), fallbacks_of.get(i["id"], []), ours),
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
                "notes": _health_notes(mine),
            }
        )
    fallback_rows = []
    for f in fallbacks:
        end = f["ended_at"]
        touched = [
            c["cycle"]
            for c in cycles
            if c["fallback"]
            and c["started_at"] <= (end or math.inf)
            and (c["ended_at"] or math.inf) >= f["started_at"]
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
        avoided = _json(i["degradation_avoided"])
        # Ledgers written before the agent knew better recorded a shortcut "not taken" for
        # incidents its fallback served: that claim contradicts the fallback row.
        if avoided and i["id"] not in fallbacks_of:
            prevented.append({"incident_id": i["id"], "component": i["component"], **avoided})
    blocked = []
    for e in events["degradation_blocked"]:
        data = _json(e["data"]) or {}
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
    timeline: dict[str, list[dict[str, Any]]] = {}
    for name in [c["name"] for c in report.get("components") or []]:
        if name in unmonitored:
            continue
        points = []
        if name in first_probe:
            p = first_probe[name]
            points.append({"ts": p["ts"], "state": "healthy" if p["healthy"] else "unhealthy"})
        timeline[name] = points
    for e in events["component_state"]:
        data = _json(e["data"]) or {}
        if e["component"] in timeline and data.get("to"):
            timeline[e["component"]].append({"ts": e["ts"], "state": data["to"]})
    for points in timeline.values():
        points.sort(key=lambda p: p["ts"])
    return {
        "agent": {
            "system_health": health,
            "repairs": repair_rows,
            "repairs_total": len(repair_rows),
            "repairs_verified": sum(1 for r in repair_rows if r["verified"]),
            "loop_blocked": _loop_blocked(events["loop_blocked"]),
            "loop_lag": _loop_lag(events["loop_lag"]),
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
        },
        "incidents": incident_rows,
        "fallbacks": fallback_rows,
        "degradation_prevented": prevented,
        "blocked_attempts": blocked,
        "health_timeline": timeline,
    }


def _outcome(
    i: dict[str, Any], repairs: list[dict[str, Any]], fallbacks: list[dict[str, Any]], ours: bool
) -> str:
    """How an incident ended, in one sentence, from its rows alone."""
    healthy = i["verified_at"]
    down = span(max(healthy - i["detected_at"], 0.0)) if healthy is not None else None
    failed = [r for r in repairs if not r["verified"]]
    tried = f"{plural(len(failed), 'repair attempt')} did not restore it" if failed else "no repair was tried"
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


def _health_notes(incidents: list[dict[str, Any]]) -> list[str]:
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


def _knob_changes(
    events: dict[str, list[dict[str, Any]]],
    attempts: list[dict[str, Any]],
    report: dict[str, Any],
    night_end: float | None,
) -> list[dict[str, Any]]:
    """Each knob a repair changed, with its time in force: until the next change of that
    knob (its return to the configured value, or a further change) or the end of the
    night, and the cycles an attempt of which ran with it off (the engine's knobs_off marks)."""
    configured = {(c["name"], k): v for c in report.get("components") or [] for k, v in c["knobs"].items()}
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(events["knob_changed"] + events["knob_restored"], key=lambda e: e["ts"]):
        data = _json(e["data"]) or {}
        if e["component"] and data.get("knob"):
            history[(e["component"], data["knob"])].append({**e, "data": data})
    marks = [(a, _json(a.get("knobs_off")) or {}) for a in attempts]
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
                    a["cycle"]
                    for a, off in marks
                    if knob in (off.get(component) or {})
                    and a["started_at"] <= (until if until is not None else math.inf)
                    and (a["ended_at"] or math.inf) >= e["ts"]
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


def _fallback_failures(
    report: dict[str, Any], attempts: list[dict[str, Any]], fallbacks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Cycles that failed on a fallback (no product verdict), each with the fallback
    periods that served its final attempt: the evidence that it was not tested on the
    primary."""
    final: dict[int, dict[str, Any]] = {}
    for a in attempts:
        if a["verdict"] not in (None, "interrupted"):
            final[a["cycle"]] = a
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
            if fb["started_at"] <= (a["ended_at"] or math.inf)
            and (fb["ended_at"] or math.inf) >= a["started_at"]
        ]
        keys = ("cycle", "step", "error_type", "error_message", "attempts", "artifacts_dir")
        out.append({**{k: f[k] for k in keys}, "fallbacks": served})
    return out


def repair_result(result: str | None) -> str | None:
    """A repair's result as the report says it. Older ledgers wrote "ok" for an
    action that ran to its end, verified or not; that is "done" (``verified`` says more)."""
    return "done" if result == "ok" else result


def _loop_blocked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probes and repairs that held the event loop (froze every cycle meanwhile), by
    component and what ran: how often, the longest stretch, the last time."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        data = _json(e["data"]) or {}
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


def _loop_lag(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The event loop's lag over the night (the agent samples it every 0.1 s): the worst
    of its sessions."""
    rows = [_json(e["data"]) or {} for e in events]
    rows = [r for r in rows if isinstance(r.get("max_s"), int | float)]
    if not rows:
        return None
    return {
        "p99_s": _round(max(float(r.get("p99_s") or 0.0) for r in rows)),
        "max_s": _round(max(float(r["max_s"]) for r in rows)),
        "samples": sum(int(r.get("samples") or 0) for r in rows),
    }


# -- quality, metrics, flaky steps --------------------------------------------------------------


def _final_attempts(cycles: list[dict[str, Any]]) -> dict[int, int]:
    return {c["cycle"]: c["attempts"] for c in cycles if c["status"] == "done"}


def _metrics(metric_events: list[dict[str, Any]], cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """Numeric metrics of final attempts: n, mean, min, max per name."""
    final = _final_attempts(cycles)
    values: dict[str, list[float]] = defaultdict(list)
    for e in metric_events:
        data = _json(e["data"]) or {}
        if final.get(e["cycle"]) == e["attempt"] and isinstance(data.get("value"), int | float):
            values[data["name"]].append(float(data["value"]))
    return {
        name: {"n": len(v), "mean": _round(sum(v) / len(v)), "min": min(v), "max": max(v)}
        for name, v in sorted(values.items())
    }


def _quality(
    metric_events: list[dict[str, Any]], cycles: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any] | None:
    final = _final_attempts(cycles)
    scores: dict[int, float] = {}
    weaknesses: Counter[str] = Counter()
    for e in metric_events:
        if final.get(e["cycle"]) != e["attempt"]:
            continue  # an attempt that was retried: its measurements do not count
        data = _json(e["data"]) or {}
        if data.get("name") == settings["score_metric"] and isinstance(data.get("value"), int | float):
            scores[e["cycle"]] = float(data["value"])
        elif data.get("name") == settings["weakness_metric"] and isinstance(data.get("value"), str):
            weaknesses[data["value"].strip()] += 1
    if not scores and not weaknesses:
        return None
    buckets = {name: 0 for name, _, _ in BUCKETS}
    for v in scores.values():
        for name, lo, hi in BUCKETS:
            if lo <= v < hi or (hi == 10.0 and v == 10.0):
                buckets[name] += 1
                break
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    k = min(3, len(ranked) // 2)  # best and worst never overlap
    return {
        "metric": settings["score_metric"],
        "n": len(scores),
        "mean": _round(sum(scores.values()) / len(scores)) if scores else None,
        "buckets": buckets,
        "best": [{"cycle": c, "score": v} for c, v in ranked[:k]],
        "worst": [{"cycle": c, "score": v} for c, v in reversed(ranked[len(ranked) - k :])] if k else [],
        "weaknesses": [{"text": t, "count": n} for t, n in weaknesses.most_common(5)],
    }


# -- tokens and cost ---------------------------------------------------------------------------


def _tokens(usage: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any] | None:
    if not usage:
        return None

    def empty() -> dict[str, int]:
        return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    total = empty()
    per_step: defaultdict[str, dict[str, int]] = defaultdict(empty)
    per_model: defaultdict[str, dict[str, int]] = defaultdict(empty)
    for e in usage:
        data = _json(e["data"]) or {}
        for bucket in (total, per_step[data.get("step") or "-"], per_model[data.get("model") or "-"]):
            bucket["calls"] += 1
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                bucket[key] += int(data.get(key) or 0)
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


# -- trend ---------------------------------------------------------------------------------------


def figures(report: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """The figures a trend compares, for one night."""
    quality = sections.get("quality") or {}
    tokens = (sections.get("tokens") or {}).get("total") or {}
    return {
        "success_rate": report.get("success_rate"),
        "cycles_run": report.get("cycles_run"),
        "failed": report["totals"].get("failed", 0),
        "infra_error": report["totals"].get("infra_error", 0),
        "cycle_p50_s": report["durations"]["cycle"].get("p50"),
        "cycle_p95_s": report["durations"]["cycle"].get("p95"),
        "mean_score": quality.get("mean"),
        "incidents": len(sections.get("incidents") or []),
        "tokens_per_cycle": _round(tokens.get("total_tokens", 0) / report["cycles_run"], 1)
        if report.get("cycles_run") and tokens
        else None,
    }


def previous_night(conn: Connection, night: dict[str, Any]) -> queries.NightRows | None:
    """The rows of the previous ended night of the same scenario (the trend's baseline)."""
    previous = conn.execute(
        select(s.nights.c.id)
        .where(
            s.nights.c.scenario == night["scenario"],
            s.nights.c.started_at < night["started_at"],
            s.nights.c.ended_at.is_not(None),
            s.nights.c.id != night["id"],
        )
        .order_by(s.nights.c.started_at.desc())
        .limit(1)
    ).first()
    return queries.read_night(conn, previous.id) if previous is not None else None


def _trend(
    previous: queries.NightRows | None,
    report: dict[str, Any],
    sections: dict[str, Any],
    compared: dict[str, Any] | None,
) -> Any:
    """The same figures for the previous ended night of the same scenario, with deltas;
    no deltas when the two nights ran different plans (settings or plan choices)."""
    if previous is None or compared is None:
        return None
    from .model import assemble

    prev_report = assemble(previous)
    prev_settings = report_settings(previous.night)
    prev_sections = {
        "quality": _quality(previous.events_of("metric"), previous.cycles, prev_settings),
        "tokens": _tokens(previous.events_of("usage"), prev_settings),
        "incidents": previous.incidents,
    }
    now, before = figures(report, sections), figures(prev_report, prev_sections)
    like = compared["comparable"]
    return {
        "previous_night_id": previous.id,
        "previous_started_at": iso(previous.night["started_at"]),
        **compared,
        "figures": {
            k: {
                "now": now[k],
                "before": before[k],
                "delta": _round(now[k] - before[k])
                if like and now[k] is not None and before[k] is not None
                else None,
            }
            for k in now
        },
    }


# -- recommendations ---------------------------------------------------------------------------------


def _cycles(numbers: list[int], limit: int = 20) -> str:
    """``cycle 3`` / ``cycles 3, 5, 8 …`` (the first ``limit``)."""
    shown = ", ".join(map(str, numbers[:limit])) + (" …" if len(numbers) > limit else "")
    return f"{'cycle' if len(numbers) == 1 else 'cycles'} {shown}"


def _recommendations(
    report: dict[str, Any], sections: dict[str, Any], incidents: list[dict[str, Any]]
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    faults = sections["faults"]
    rows = sections["incidents"]
    # Incidents a planned fault caused are the drill, not advice about the dependency.
    drilled = {r["incident_id"] for r in faults["injections"] if r.get("incident_id") is not None}
    served = {f["incident_id"] for f in sections["fallbacks"]}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for i in incidents:
        if i["id"] not in drilled:
            groups[(i["component"], i["fault_kind"])].append(i)
    for (component, kind), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        times = sorted(i["detected_at"] for i in items)
        when = (
            f"at {hhmm(times[0])}" if len(times) == 1 else f"between {hhmm(times[0])} and {hhmm(times[-1])}"
        )
        advice = ADVICE.get(kind, "check the dependency")
        if len(items) >= 2 or kind in ("quota_exceeded", "auth_expired", "resource_low"):
            out.append(
                {
                    "text": f"{component}: {kind.replace('_', ' ')} {plural(len(items), 'time')} {when} "
                    f"→ {advice}",
                    "evidence": "incidents " + ", ".join(f"#{i['id']}" for i in items),
                }
            )
    for i in incidents:
        if i["state"] in ("escalated", "open"):
            drill = " (an injected fault)" if i["id"] in drilled else ""
            out.append(
                {
                    "text": f"{i['component']} was not restored ({i['fault_kind']}{drill}): "
                    "check it by hand before the next night",
                    "evidence": f"incident #{i['id']} {i['state']}"
                    + (f": {i['escalation']}" if i["escalation"] else ""),
                }
            )
    # Healthy again, but not by a verified repair of ours (by itself, or by someone's
    # hand): nothing was fixed, so whatever took it down may do so again. Incidents a
    # fallback served have their own recommendation below; the drill's are expected.
    came_back: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if (
            row["verified_ts"] is not None
            and row["state"] != "transient"
            and not row["repaired_by_us"]
            and row["id"] not in drilled | served
        ):
            came_back[row["component"]].append(row)
    for component, items in came_back.items():
        tried = sum(1 for row in items for x in row["repairs"] if not x["verified"])
        how_often = f"at {hhmm(items[0]['detected_ts'])}" if len(items) == 1 else plural(len(items), "time")
        out.append(
            {
                "text": f"{component}: went down {how_often} and came back without a verified repair of ours "
                f"(by itself or by someone's hand; {plural(tried, 'repair attempt')} did not restore it) "
                "→ find out why it went down: nothing was fixed, so it may happen again",
                "evidence": "; ".join(
                    f"incident #{row['id']} {row['state']} ({row['fault_kind']}): detected "
                    f"{hhmmss(row['detected_ts'])}, verified healthy {hhmmss(row['verified_ts'])} by a probe"
                    for row in items
                ),
            }
        )
    for b in sections["agent"]["loop_blocked"]:
        out.append(
            {
                "text": f"{b['component']}: its {b['what']} blocked the event loop "
                f"{plural(b['times'], 'time')}, up to {b['longest_s']:.2f} s, freezing every cycle "
                "meanwhile → make it non-blocking (an async client, or asyncio.to_thread around the "
                "blocking call)",
                "evidence": f"loop_blocked events of {b['component']}, the last at {b['last_at']}",
            }
        )
    crashed = Counter(r["component"] for r in sections["agent"]["restarts"])
    for component, n in sorted(crashed.items()):
        last = [r for r in sections["agent"]["restarts"] if r["component"] == component][-1]
        out.append(
            {
                "text": f"the repair agent's monitor of {component} crashed {plural(n, 'time')} and was "
                "restarted → fix the probe or repair strategy that raised",
                "evidence": f"agent_restarted at {last['at']}: {last['message']}",
            }
        )
    for h in sections["agent"]["system_health"]:
        if h["state"] == "unhealthy":
            out.append(
                {
                    "text": f"{h['component']} was unhealthy at its last probe: check it this morning",
                    "evidence": f"probe at {h['last_probe_at']}: {h['last_probe_detail']}",
                }
            )
    for f in sections["fallbacks"]:
        evidence = f"fallback from {f['started_at']} to {f['ended_at'] or 'the end of the night'}"
        n_cycles = plural(len(f["cycles"]), "cycle")
        if f["incident_id"] in drilled and f["ended_at"]:
            text = (
                f"{n_cycles} ran on {f['component']}'s {f['kind']} fallback during an injected fault: "
                "they did not test the live dependency; rerun them if that matters"
            )
        else:
            text = (
                f"{f['component']} ran on its {f['kind']} fallback for {n_cycles}: "
                "those cycles did not test the live dependency; fix the primary"
            )
        out.append({"text": text, "evidence": evidence + f" (incident #{f['incident_id']})"})
    on_fallback = sections["fallback_failures"]
    if on_fallback:
        numbers = [f["cycle"] for f in on_fallback]
        it = "it" if len(numbers) == 1 else "them"
        out.append(
            {
                "text": f"{_cycles(numbers)} failed on a fallback and got no product verdict (no rerun on "
                f"the primary before the night stopped or the retries ran out) → rerun {it} on the primary",
                "evidence": "; ".join(
                    f"cycle {f['cycle']}: attempt {f['attempts']} "
                    + (
                        ", ".join(
                            f"on {fb['component']}'s {fb['kind']} fallback (incident #{fb['incident_id']}, "
                            f"{fb['started_at']} → {fb['ended_at'] or 'the end of the night'})"
                            for fb in f["fallbacks"]
                        )
                        or "marked as run on a fallback"
                    )
                    for f in on_fallback[:20]
                ),
            }
        )
    knobs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for k in sections["knob_changes"]:
        if k["cycles"]:
            knobs[(k["component"], k["knob"])].append(k)
    for (component, knob), changes in knobs.items():
        ran = sorted({c for k in changes for c in k["cycles"]})
        values = ", ".join(dict.fromkeys(str(k["to"]) for k in changes))
        last = changes[-1]
        still = " and was still off when the night ended" if last["ended_at"] is None else ""
        out.append(
            {
                "text": f"{component}.{knob} ran at {values} instead of its configured {last['configured']} "
                f"for {plural(len(ran), 'cycle')}{still}: {'its' if len(ran) == 1 else 'their'} results were "
                "not measured with the "
                "configured value → find out why a repair needed it (fix the dependency, or change the "
                "configured value if the new one is right)",
                "evidence": "; ".join(
                    f"knob_changed {k['from']} → {k['to']} at {k['changed_at']} by {k['by']}"
                    + (f" (incident #{k['incident_id']})" if k["incident_id"] is not None else "")
                    + (
                        f", {k['ended_by']} at {k['ended_at']}"
                        if k["ended_at"]
                        else ", in force until the end of the night"
                    )
                    for k in changes
                )
                + f"; {_cycles(ran)}",
            }
        )
    failures = [f for f in report["failures"] if f["verdict"] == "failed"]
    by_step: dict[str, list[int]] = defaultdict(list)
    for f in failures:
        by_step[f["step"] or "-"].append(f["cycle"])
    for step, cs in sorted(by_step.items(), key=lambda kv: -len(kv[1])):
        out.append(
            {
                "text": f"{plural(len(cs), 'product failure')} at step {step}: "
                f"read the artifacts of cycle {cs[0]} first",
                "evidence": _cycles(cs),
            }
        )
    unrepaired = [f for f in report["failures"] if f["verdict"] in ("infra_error", "timeout")]
    if unrepaired:
        out.append(
            {
                "text": f"{plural(len(unrepaired), 'cycle')} ended without a product verdict (infra errors "
                "or timeouts that outlasted the retries): rerun them once the dependency is fixed",
                "evidence": _cycles([f["cycle"] for f in unrepaired]),
            }
        )
    missed = [r for r in faults["injections"] if not r["detected"]]
    if missed:
        were = "was" if len(missed) == 1 else "were"
        out.append(
            {
                "text": f"{plural(len(missed), 'injected fault')} {were} not detected: "
                "add a probe or a use of that component",
                "evidence": ", ".join(r["spec"] or r["fault"] for r in missed),
            }
        )
    if faults["failed"]:
        n = len(faults["failed"])
        out.append(
            {
                "text": f"{plural(n, 'planned fault')} could not be injected: fix the fault plan",
                "evidence": "; ".join(f"{f['spec']}: {f['error']}" for f in faults["failed"]),
            }
        )
    if report["protected_fingerprint"].get("match") is False:
        out.append(
            {
                "text": "protected settings changed during the night: its results are not comparable",
                "evidence": f"fingerprint {report['protected_fingerprint']['start']} → "
                f"{report['protected_fingerprint']['end']}",
            }
        )
    if sections["blocked_attempts"]:
        n = len(sections["blocked_attempts"])
        were = "was" if n == 1 else "were"
        out.append(
            {
                "text": f"{plural(n, 'attempt')} to weaken the night {were} blocked: "
                "check who tried (a scenario or hook writing a protected setting?)",
                "evidence": "; ".join(b["message"] or "" for b in sections["blocked_attempts"][:5]),
            }
        )
    injections = faults["injections"]
    if injections and not missed and all(r["diagnosis_correct"] and r["verified_at"] for r in injections):
        every = (
            "the only injected fault was"
            if len(injections) == 1
            else f"all {len(injections)} injected faults were"
        )
        out.append(
            {
                "text": f"the fault drill passed: {every} detected, "
                "diagnosed correctly and verified healthy again; nothing to do about them",
                "evidence": f"diagnosis accuracy {faults['summary']['diagnosis_accuracy']:.0%}, "
                + ", ".join(f"#{r['incident_id']}" for r in injections),
            }
        )
    if not [o for o in out if not o["text"].startswith("the fault drill passed")]:
        ours = [row for row in rows if row["repaired_by_us"]]
        transient = [row for row in rows if row["state"] == "transient"]
        ids = ", ".join(f"#{row['id']}" for row in ours + transient)
        if rows and ours and len(ours) + len(transient) == len(rows):
            # Said only when every incident was repaired by a verified repair of ours, or
            # needed none: one that came back by itself is not "repaired".
            also = f"; {len(transient)} transient (healthy at the next probe)" if transient else ""
            out.append(
                {
                    "text": "all repairs verified, no manual action needed",
                    "evidence": f"{len(ours)} of {plural(len(rows), 'incident')} repaired by a repair of "
                    f"ours and verified healthy by a probe{also}: {ids}",
                }
            )
        elif rows and len(transient) == len(rows) and report["exit_code"] == 0:
            out.append(
                {
                    "text": "nothing to do: every cycle passed, and every incident was transient "
                    "(healthy at the next probe, nothing to repair)",
                    "evidence": f"{plural(report['cycles_run'], 'cycle')} passed; incidents {ids}",
                }
            )
        elif not rows and report["cycles_run"] and report["exit_code"] == 0:
            out.append(
                {
                    "text": "nothing to do: every cycle passed and no dependency failed",
                    "evidence": f"{plural(report['cycles_run'], 'cycle')} passed, 0 incidents",
                }
            )
    return out
