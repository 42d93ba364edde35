"""Repair statistics of a night, computed from the ledger alone."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from ..ledger import Ledger
from ..ledger import schema as s
from ..report.model import percentile


def _summary(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
    }


def statistics(ledger: Ledger, night_id: str) -> dict[str, Any]:
    """Repairs, verification, time to detect and to repair, fallbacks, blocked attempts."""
    with ledger.read() as conn:
        incidents = [
            dict(r._mapping)
            for r in conn.execute(select(s.incidents).where(s.incidents.c.night_id == night_id))
        ]
        repairs = [
            dict(r._mapping) for r in conn.execute(select(s.repairs).where(s.repairs.c.night_id == night_id))
        ]
        fallbacks = [
            dict(r._mapping)
            for r in conn.execute(select(s.fallbacks).where(s.fallbacks.c.night_id == night_id))
        ]
        events = [
            dict(r._mapping)
            for r in conn.execute(
                select(s.events).where(
                    s.events.c.night_id == night_id,
                    s.events.c.kind.in_(("degradation_blocked", "component_fault", "agent_restarted")),
                )
            )
        ]
    verified = [r for r in repairs if r["verified"]]
    acted = [r for r in repairs if r["result"] in ("done", "ok")]  # "ok": older ledgers
    by_component: dict[str, dict[str, int]] = defaultdict(lambda: {"repairs": 0, "verified": 0, "failed": 0})
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"incidents": 0, "repaired": 0})
    for r in repairs:
        row = by_component[r["component"]]
        row["repairs"] += 1
        row["verified" if r["verified"] else "failed"] += 1
    for i in incidents:
        by_kind[i["fault_kind"]]["incidents"] += 1
        if i["state"] in ("repaired", "transient", "recovered"):
            by_kind[i["fault_kind"]]["repaired"] += 1
    # Time to detect: from the first evidence (a cycle's failed call, or the failing probe)
    # to the incident; time to repair: from detection to the probe that verified health.
    faults_by_component: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e["kind"] == "component_fault" and e["component"]:
            faults_by_component[e["component"]].append(e["ts"])
    ttd, ttr = [], []
    for i in incidents:
        earlier = [t for t in faults_by_component.get(i["component"], []) if t <= i["detected_at"] + 1e-6]
        first = max(earlier) if earlier and i["trigger"] == "signal" else i["detected_at"]
        ttd.append(max(i["detected_at"] - first, 0.0))
        if i["verified_at"] is not None:
            ttr.append(i["verified_at"] - i["detected_at"])
    waits = [
        r["duration_s"]
        for r in repairs
        if r["strategy"] == "wait_retry_after" and r["duration_s"] is not None
    ]
    blocked = [e for e in events if e["kind"] == "degradation_blocked"]
    prevented = [i for i in incidents if i["degradation_avoided"]]
    return {
        "incidents": len(incidents),
        "repairs_total": len(repairs),
        "repairs_acted": len(acted),
        "repairs_verified": len(verified),
        "repairs_failed": len(repairs) - len(verified),
        "success_rate": (len(verified) / len(repairs)) if repairs else None,
        "by_component": dict(by_component),
        "by_fault_kind": dict(by_kind),
        "time_to_detect_s": _summary(ttd),
        "time_to_repair_s": _summary(ttr),
        "retry_after_waits_s": _summary(waits),
        "fallbacks": [
            {
                "component": f["component"],
                "kind": f["kind"],
                "started_at": f["started_at"],
                "ended_at": f["ended_at"],
                "seconds": (f["ended_at"] - f["started_at"]) if f["ended_at"] else None,
            }
            for f in fallbacks
        ],
        "degradation_prevented": len(prevented) + len(blocked),
        "degradation_prevented_incidents": [
            {"incident_id": i["id"], "component": i["component"], **json.loads(i["degradation_avoided"])}
            for i in prevented
        ],
        "blocked_attempts": [
            {
                "component": e["component"],
                "message": e["message"],
                **(json.loads(e["data"]) if e["data"] else {}),
            }
            for e in blocked
        ],
        "agent_restarts": sum(1 for e in events if e["kind"] == "agent_restarted"),
    }
