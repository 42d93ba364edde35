"""The trend: a night's figures against the previous ended night of the same scenario."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..ledger import queries
from ..ledger import schema as s
from ..numbers import iso
from ..numbers import rnd as _round
from .model import cycle_totals
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


# Rows fetched at a time from the previous night's tables (streamed, never all held).
_FETCH = 2000


@dataclass(frozen=True)
class PreviousNight:
    """The previous ended night of the same scenario, as the trend needs it: its night
    row, ``night_started`` event and incidents (what ``comparison`` and the incident count
    read), and its figures, computed while its cycles and metric and usage events were
    streamed from the ledger (a long night's rows are not all held)."""

    rows: queries.NightRows
    figures: dict[str, Any]


def previous_night(conn: Connection, night: dict[str, Any]) -> PreviousNight | None:
    """The previous ended night of the same scenario (the trend's baseline)."""
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
    if previous is None:
        return None
    rows = queries.read_night(
        conn, previous.id, tables=("events", "incidents"), event_kinds=("night_started",)
    )
    if rows is None:
        return None
    c, e = s.cycles.c, s.events.c
    final: dict[int, int] = {}

    def done() -> Iterator[tuple[Any, float | None]]:
        q = select(c.cycle, c.status, c.verdict, c.attempts, c.duration_s).where(c.night_id == rows.id)
        q = q.order_by(c.cycle)
        for cycle, status, verdict, attempts, duration in conn.execute(q.execution_options(yield_per=_FETCH)):
            if status == "done":
                final[cycle] = attempts
                yield verdict, duration

    def events(kind: str) -> Iterator[dict[str, Any]]:
        q = (
            select(e.cycle, e.attempt, e.data)
            .where(e.night_id == rows.id, e.kind == kind)
            .order_by(e.ts, e.id)
        )
        for cycle, attempt, data in conn.execute(q.execution_options(yield_per=_FETCH)):
            yield {"cycle": cycle, "attempt": attempt, "data": data}

    counts = cycle_totals(done())
    settings = report_settings(rows.night)
    report = {
        "success_rate": counts["success_rate"],
        "cycles_run": counts["cycles_run"],
        "totals": counts["totals"],
        "durations": {"cycle": counts["cycle_durations"]},
    }
    sections = {
        "quality": quality_section(events("metric"), final, settings),
        "tokens": tokens_section(events("usage"), settings),
        "incidents": rows.incidents,
    }
    return PreviousNight(rows=rows, figures=figures(report, sections))


def trend_section(
    previous: PreviousNight | None,
    report: dict[str, Any],
    sections: dict[str, Any],
    compared: dict[str, Any] | None,
) -> Any:
    """The same figures for the previous ended night of the same scenario, with deltas;
    no deltas when the two nights ran different plans (settings or plan choices)."""
    if previous is None or compared is None:
        return None
    now, before = figures(report, sections), previous.figures
    like = compared["comparable"]
    return {
        "previous_night_id": previous.rows.id,
        "previous_started_at": iso(previous.rows.night["started_at"]),
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
