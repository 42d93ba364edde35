"""The report's numbers, computed from the ledger alone (promise 6).

``build_report`` reads one night and returns a plain dict: the same object is written as
``report.json`` and rendered as ``MORNING_REPORT.md``, so the two can never disagree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..ledger import Ledger, queries
from ..numbers import duration_stats, iso, noun, plural, rnd
from ..verdicts import CYCLE_VERDICTS

REPORT_FORMAT = "overnight-report"
REPORT_VERSION = 2


# One definition of each number, shared with the fault timeline and the CLI.
_round = rnd


def _knobs_off(text: str | None) -> dict[str, Any]:
    data = json.loads(text) if text else None
    return data if isinstance(data, dict) else {}


def build_report(ledger: Ledger, night_id: str) -> dict[str, Any]:
    """The one read path: every table of the night read once (and the previous night's,
    for the trend), then every section computed from those rows."""
    from .sections import build_sections
    from .trend import previous_night

    with ledger.read() as conn:
        rows = queries.read_night(conn, night_id)
        if rows is None:
            raise KeyError(night_id)
        previous = previous_night(conn, rows.night)
        history = queries.same_inputs(conn, rows.night)
    report = assemble(rows)
    report.update(build_sections(rows, report, previous, history))
    return report


def assemble(rows: queries.NightRows) -> dict[str, Any]:
    """Cycles, attempts, totals, durations and components of one night."""
    night = rows.night
    declared = rows.events_of("component_declared")
    ended = rows.events_of("night_ended")
    held = _held_at_gate(ended) if night["status"] != "running" else {}
    report = _assemble(night, rows.cycles, rows.attempts, rows.steps, rows.artifacts, rows.sessions, held)
    report["components"] = _components(declared)
    report["sandbox_components"] = [c["name"] for c in report["components"] if c["sandbox"]]
    return report


def _held_at_gate(ended: list[dict[str, Any]]) -> dict[str, str]:
    """What held the gate closed when the night last ended ({component: reason}); empty
    when nothing did, or the night has not ended."""
    if not ended or not ended[-1]["data"]:
        return {}
    data = json.loads(ended[-1]["data"])
    held = data.get("held_at_gate") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in held.items()} if isinstance(held, dict) else {}


def _components(declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each component as last declared (a resumed session declares them again)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in declared:
        data = json.loads(event["data"]) if event["data"] else {}
        latest[event["component"]] = {
            "name": event["component"],
            "type": data.get("type"),
            "target": data.get("target"),
            "sandbox": bool(data.get("sandbox")),
            "mode": data.get("mode"),
            "critical": data.get("critical"),
            "knobs": {k: v.get("value") for k, v in (data.get("knobs") or {}).items()},
        }
    return list(latest.values())


def _assemble(
    night: dict[str, Any],
    cycles: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    artifacts: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    held_at_gate: dict[str, str] | None = None,
) -> dict[str, Any]:
    night_path = Path(night["night_dir"]) / night["id"]
    by_cycle: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        by_cycle[a["cycle"]].append(a)
    arts: dict[tuple[int, int], list[str]] = defaultdict(list)
    for art in artifacts:
        arts[(art["cycle"], art["attempt"])].append(art["name"])
    steps_of: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for st in steps:
        steps_of[(st["cycle"], st["attempt"])].append(
            {"name": st["name"], "outcome": st["outcome"], "duration_s": _round(st["duration_s"])}
        )

    done = [c for c in cycles if c["status"] == "done"]
    totals = Counter({v.value: 0 for v in CYCLE_VERDICTS})
    totals.update(c["verdict"] for c in done)

    cycle_objs = []
    failures = []
    for c in cycles:
        atts = by_cycle.get(c["cycle"], [])
        final = next((a for a in reversed(atts) if a["verdict"] not in (None, "interrupted")), None)
        cycle_dir = night_path / "cycles" / f"{c['cycle']:03d}"
        final_dir = (
            cycle_dir if not final or final["attempt"] == 1 else cycle_dir / f"attempt-{final['attempt']}"
        )
        obj = {
            "cycle": c["cycle"],
            "status": c["status"],
            "verdict": c["verdict"] if c["status"] == "done" else None,
            "input_seed": c["input_seed"],
            "started_at": iso(c["started_at"]),
            "ended_at": iso(c["ended_at"]),
            "duration_s": _round(c["duration_s"]),
            "fallback": bool(c["fallback"]),
            "knobs_off": _knobs_off(c.get("knobs_off")),
            "artifacts_dir": str(final_dir.relative_to(night_path)) if final else None,
            "attempts": [
                {
                    "attempt": a["attempt"],
                    "session": a["session"],
                    "verdict": a["verdict"],
                    "started_at": iso(a["started_at"]),
                    "ended_at": iso(a["ended_at"]),
                    "duration_s": _round(a["duration_s"]),
                    "step": a["step"],
                    "error_type": a["error_type"],
                    "error_message": a["error_message"],
                    "fault_component": a["fault_component"],
                    "fault_kind": a["fault_kind"],
                    "fallback": bool(a.get("fallback")),
                    "knobs_off": _knobs_off(a.get("knobs_off")),
                    "artifacts": arts.get((c["cycle"], a["attempt"]), []),
                    "steps": steps_of.get((c["cycle"], a["attempt"]), []),
                }
                for a in atts
            ],
        }
        cycle_objs.append(obj)
        if c["status"] == "done" and c["verdict"] != "passed" and final is not None:
            failures.append(
                {
                    "cycle": c["cycle"],
                    "verdict": c["verdict"],
                    "step": final["step"],
                    "error_type": final["error_type"],
                    "error_message": final["error_message"],
                    "fault_component": final["fault_component"],
                    "fault_kind": final["fault_kind"],
                    "attempts": len([a for a in atts if a["verdict"] != "interrupted"]),
                    "artifacts_dir": obj["artifacts_dir"],
                    "traceback_tail": _tail(final["traceback"]),
                }
            )

    # Durations: a cycle's time is its final attempt's; steps count every finished run.
    cycle_durations = [c["duration_s"] for c in done if c["duration_s"] is not None]
    step_durations: dict[str, list[float]] = defaultdict(list)
    step_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for st in steps:
        if st["duration_s"] is not None:
            step_durations[st["name"]].append(st["duration_s"])
        step_outcomes[st["name"]][st["outcome"]] += 1

    run = len(done)
    retried = [c for c in cycle_objs if len([a for a in c["attempts"] if a["verdict"] != "interrupted"]) > 1]
    # Cycles that met an infra error and still got their final verdict on a later attempt,
    # whichever verdict that was: a count of retries, not of repairs (none may have run).
    infra_retried = []
    for c in cycle_objs:
        met = [a for a in c["attempts"][:-1] if a["verdict"] == "infra_error"]
        if c["status"] == "done" and c["verdict"] != "infra_error" and met:
            faults = sorted({f"{a['fault_component']}/{a['fault_kind']}" for a in met})
            infra_retried.append({"cycle": c["cycle"], "verdict": c["verdict"], "faults": faults})
    interrupted_attempts = sum(1 for a in attempts if a["verdict"] == "interrupted")
    wall = (night["ended_at"] - night["started_at"]) if night["ended_at"] else None
    busy = sum((s["ended_at"] - s["started_at"]) for s in sessions if s["ended_at"] is not None)
    fp_start, fp_end = night["protected_fingerprint"], night["protected_fingerprint_end"]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "night_id": night["id"],
        "status": night["status"],
        "end_reason": night["end_reason"],
        "scenario": night["scenario"],
        "dry_run": bool(night["dry_run"]),
        "seed": night["seed"],
        "started_at": iso(night["started_at"]),
        "ended_at": iso(night["ended_at"]),
        "duration_s": _round(wall, 3),
        "active_s": _round(busy, 3),
        "sessions": [
            {
                "seq": s["seq"],
                "started_at": iso(s["started_at"]),
                "ended_at": iso(s["ended_at"]),
                "pid": s["pid"],
                "end_reason": s["end_reason"] or ("process died" if s["ended_at"] is None else None),
            }
            for s in sessions
        ],
        "planned_cycles": night["planned_cycles"],
        "cycles_run": run,
        "cycles_not_run": night["planned_cycles"] - run,
        "held_at_gate": dict(held_at_gate or {}),
        "totals": dict(totals),
        "success_rate": _round(totals["passed"] / run, 4) if run else None,
        "passed_with_fallback": sum(1 for c in done if c["verdict"] == "passed" and c["fallback"]),
        "passed_with_knobs_off": sum(
            1 for c in done if c["verdict"] == "passed" and _knobs_off(c.get("knobs_off"))
        ),
        "retried_cycles": len(retried),
        "infra_retried_to_verdict": {"count": len(infra_retried), "cycles": infra_retried},
        "attempts_total": len(attempts),
        "interrupted_attempts": interrupted_attempts,
        "durations": {
            "cycle": duration_stats(cycle_durations),
            "steps": {name: duration_stats(vals) for name, vals in step_durations.items()},
        },
        "step_outcomes": {name: dict(cnt) for name, cnt in step_outcomes.items()},
        "protected_fingerprint": {
            "start": fp_start,
            "end": fp_end,
            "match": None if fp_end is None else fp_start == fp_end,
        },
        "config_fingerprint": night["config_fingerprint"],
        "failures": failures,
        "cycles": cycle_objs,
    }
    report["verdict"], report["exit_code"] = night_verdict(report)
    return report


def night_verdict(report: dict[str, Any]) -> tuple[str, int]:
    """One line for the night, and the exit code that goes with it.

    0 when the night ended, cycles ran and every one passed (and protected settings
    held), on a fallback or with a knob off its configured value included (the line says
    so); 1 otherwise, a cycle that failed on a fallback included (no product verdict). A
    night that has not ended is never reported as passed, nor one whose planned cycles
    did not run because the gate held them when it ended.
    """
    t = report["totals"]
    fp = report["protected_fingerprint"]
    run = report["cycles_run"]
    if report["status"] == "running":
        return (
            f"UNFINISHED: the night has not ended ({run} of {report['planned_cycles']} "
            f"{noun(report['planned_cycles'], 'cycle')} done); "
            "it is still running, or its process died — 'overnight run --resume' continues it",
            1,
        )
    if fp["match"] is False:
        return "FAILED: protected settings changed during the night", 1
    if report["status"] == "aborted":
        return f"ABORTED: {report['end_reason']} ({plural(run, 'cycle')} finished)", 1
    bad = {k: v for k, v in t.items() if k != "passed" and v}
    not_run = report["cycles_not_run"]
    reason = report["end_reason"] or report["status"]
    tail = f"; {plural(not_run, 'planned cycle')} did not run ({reason})" if not_run else ""
    if run == 0:
        return f"NO RESULT: no cycle finished{tail}", 1
    if not bad and not_run and report.get("held_at_gate"):
        # The cycles that ran passed, but the night could not test the rest: a critical
        # dependency held them back (a pause, a monitor that could not watch it).
        ran = "the only cycle that ran passed" if run == 1 else f"all {run} cycles that ran passed"
        return f"INCOMPLETE: {plural(not_run, 'planned cycle')} did not run ({reason}); {ran}", 1
    if not bad:
        every = "the only cycle passed" if run == 1 else f"all {run} cycles passed"
        on_fallback = report.get("passed_with_fallback") or 0
        knobs_off = report.get("passed_with_knobs_off") or 0

        def share(k: int, what: str) -> str:
            return what if run == 1 else f"{k} of them {what}"

        # Never a clean pass: say how many ran on a declared fallback, or with a knob a
        # repair had moved off its configured value. Still exit 0: both are declared,
        # bounded operational changes, and the product checks passed.
        knobs = share(knobs_off, "with a knob off its configured value")
        if on_fallback:
            extra = f", {knobs}" if knobs_off else ""
            return f"PASSED WITH FALLBACK: {every}, {share(on_fallback, 'on a fallback')}{extra}{tail}", 0
        if knobs_off:
            return f"PASSED WITH A KNOB OFF ITS CONFIGURED VALUE: {every}, {knobs}{tail}", 0
        return f"PASSED: {every}{tail}", 0
    on_fallback_failed = t.get("failed_on_fallback") or 0
    no_verdict = f"{plural(on_fallback_failed, 'cycle')} failed on a fallback (no product verdict)"
    if set(bad) == {"failed_on_fallback"}:
        # No product failure, but no product verdict either for these cycles (their
        # primary did not come back for a rerun before the night stopped, or the retries
        # ran out): exit 1, the night did not test them.
        rest = run - on_fallback_failed
        others = f"; the other {plural(rest, 'cycle')} passed" if rest else ""
        return f"INCOMPLETE: {no_verdict}{others}{tail}", 1
    parts = []
    if t.get("failed"):
        parts.append(plural(t["failed"], "product failure"))
    if t.get("infra_error"):
        parts.append(plural(t["infra_error"], "unrepaired infra error"))
    if t.get("timeout"):
        parts.append(plural(t["timeout"], "timeout"))
    if t.get("harness_error"):
        parts.append(plural(t["harness_error"], "harness error"))
    if on_fallback_failed:
        parts.append(no_verdict)
    return f"FAILED: {', '.join(parts)} in {plural(run, 'cycle')}{tail}", 1


def _tail(tb: str | None, lines: int = 12) -> str | None:
    if not tb:
        return None
    return "\n".join(tb.rstrip().splitlines()[-lines:])
