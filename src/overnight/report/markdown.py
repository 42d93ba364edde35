"""MORNING_REPORT.md, rendered from the report model (never from anything else).

The header and executive summary are here; the agent section is in `markdown_agent`, the
result sections in `markdown_results`, the shared helpers in `markdown_common`."""

from __future__ import annotations

import json
from typing import Any

from .markdown_agent import _agent
from .markdown_common import _ICON, _esc, _s
from .markdown_results import _failures, _flaky, _metrics, _quality, _recommendations, _tests, _tokens, _trend
from .markdown_weakening import _weakening


def render_markdown(r: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    _header(w, r)
    _summary(w, r)
    _agent(w, r)
    _quality(w, r)
    _metrics(w, r)
    _failures(w, r)
    _tests(w, r)
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
    _weakening(w, r)
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
    if t.get("crashed"):
        w(f"| {_ICON['crashed']} Crashed (a worker died twice on the same input) | {t['crashed']} |")
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
