"""MORNING_REPORT.md, rendered from the report model (never from anything else)."""

from __future__ import annotations

import json
from typing import Any

from ..numbers import plural

_ICON = {
    "passed": "✅",
    "failed": "❌",
    "infra_error": "🔌",
    "timeout": "⏱️",
    "harness_error": "🛠️",
    "failed_on_fallback": "🩹",
}


def _s(x: float | None) -> str:
    if x is None:
        return "–"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    if x < 120:
        return f"{x:.2f} s"
    return f"{x / 60:.1f} min"


def _esc(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


_HEALTH = {
    "healthy": "✅ Healthy",
    "unhealthy": "❌ Unhealthy",
    "unmonitored": "➖ Unmonitored (no probe)",
    "never probed": "❔ Never probed",
}


def _time(iso_ts: str | None) -> str:
    return iso_ts[11:19] if iso_ts else "–"


def render_markdown(r: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    _header(w, r)
    _summary(w, r)
    _agent(w, r)
    _quality(w, r)
    _failures(w, r)
    _flaky(w, r)
    _tokens(w, r)
    _trend(w, r)
    _recommendations(w, r)
    return "\n".join(out) + "\n"


def _header(w: Any, r: dict[str, Any]) -> None:
    w(f"# Morning report — night {r['night_id']}")
    w("")
    w(f"**{r['verdict']}**")
    w("")
    if r["dry_run"]:
        w("_This was a dry run (at most 3 cycles)._")
        w("")
    sessions = r["sessions"]
    resumed = len(sessions) - 1
    fp = r["protected_fingerprint"]
    fp_line = (
        f"`{fp['start'][:12]}` at start and at end"
        if fp["match"]
        else (
            f"`{fp['start'][:12]}` at start; not checked at end: the night did not end"
            if fp["match"] is None
            else f"CHANGED: `{fp['start'][:12]}` at start → `{(fp['end'] or '')[:12]}` at end"
        )
    )
    w("| | |")
    w("|---|---|")
    w(f"| Scenario | `{r['scenario']}` |")
    w(f"| Date | {(r['started_at'] or '')[:10]} |")
    w(f"| Started / ended | {r['started_at']} → {r['ended_at'] or 'not ended'} |")
    w(f"| Duration | {_s(r['duration_s'])} wall, {_s(r['active_s'])} running |")
    w(f"| Status | {r['status']} — {_esc(r['end_reason'])} |")
    w(f"| Sessions | {len(sessions)}{f' (resumed {resumed}×)' if resumed else ''} |")
    w(f"| Seed | {r['seed']} |")
    w(f"| Config fingerprint | `{r['config_fingerprint'][:12]}` |")
    w(f"| Protected settings | {fp_line} |")
    commit = r.get("git_commit")
    w(f"| Project commit | {f'`{commit}`' if commit else 'not recorded (not a git checkout)'} |")
    comps = r.get("components") or []
    real = [c["name"] for c in comps if not c["sandbox"] and c.get("mode") != "replay"]
    fake = [c["name"] for c in comps if c["sandbox"]]
    replay = [c["name"] for c in comps if c.get("mode") == "replay"]
    w(f"| Real components | {', '.join(real) or 'none'} |")
    if fake:
        w(f"| Sandbox components | {', '.join(fake)} (answers generated locally, not by the real APIs) |")
    if replay:
        w(f"| Replayed components | {', '.join(replay)} (recorded data) |")
    settings = r.get("protected_settings") or {}
    if settings:
        shown = ", ".join(f"`{k}` = {_esc(json.dumps(v, ensure_ascii=False))}" for k, v in settings.items())
        w(f"| Protected settings (values) | {shown} |")
    choices = r.get("plan_choices") or {}
    if choices:
        shown = ", ".join(f"`{k}` = {_esc(json.dumps(v, ensure_ascii=False))}" for k, v in choices.items())
        w(f"| Plan choices (command line) | {shown} |")
    use = r.get("component_use") or {}
    if use.get("known") and use.get("unused"):
        w(f"| Declared, never called this night | {', '.join(use['unused'])} |")
    w("")
    if comps:
        w("| component | type | target | real / sandbox | critical |")
        w("|---|---|---|---|---|")
        for c in comps:
            kind = "sandbox" if c["sandbox"] else "real"
            if c.get("mode") == "replay":
                kind = "replay of recorded data"
            w(
                f"| {c['name']} | {c['type']} | {_esc(c['target'])} | {kind} "
                f"| {'yes' if c['critical'] else 'no'} |"
            )
        w("")
    if use.get("known") and use.get("by_step"):
        w("Components the scenario called, per step:")
        w("")
        w("| step | components (calls) |")
        w("|---|---|")
        for step, per in use["by_step"].items():
            w(f"| `{step}` | {', '.join(f'{c} ({n})' for c, n in per.items())} |")
        w("")


def _summary(w: Any, r: dict[str, Any]) -> None:
    w("## Executive summary")
    w("")
    t = r["totals"]
    rate = r["success_rate"]
    w("| | |")
    w("|---|---:|")
    w(f"| Cycles planned | {r['planned_cycles']} |")
    w(f"| Cycles run | {r['cycles_run']} |")
    held = r.get("held_at_gate") or {}
    if held and r["cycles_not_run"]:
        why = _esc("; ".join(held.values()))
        w(f"| Cycles held at the gate when the night ended | {r['cycles_not_run']} ({why}) |")
    w(f"| {_ICON['passed']} Passed | {t.get('passed', 0)} |")
    w(f"| {_ICON['failed']} Failed (product) | {t.get('failed', 0)} |")
    retried = (r.get("infra_retried_to_verdict") or {}).get("count", 0)
    w(f"| {_ICON['infra_error']} Met an infra error, final verdict on a later attempt | {retried} |")
    w(f"| {_ICON['infra_error']} Infra errors (final verdict) | {t.get('infra_error', 0)} |")
    w(f"| {_ICON['timeout']} Timeouts (final) | {t.get('timeout', 0)} |")
    if t.get("harness_error"):
        w(f"| {_ICON['harness_error']} Harness errors | {t['harness_error']} |")
    if t.get("failed_on_fallback"):
        n = t["failed_on_fallback"]
        w(f"| {_ICON['failed_on_fallback']} Failed on a fallback (no product verdict) | {n} |")
    w(f"| Success rate | {f'{rate * 100:.1f}%' if rate is not None else '– (no cycle finished)'} |")
    w(f"| Passed with a fallback | {r.get('passed_with_fallback', 0)} |")
    if r.get("passed_with_knobs_off"):
        w(f"| Passed with a knob off its configured value | {r['passed_with_knobs_off']} |")
    w(f"| Cycles retried | {r['retried_cycles']} |")
    if r["interrupted_attempts"]:
        w(f"| Attempts interrupted by a stop or crash | {r['interrupted_attempts']} |")
    w("")
    w("| duration | runs | p50 | p95 | max |")
    w("|---|---:|---:|---:|---:|")
    c = r["durations"]["cycle"]
    w(f"| **cycle** | {c['n']} | {_s(c['p50'])} | {_s(c['p95'])} | {_s(c['max'])} |")
    for name, st in r["durations"]["steps"].items():
        w(f"| step `{name}` | {st['n']} | {_s(st['p50'])} | {_s(st['p95'])} | {_s(st['max'])} |")
    w("")


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
    w(f"### Repairs Performed: {len(repairs)} total, {verified} verified")
    w("")
    for rp in repairs:
        # The action's own time, and apart from it the time to healthy: a raised timeout
        # takes no time to set, and is no faster a recovery for it.
        result = (
            f"verified healthy {_s(rp.get('time_to_healthy_s'))} after detection ✅"
            if rp["verified"]
            else f"{rp['result']}, not verified"
        )
        knob_text = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in rp["knobs_changed"].items()) or "none"
        cycle = f"cycle {rp['cycle']}" if rp["cycle"] is not None else "between cycles"
        w(
            f"- **{rp['component']} — {rp['fault_kind']}** (incident #{rp['incident_id']}, {cycle}, "
            f"{_time(rp['started_at'])}): `{rp['strategy']}`: action took {_s(rp['duration_s'])}; "
            f"{result}; knobs changed: {knob_text}" + (f" — {_esc(rp['detail'])}" if rp.get("detail") else "")
        )
    if not repairs:
        w("None needed." if not r.get("incidents") else "No repair actions (incidents closed without one).")
    w("")
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
    w(f"### Fallbacks Used: {len(fallbacks)}")
    w("")
    for f in fallbacks:
        span = _s(f["duration_s"]) if f["duration_s"] is not None else "until the end of the night"
        cycles = ", ".join(map(str, f["cycles"])) or "none"
        w(
            f"- **{f['component']}** on its `{f['kind']}` fallback for {span} from {_time(f['started_at'])}; "
            f"cycles touched: {cycles}"
        )
    if not fallbacks:
        w("None: every cycle ran against its primary dependencies.")
    w("")
    knobs = r.get("knob_changes") or []
    w(f"### Knob changes: {len(knobs)}")
    w("")
    for k in knobs:
        who = f"by {k['by']}" + (f", incident #{k['incident_id']}" if k["incident_id"] is not None else "")
        if k["ended_by"] == "knob_restored":
            until = f"until {_time(k['ended_at'])} (returned to its configured value by {k['returned_by']})"
        elif k["ended_by"] == "knob_changed":
            until = f"until {_time(k['ended_at'])} (changed again)"
        else:
            until = "until the end of the night"
        ran = ", ".join(map(str, k["cycles"])) or "none"
        w(
            f"- **{k['component']}.{k['knob']}** {k['from']} → {k['to']} (configured {k['configured']}) "
            f"at {_time(k['changed_at'])} ({who}); in force {until}, {_s(k['in_force_s'])}; "
            f"cycles that ran with it off: {ran}"
        )
    if not knobs:
        w("None: every knob kept its configured value.")
    w("")
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


def _hhmmss(ts: float | None) -> str:
    import time as _t

    return _t.strftime("%H:%M:%S", _t.localtime(ts)) if ts else "–"


def _quality(w: Any, r: dict[str, Any]) -> None:
    q = r.get("quality")
    w("## Quality")
    w("")
    if not q:
        w('No quality score was recorded (a scenario records one with `ctx.metric("score", value)`).')
        w("")
        return
    w(f"`{q['metric']}` of {plural(q['n'], 'cycle')}: average **{q['mean']}**.")
    w("")
    w("| score | cycles |")
    w("|---|---:|")
    for bucket, count in q["buckets"].items():
        w(f"| {bucket} | {count} |")
    w("")
    if q["best"]:
        w("Best: " + ", ".join(f"cycle {b['cycle']} ({b['score']})" for b in q["best"]))
        w("Worst: " + ", ".join(f"cycle {b['cycle']} ({b['score']})" for b in q["worst"]))
        w("")
    if q["weaknesses"]:
        w("Most frequent reviewer weaknesses:")
        w("")
        for item in q["weaknesses"]:
            w(f"- {_esc(item['text'])} ({item['count']}×)")
        w("")


def _failures(w: Any, r: dict[str, Any]) -> None:
    w("## Failures")
    w("")
    if not r["failures"]:
        w("None: every cycle that ran passed." if r["cycles_run"] else "No cycle finished.")
        w("")
    product = [f for f in r["failures"] if f["verdict"] == "failed"]
    other = [f for f in r["failures"] if f["verdict"] not in ("failed", "failed_on_fallback")]
    on_fallback = r.get("fallback_failures") or []
    if product:
        w(f"### Product failures ({len(product)})")
        w("")
        for f in product:
            _failure(w, f)
    if on_fallback:
        # Not product failures: a declared fallback served the final attempt, and no rerun
        # on the primary gave a verdict.
        w(f"### Failed on a fallback — no product verdict ({len(on_fallback)})")
        w("")
        for f in on_fallback:
            _failure(w, f)
            for fb in f["fallbacks"]:
                w(
                    f"  - ran on {fb['component']}'s {fb['kind']} fallback (incident #{fb['incident_id']}, "
                    f"from {_time(fb['started_at'])} to "
                    f"{_time(fb['ended_at']) if fb['ended_at'] else 'the end of the night'})"
                )
            w("")
    if other:
        w(f"### Infrastructure, timeouts and harness errors ({len(other)})")
        w("")
        groups: dict[str, list[dict[str, Any]]] = {}
        for f in other:
            key = (
                f["verdict"]
                if f["verdict"] != "infra_error"
                else f"infra_error: {f['fault_component']}/{f['fault_kind']}"
            )
            groups.setdefault(key, []).append(f)
        for key, items in groups.items():
            w(f"**{key}** — {plural(len(items), 'cycle')}")
            w("")
            for f in items:
                _failure(w, f)
    met = (r.get("infra_retried_to_verdict") or {}).get("cycles") or []
    if met:
        w("Cycles that met an infra error and got their final verdict on a later attempt:")
        w("")
        for m in met:
            w(f"- cycle {m['cycle']} ({', '.join(m['faults'])}) → {m['verdict']}")
        w("")


def _flaky(w: Any, r: dict[str, Any]) -> None:
    w("## Flaky or input-dependent")
    w("")
    flaky = r.get("flaky") or []
    w("**Flaky** (the same input gave different outcomes):")
    w("")
    if not flaky:
        w(
            "None: no input gave different outcomes on two attempts of a cycle, or in an earlier "
            "night with the same settings."
        )
    for f in flaky:
        evidence = "; ".join(
            f"night {e['night_id']} cycle {e['cycle']}"
            + (f" attempt {e['attempt']}" if e["attempt"] is not None else "")
            + f": {e['verdict']}"
            + (f" at `{e['step']}`" if e.get("step") else "")
            for e in f["evidence"]
        )
        w(f"- cycle {f['cycle']} (input `{f['input_seed']}`): {' / '.join(f['outcomes'])} — {_esc(evidence)}")
    w("")
    steps = r.get("input_dependent_steps") or []
    w(
        "**Fails on some inputs** (a step that passed on some cycles' inputs and failed on "
        "others'; not flaky):"
    )
    w("")
    if not steps:
        w("None.")
        w("")
        return
    w("| step | runs | passed | failed | pass rate | 95% CI | failed on cycles |")
    w("|---|---:|---:|---:|---:|---|---|")
    for f in steps:
        lo, hi = f["ci95"]
        cycles = ", ".join(str(i["cycle"]) for i in f["failed_inputs"])
        more = " …" if f["failed"] > len(f["failed_inputs"]) else ""
        w(
            f"| `{f['step']}` | {f['runs']} | {f['passed']} | {f['failed']} | {f['pass_rate'] * 100:.1f}% "
            f"| {lo * 100:.1f}–{hi * 100:.1f}% | {cycles}{more} |"
        )
    w("")


def _tokens(w: Any, r: dict[str, Any]) -> None:
    w("## Token usage and cost")
    w("")
    tk = r.get("tokens")
    if not tk:
        w("No token usage was recorded.")
        w("")
        return
    tot = tk["total"]
    w(
        f"{tot['calls']} calls, {tot['total_tokens']:,} tokens ({tot['prompt_tokens']:,} prompt, "
        f"{tot['completion_tokens']:,} completion)."
    )
    w("")
    w("| step | calls | prompt | completion | total |")
    w("|---|---:|---:|---:|---:|")
    for name, t in tk["per_step"].items():
        w(
            f"| `{name}` | {t['calls']} | {t['prompt_tokens']:,} | {t['completion_tokens']:,} "
            f"| {t['total_tokens']:,} |"
        )
    w("")
    cost = tk.get("cost")
    if cost is None:
        w("Cost: no price table configured (`[report] prices` in the config).")
    else:
        per = ", ".join(f"{m}: {v:.2f}" for m, v in cost["per_model"].items())
        w(
            f"Cost: **{cost['total']:.2f} {cost['currency']}** ({per})"
            + (f"; no price for {', '.join(cost['unpriced_models'])}" if cost["unpriced_models"] else "")
        )
    w("")


def _trend(w: Any, r: dict[str, Any]) -> None:
    w("## Trend")
    w("")
    tr = r.get("trend")
    if not tr:
        w("No earlier night of this scenario in the ledger to compare with.")
        w("")
        return
    w(f"Against night {tr['previous_night_id']} (started {tr['previous_started_at']}):")
    w("")
    if not tr.get("comparable", True):
        diffs = [f"{d['key']}: {_v(d['before'])} → {_v(d['now'])}" for d in tr.get("settings_differ") or []]
        if tr.get("choices_now") != tr.get("choices_before"):
            diffs.append(f"plan choices: {_v(tr.get('choices_before'))} → {_v(tr.get('choices_now'))}")
        if tr.get("faults_now") != tr.get("faults_before"):
            before = ", ".join(tr.get("faults_before") or []) or "none"
            diffs.append(f"injected faults: {before} → {', '.join(tr.get('faults_now') or []) or 'none'}")
        w(
            "**Not like for like: the two nights ran different plans** ("
            + _esc("; ".join(diffs))
            + "). Their figures are shown side by side, without changes."
        )
        w("")
    w("| figure | this night | previous | change |")
    w("|---|---:|---:|---:|")
    for name, f in tr["figures"].items():
        delta = f["delta"]
        sign = "" if delta is None else ("+" if delta > 0 else "")
        now, before, change = _figure(name, f["now"]), _figure(name, f["before"]), _figure(name, delta, True)
        w(f"| {name.replace('_', ' ')} | {now} | {before} | {sign}{change} |")
    w("")


def _figure(name: str, x: Any, change: bool = False) -> str:
    """A trend figure as the summary shows it: the success rate in percent (its change in
    percentage points), the rest as numbers."""
    if name == "success_rate" and isinstance(x, int | float):
        return f"{x * 100:.1f} pp" if change else f"{x * 100:.1f}%"
    return _v(x)


def _v(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    return str(x)


def _recommendations(w: Any, r: dict[str, Any]) -> None:
    w("## Recommendations")
    w("")
    recs = r.get("recommendations") or []
    for rec in recs:
        w(f"- {_esc(rec['text'])} — _evidence: {_esc(rec['evidence'])}_")
    if not recs:
        w("None.")
    w("")


def _failure(w: Any, f: dict[str, Any]) -> None:
    step = f" in step `{f['step']}`" if f["step"] else ""
    link = f" — artifacts: [{f['artifacts_dir']}]({f['artifacts_dir']}/)" if f["artifacts_dir"] else ""
    w(f"- **Cycle {f['cycle']}**{step}, after {plural(f['attempts'], 'attempt')}{link}")
    err = f"{f['error_type'] or ''}: {f['error_message'] or ''}".strip(": ")
    if err:
        w(f"  `{_esc(err)[:400]}`")
    w("")
