"""The repair agent's figures of a night: a view of the report, never a second reading
of the ledger (so its numbers are the report's numbers)."""

from __future__ import annotations

from typing import Any

from ..ledger import Ledger
from .model import build_report


def statistics(ledger: Ledger, night_id: str) -> dict[str, Any]:
    """Incidents, repairs and their verification, time to detect and to repair,
    Retry-After waits, fallbacks, blocked degradations, monitor restarts."""
    return agent_figures(build_report(ledger, night_id))


def agent_figures(report: dict[str, Any]) -> dict[str, Any]:
    agent = report["agent"]
    repairs = agent["repairs"]
    verified = sum(1 for r in repairs if r["verified"])
    return {
        "incidents": len(report["incidents"]),
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
