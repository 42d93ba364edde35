"""MORNING_REPORT.md, rendered from the report model (never from anything else)."""

from __future__ import annotations

from typing import Any

_ICON = {
    "passed": "✅",
    "failed": "❌",
    "infra_error": "🔌",
    "timeout": "⏱️",
    "harness_error": "🛠️",
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


def render_markdown(r: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
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
        f"`{fp['start'][:12]}` unchanged"
        if fp["match"]
        else (
            "not checked: the night did not end"
            if fp["match"] is None
            else f"CHANGED: `{fp['start'][:12]}` → `{(fp['end'] or '')[:12]}`"
        )
    )
    w("| | |")
    w("|---|---|")
    w(f"| Scenario | `{r['scenario']}` |")
    w(f"| Started | {r['started_at']} |")
    w(f"| Ended | {r['ended_at'] or 'not ended'} |")
    w(f"| Duration | {_s(r['duration_s'])} wall, {_s(r['active_s'])} running |")
    w(f"| Status | {r['status']} — {_esc(r['end_reason'])} |")
    w(f"| Sessions | {len(sessions)}{f' (resumed {resumed}×)' if resumed else ''} |")
    w(f"| Seed | {r['seed']} |")
    w(f"| Protected settings | {fp_line} |")
    w(f"| Config fingerprint | `{r['config_fingerprint'][:12]}` |")
    w("")
    if r.get("components"):
        w("## Components")
        w("")
        sandboxed = r.get("sandbox_components") or []
        if sandboxed:
            w(
                f"**This night ran against overnight's sandbox services** for {', '.join(sandboxed)}: "
                "their answers are generated locally, not by the real APIs."
            )
            w("")
        w("| component | type | target | real / sandbox | critical |")
        w("|---|---|---|---|---|")
        for c in r["components"]:
            kind = "sandbox" if c["sandbox"] else "real"
            if c.get("mode") == "replay":
                kind = "replay of recorded data"
            critical = "yes" if c["critical"] else "no"
            w(f"| {c['name']} | {c['type']} | {_esc(c['target'])} | {kind} | {critical} |")
        w("")
    w("## Summary")
    w("")
    w("| verdict | cycles |")
    w("|---|---:|")
    for verdict, count in r["totals"].items():
        w(f"| {_ICON.get(verdict, '')} {verdict} | {count} |")
    w("")
    rate = r["success_rate"]
    w(
        f"Cycles planned {r['planned_cycles']}, run {r['cycles_run']}, not run {r['cycles_not_run']}. "
        + (f"Success rate {rate * 100:.1f}%." if rate is not None else "No success rate: no cycle finished.")
    )
    w(
        f"Attempts {r['attempts_total']}; cycles retried {r['retried_cycles']}"
        + (
            f"; attempts interrupted by a stop or crash {r['interrupted_attempts']}"
            if r["interrupted_attempts"]
            else ""
        )
        + "."
    )
    w("")
    w("## Durations")
    w("")
    w("| | runs | p50 | p95 | max |")
    w("|---|---:|---:|---:|---:|")
    c = r["durations"]["cycle"]
    w(f"| **cycle** | {c['n']} | {_s(c['p50'])} | {_s(c['p95'])} | {_s(c['max'])} |")
    for name, st in r["durations"]["steps"].items():
        w(f"| step `{name}` | {st['n']} | {_s(st['p50'])} | {_s(st['p95'])} | {_s(st['max'])} |")
    w("")
    w("## Failures")
    w("")
    if not r["failures"]:
        w("None: every cycle that ran passed." if r["cycles_run"] else "No cycle finished.")
    product = [f for f in r["failures"] if f["verdict"] == "failed"]
    other = [f for f in r["failures"] if f["verdict"] != "failed"]
    if product:
        w(f"### Product failures ({len(product)})")
        w("")
        for f in product:
            _failure(w, f)
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
            w(f"**{key}** — {len(items)} cycle{'s' if len(items) != 1 else ''}")
            w("")
            for f in items:
                _failure(w, f)
    w("")
    return "\n".join(out)


def _failure(w: Any, f: dict[str, Any]) -> None:
    step = f" in step `{f['step']}`" if f["step"] else ""
    link = f" — artifacts: [{f['artifacts_dir']}]({f['artifacts_dir']}/)" if f["artifacts_dir"] else ""
    n = f["attempts"]
    w(f"- **Cycle {f['cycle']}**{step}, after {n} attempt{'s' if n != 1 else ''}{link}")
    err = f"{f['error_type'] or ''}: {f['error_message'] or ''}".strip(": ")
    if err:
        w(f"  `{_esc(err)[:400]}`")
    w("")
