"""The trend: a night's figures against the previous ended night of the same scenario,
the short form of ``overnight diff`` (``diff``: the same figures, deltas and verdicts per
input, one definition)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..ledger import queries
from ..ledger import schema as s
from ..numbers import iso
from .diff import VerdictFlips, compare_figures, figures, flips_text
from .model import cycle_totals
from .quality import quality_section, tokens_section
from .settings import report_settings

# Flipped inputs the trend lists (``overnight diff`` lists more).
TREND_FLIPS_SHOWN = 10


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
    # The final verdicts of the inputs both nights ran, against the night reported
    # (``VerdictFlips.result``, ``before`` / ``now``); None when its cycles were not given.
    verdicts: dict[str, Any] | None = None


def previous_night(
    conn: Connection, night: dict[str, Any], cycles: Sequence[queries.CycleRow] | None = None
) -> PreviousNight | None:
    """The previous ended night of the same scenario (the trend's baseline). ``cycles``:
    the reported night's cycle rows, to compare the final verdicts of the inputs both
    nights ran as the previous night's cycles are streamed."""
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
    flips = None
    if cycles is not None:
        held = {r.input_seed: (r.cycle, r.verdict) for r in cycles if r.status == "done"}
        flips = VerdictFlips(held, "now", ("before", "now"), shown=TREND_FLIPS_SHOWN)

    def done() -> Iterator[tuple[Any, float | None]]:
        q = select(c.cycle, c.status, c.verdict, c.attempts, c.duration_s, c.input_seed)
        q = q.where(c.night_id == rows.id).order_by(c.cycle)
        for cycle, status, verdict, attempts, duration, seed in conn.execute(
            q.execution_options(yield_per=_FETCH)
        ):
            if status == "done":
                final[cycle] = attempts
                if flips is not None:
                    flips.add(seed, cycle, verdict)
                yield verdict, duration

    def events(kind: str) -> Iterator[queries.CallEvent]:
        q = (
            select(e.cycle, e.attempt, e.data)
            .where(e.night_id == rows.id, e.kind == kind)
            .order_by(e.ts, e.id)
        )
        for cycle, attempt, data in conn.execute(q.execution_options(yield_per=_FETCH)):
            yield queries.CallEvent(cycle, attempt, data)

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
    return PreviousNight(
        rows=rows,
        figures=figures({**report, **sections}),
        verdicts=flips.result() if flips is not None else None,
    )


def trend_section(
    previous: PreviousNight | None,
    report: dict[str, Any],
    sections: dict[str, Any],
    compared: dict[str, Any] | None,
) -> Any:
    """The same figures for the previous ended night of the same scenario, with deltas;
    no deltas when the two nights ran different plans (settings or plan choices); and the
    inputs both nights ran whose final verdict flipped (``verdicts``)."""
    if previous is None or compared is None:
        return None
    both = compare_figures(previous.figures, figures({**report, **sections}), compared["comparable"])
    return {
        "previous_night_id": previous.rows.id,
        "previous_started_at": iso(previous.rows.night["started_at"]),
        **compared,
        "figures": {k: {"now": f["b"], "before": f["a"], "delta": f["delta"]} for k, f in both.items()},
        "verdicts": {**previous.verdicts, "text": flips_text(previous.verdicts)}
        if previous.verdicts
        else None,
    }
