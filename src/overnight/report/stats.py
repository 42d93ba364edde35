"""The repair agent's figures of a night: a view of the report, never a second reading
of the ledger (so its numbers are the report's numbers)."""

from __future__ import annotations

from typing import Any

from ..ledger import Ledger
from .model import build_report_lazily


def statistics(ledger: Ledger, night_id: str) -> dict[str, Any]:
    """Incidents and how they ended, repairs and their verification, time to detect and
    to repair, Retry-After waits, fallbacks, blocked degradations, monitor restarts.
    (The figures need no cycle entries: none is built.)"""
    return agent_figures(build_report_lazily(ledger, night_id))


def agent_figures(report: dict[str, Any]) -> dict[str, Any]:
    agent = report["agent"]
    repairs = agent["repairs"]
    verified = sum(1 for r in repairs if r["verified"])
    incidents = report["incidents"]
    return {
        "incidents": len(incidents),
        # How each incident ended: repaired by a verified repair of ours; healthy again
        # without one (by itself, by someone's hand, after a fallback); transient (healthy
        # at the next probe, nothing to repair). The rest were not restored.
        "incidents_repaired": sum(1 for i in incidents if i["repaired_by_us"]),
        "incidents_recovered": sum(
            1
            for i in incidents
            if i["verified_at"] is not None and not i["repaired_by_us"] and i["state"] != "transient"
        ),
        "incidents_transient": sum(1 for i in incidents if i["state"] == "transient"),
        "repairs_total": len(repairs),
        "repairs_acted": sum(1 for r in repairs if r["result"] == "done"),
        "repairs_verified": verified,
        "repairs_failed": len(repairs) - verified,
        "success_rate": verified / len(repairs) if repairs else None,
        "by_component": agent["by_component"],
        "by_fault_kind": agent["by_fault_kind"],
        "time_to_detect_s": agent["time_to_detect_s"],
        "time_to_repair_s": agent["time_to_repair_s"],
        "retry_after_waits_s": agent["retry_after_waits_s"],
        "fallbacks": report["fallbacks"],
        "degradation_prevented": len(report["degradation_prevented"]) + len(report["blocked_attempts"]),
        "degradation_prevented_incidents": report["degradation_prevented"],
        "blocked_attempts": report["blocked_attempts"],
        "agent_restarts": len(agent["restarts"]),
    }
