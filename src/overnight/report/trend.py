"""The trend: a night's figures against the previous ended night of the same scenario."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..ledger import queries
from ..ledger import schema as s
from ..numbers import iso
from ..numbers import rnd as _round
from .quality import quality_section, tokens_section
from .settings import report_settings


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


def trend_section(
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
        "quality": quality_section(previous.events_of("metric"), previous.cycles, prev_settings),
        "tokens": tokens_section(previous.events_of("usage"), prev_settings),
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
