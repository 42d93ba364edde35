"""The report's sections beyond the cycle counts: the repair agent, incidents and faults,
quality, flaky steps, tokens and cost, the trend against the previous night, the
weakening watch (and the verdict line it may change), and recommendations. Every figure
comes from the ledger (the night's own config, prices included, is in its stored plan)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..faults.timeline import timeline_of
from ..ledger import queries
from .agent_view import agent_section
from .incidents import fallback_failures, knob_changes
from .inputs import flaky_inputs, input_dependent_steps
from .model import night_verdict
from .plan_view import comparison, component_use, plan_choices, protected_settings
from .quality import final_attempts, quality_and_metrics, tokens_section
from .recommendations import recommendations
from .settings import json_field, report_settings
from .suite import tests_section
from .trend import PreviousNight, trend_section
from .weakening_view import weakening_section


def build_sections(
    rows: queries.NightRows,
    report: dict[str, Any],
    previous: PreviousNight | None,
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
    started = next((json_field(e["data"]) or {} for e in by_kind["night_started"]), {})
    out["git_commit"] = started.get("git_commit")
    out["protected_settings"] = protected_settings(rows)
    out["plan_choices"] = plan_choices(rows)
    out["component_use"] = component_use(rows, [c["name"] for c in report.get("components") or []])
    out["started_ts"] = night["started_at"]
    out["ended_ts"] = night["ended_at"]
    out["faults"] = faults
    out.update(
        agent_section(
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
    out["knob_changes"] = knob_changes(by_kind, attempts, report, night["ended_at"])
    out["fallback_failures"] = fallback_failures(report, attempts, fallbacks)
    final = final_attempts(cycles)
    out["quality"], out["metrics"], out["text_metrics"] = quality_and_metrics(rows.metrics, final, settings)
    out["input_dependent_steps"] = input_dependent_steps(rows.steps, cycles, final)
    out["flaky"] = flaky_inputs(cycles, attempts, history or [], rows.id)
    out["tests"] = tests_section(rows)  # a pytest suite's tests, by node id (else None)
    out["tokens"] = tokens_section(rows.usage, settings)
    out["trend"] = trend_section(previous, report, out, comparison(rows, previous.rows if previous else None))
    out["weakening"], out["weakened"] = weakening_section(rows, previous)
    # The verdict line again, now that what weakened since the previous night is known.
    out["verdict"], out["exit_code"] = night_verdict(
        {**report, "weakening": out["weakening"], "weakened": out["weakened"]}
    )
    out["recommendations"] = recommendations(report, out, incidents)
    return out
