"""The Markdown report's "Repair agent" section: health, repairs, degradation prevented,
fallbacks, knob changes, incidents and injected faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..numbers import plural
from .markdown_common import _HEALTH, _esc, _hhmmss, _s, _time


def _agent(w: Any, r: dict[str, Any]) -> None:
    agent = r.get("agent") or {}
    w("## Repair agent")
    w("")
    w("### System Health")
    w("")
    for h in agent.get("system_health") or []:
        # The state is the last probe's; what the night's incidents came to, and whether a
        # repair of ours restored the component, is said below it, never folded into it.
        state = _HEALTH.get(h["state"], h["state"])
        probe = (
            f" — last probed {_time(h['last_probe_at'])} ({h['last_probe_trigger']}, "
            f"{_s(h['last_probe_latency_s'])}): {_esc(h['last_probe_detail'])}"
            if h["last_probe_at"]
            else ""
        )
        w(f"- **{h['component']}**: {state}{probe}")
        if h["repairs"]:
            w(f"  - {plural(h['repairs'], 'repair')} performed, {h.get('repairs_verified', 0)} verified")
        for note in h.get("notes") or []:
            w(f"  - {_esc(note)}")
    if not agent.get("system_health"):
        w("No components.")
    w("")
    for b in agent.get("loop_blocked") or []:
        times = plural(b["times"], "time")
        w(
            f"- ⚠️ The {b['what']} of **{b['component']}** blocked the event loop {times}, "
            f"up to {_s(b['longest_s'])} ({_s(b['total_s'])} in all; last at {_time(b['last_at'])}): "
            "every cycle and probe froze meanwhile."
        )
    restarts = agent.get("restarts") or []
    if restarts:
        last = restarts[-1]
        w(
            f"- ⚠️ Monitors restarted after a crash: {len(restarts)} "
            f"(last: {_esc(last['message'])} at {_time(last['at'])})."
        )
    lag = agent.get("loop_lag")
    if lag:
        w(f"- Event loop lag: p99 {_s(lag['p99_s'])}, max {_s(lag['max_s'])} over {lag['samples']} samples.")
    if agent.get("loop_blocked") or restarts or lag:
        w("")
    repairs = agent.get("repairs") or []
    verified = sum(1 for rp in repairs if rp["verified"])
    _listing(
        w,
        f"Repairs Performed: {len(repairs)} total, {verified} verified",
        repairs,
        _repair_line,
        "None needed." if not r.get("incidents") else "No repair actions (incidents closed without one).",
    )
    prevented = r.get("degradation_prevented") or []
    blocked = r.get("blocked_attempts") or []
    w(f"### Degradation Prevented: {plural(len(prevented) + len(blocked), 'instance')}")
    w("")
    for d in prevented:
        w(
            f"- **{d['component']}** (incident #{d['incident_id']}): did not {d['shortcut']} — "
            f"{d['harm']}; instead: {_esc(d.get('instead'))}"
        )
    for b in blocked:
        w(f"- **Blocked** at {_time(b['at'])}: {_esc(b['message'] or b['attempted'])} ({b['reason']})")
    if not prevented and not blocked:
        w("No degrading shortcut was available or attempted.")
    w("")
    fallbacks = r.get("fallbacks") or []
    _listing(
        w,
        f"Fallbacks Used: {len(fallbacks)}",
        fallbacks,
        _fallback_line,
        "None: every cycle ran against its primary dependencies.",
    )
    knobs = r.get("knob_changes") or []
    _listing(
        w, f"Knob changes: {len(knobs)}", knobs, _knob_line, "None: every knob kept its configured value."
    )
    incidents = r.get("incidents") or []
    ttd, ttr = agent.get("time_to_detect_s") or {}, agent.get("time_to_repair_s") or {}
    w(f"### Incidents: {len(incidents)}")
    w("")
    if incidents:
        w(
            "| # | component | diagnosed | detected | cycle | repair actions (action time) | state "
            "| detection → verified healthy | what happened |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        for i in incidents:
            reps = (
                ", ".join(
                    f"{x['strategy']} ({_s(x['duration_s'])}){' ✓' if x['verified'] else ''}"
                    for x in i["repairs"]
                )
                or "–"
            )
            w(
                f"| {i['id']} | {i['component']} | {i['fault_kind']} "
                f"| {_time(i['detected_at'])} ({i['trigger']}) "
                f"| {i['cycle'] if i['cycle'] is not None else '–'} | {reps} | {i['state']} "
                f"| {_s(i.get('time_to_healthy_s'))} | {_esc(i.get('outcome'))} |"
            )
        w("")
        n = plural(ttr.get("n", 0), "incident")
        w(
            "Time to repair (detection → verified healthy after a repair of ours): "
            f"p50 {_s(ttr.get('p50'))}, p95 {_s(ttr.get('p95'))} over {n} repaired by us."
        )
        w("")
    faults = r.get("faults") or {}
    injections = faults.get("injections") or []
    if injections or faults.get("failed"):
        summary = faults.get("summary") or {}
        w(f"### Injected faults: {len(injections)}")
        w("")
        w(
            "| fault | injected | detected after | diagnosed | repairs | verified after "
            "| cycles hit → verdicts |"
        )
        w("|---|---|---|---|---|---|---|")
        for f in injections:
            cycle = f" (cycle {f['cycle']})" if f.get("cycle") else ""
            diag = (
                ("✓ " if f["diagnosis_correct"] else "✗ ") + str(f["diagnosed_kind"])
                if f["detected"]
                else "not detected"
            )
            reps = ", ".join(f"{x['strategy']}{' ✓' if x['verified'] else ''}" for x in f["repairs"]) or (
                "none needed" if f["incident_state"] == "transient" else "–"
            )
            hit = ", ".join(map(str, f["cycles_hit"])) or "none"
            if f["cycles_hit"]:
                hit += " → " + ", ".join(f"{n} {v}" for v, n in sorted(f["hit_verdicts"].items()))
            w(
                f"| `{_esc(f['spec'])}` | {_hhmmss(f['injected_at'])}{cycle} "
                f"| {_s(f['time_to_detect_s'])} | {diag} "
                f"| {reps} | {_s(f['time_to_repair_s'])} ({f['incident_state'] or '–'}) | {hit} |"
            )
        w("")
        acc = summary.get("diagnosis_accuracy")
        w(
            f"Time to detect (injection → detection): p50 {_s(ttd.get('p50'))}, p95 {_s(ttd.get('p95'))}; "
            f"diagnosis accuracy {f'{acc:.0%}' if acc is not None else '–'}; "
            f"every hit cycle reached a product verdict: {'yes' if summary.get('verdicts_kept') else 'NO'}."
        )
        for f in faults.get("failed") or []:
            w(f"- Not injected: `{_esc(f['spec'])}`: {_esc(f['error'])}")
        w("")


def _listing(
    w: Any, title: str, items: list[dict[str, Any]], line: Callable[[dict[str, Any]], str], none: str
) -> None:
    """A ``### title`` subsection: a line for each item, or ``none`` without any."""
    w(f"### {title}")
    w("")
    for item in items:
        w(line(item))
    if not items:
        w(none)
    w("")


def _repair_line(rp: dict[str, Any]) -> str:
    # The action's own time, and apart from it the time to healthy: a raised timeout
    # takes no time to set, and is no faster a recovery for it.
    result = (
        f"verified healthy {_s(rp.get('time_to_healthy_s'))} after detection ✅"
        if rp["verified"]
        else f"{rp['result']}, not verified"
    )
    knob_text = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in rp["knobs_changed"].items()) or "none"
    cycle = f"cycle {rp['cycle']}" if rp["cycle"] is not None else "between cycles"
    return (
        f"- **{rp['component']} — {rp['fault_kind']}** (incident #{rp['incident_id']}, {cycle}, "
        f"{_time(rp['started_at'])}): `{rp['strategy']}`: action took {_s(rp['duration_s'])}; "
        f"{result}; knobs changed: {knob_text}" + (f" — {_esc(rp['detail'])}" if rp.get("detail") else "")
    )


def _fallback_line(f: dict[str, Any]) -> str:
    span = _s(f["duration_s"]) if f["duration_s"] is not None else "until the end of the night"
    cycles = ", ".join(map(str, f["cycles"])) or "none"
    return (
        f"- **{f['component']}** on its `{f['kind']}` fallback for {span} from {_time(f['started_at'])}; "
        f"cycles touched: {cycles}"
    )


def _knob_line(k: dict[str, Any]) -> str:
    who = f"by {k['by']}" + (f", incident #{k['incident_id']}" if k["incident_id"] is not None else "")
    if k["ended_by"] == "knob_restored":
        until = f"until {_time(k['ended_at'])} (returned to its configured value by {k['returned_by']})"
    elif k["ended_by"] == "knob_changed":
        until = f"until {_time(k['ended_at'])} (changed again)"
    else:
        until = "until the end of the night"
    ran = ", ".join(map(str, k["cycles"])) or "none"
    return (
        f"- **{k['component']}.{k['knob']}** {k['from']} → {k['to']} (configured {k['configured']}) "
        f"at {_time(k['changed_at'])} ({who}); in force {until}, {_s(k['in_force_s'])}; "
        f"cycles that ran with it off: {ran}"
    )
