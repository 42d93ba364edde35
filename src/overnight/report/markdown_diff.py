"""``overnight diff`` in Markdown: two nights side by side, rendered from the comparison
``diff.compare`` built (never from anything else), as the morning report is rendered
from the report."""

from __future__ import annotations

from typing import Any

from ..redaction import MASK
from ..weakening.settings import show
from .markdown_common import _esc, _s
from .markdown_results import _figure, _v
from .markdown_weakening import classification, code_and_notes


def render_diff_markdown(d: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    _header(w, d)
    _weakening(w, d)
    _verdicts(w, d)
    _results(w, d)
    _steps(w, d)
    _incidents(w, d)
    _tokens(w, d)
    _quality(w, d)
    _settings(w, d)
    return "\n".join(out).rstrip("\n") + "\n"


def _row(w: Any, label: str, a: Any, b: Any) -> None:
    w(f"| {label} | {a} | {b} |")


def _header(w: Any, d: dict[str, Any]) -> None:
    a, b = d["a"], d["b"]
    w(f"# Nights compared: {a['night_id']} → {b['night_id']}")
    w("")
    w("| | night A | night B |")
    w("|---|---|---|")
    _row(w, "Night", f"`{a['night_id']}`", f"`{b['night_id']}`")
    if a.get("ledger") or b.get("ledger"):
        _row(w, "Ledger", _esc(a.get("ledger")), _esc(b.get("ledger")))
    _row(w, "Scenario", f"`{_esc(a['scenario'])}`", f"`{_esc(b['scenario'])}`")
    _row(w, "Started", a["started_at"], b["started_at"])
    _row(w, "Status", a["status"], b["status"])
    _row(w, "Verdict", f"**{_esc(a['verdict'])}**", f"**{_esc(b['verdict'])}**")
    _row(w, "Seed", a["seed"], b["seed"])
    _row(w, "Git commit", _commit(a.get("git_commit")), _commit(b.get("git_commit")))
    w("")
    for note in d.get("notes") or []:
        w(f"_Note: {_esc(note)}._")
        w("")
    plan = d["plan"]
    if not d["comparable"]:
        diffs = [
            f"{x['setting']}: {show(x['a'])} → {show(x['b'])}" for x in plan.get("settings_differ") or []
        ]
        if plan.get("choices_a") != plan.get("choices_b"):
            diffs.append(f"plan choices: {show(plan.get('choices_a'))} → {show(plan.get('choices_b'))}")
        if plan.get("faults_a") != plan.get("faults_b"):
            diffs.append(
                f"injected faults: {_faults(plan.get('faults_a'))} → {_faults(plan.get('faults_b'))}"
            )
        w(
            "**Not like for like: the two nights ran different plans** ("
            + _esc("; ".join(diffs))
            + "). Their figures are shown side by side, without changes."
        )
        w("")


def _commit(commit: Any) -> str:
    return f"`{commit}`" if commit else "not recorded (not a git work tree)"


def _value(x: Any) -> str:
    """A setting's value as JSON; a masked secret as the mask alone."""
    return MASK if x == MASK else _esc(show(x))


def _faults(specs: Any) -> str:
    return ", ".join(specs or []) or "none"


def _weakening(w: Any, d: dict[str, Any]) -> None:
    a = d["a"]
    wk = d.get("weakening") or {}
    w(f"## Weakening since night A ({a['night_id']})")
    w("")
    w(f"{_esc(str(wk.get('text') or ''))[:1].upper()}{_esc(str(wk.get('text') or ''))[1:]}.")
    w("")
    weakened = d.get("weakened") or []
    if weakened:
        w("**Checks weakened from night A to night B:**")
        w("")
        for item in weakened:
            w(f"- {_esc(item.get('text'))}")
    else:
        w("No check weakened from night A to night B.")
    w("")
    acknowledged = wk.get("acknowledged") or []
    if acknowledged:
        w("Acknowledged (`[settings.acknowledged]` of night B):")
        w("")
        for change in acknowledged:
            w(f"- {_esc(change.get('text'))} — acknowledged: {_esc(change.get('acknowledged'))}")
        w("")
    code_and_notes(w, wk, "code checks: not compared")


def _verdicts(w: Any, d: dict[str, Any]) -> None:
    v = d["verdicts"]
    w("## Verdicts per input")
    w("")
    w(f"{_esc(v['text'][:1].upper() + v['text'][1:])}.")
    only = [
        f"{v[key]} only in night {name}" for key, name in (("only_a", "A"), ("only_b", "B")) if v.get(key)
    ]
    if only:
        w(f"Finished inputs not in the other night: {', '.join(only)}.")
    w("")
    cycles = v.get("cycles") or []
    if not cycles:
        return
    w("| input seed | night A | night B |")
    w("|---|---|---|")
    for c in cycles:
        w(
            f"| `{c['input_seed']}` | cycle {c['a']['cycle']}: {c['a']['verdict']} "
            f"| cycle {c['b']['cycle']}: {c['b']['verdict']} |"
        )
    more = v["flipped"] - len(cycles)
    if more > 0:
        w("")
        w(f"… and {more} more (`--json` lists the first {len(cycles)} too; the counts cover them all).")
    w("")


def _change(name: str, f: dict[str, Any]) -> str:
    x = f.get("delta")
    if x is None:
        return "–"
    sign = "+" if isinstance(x, int | float) and x > 0 else ""
    return f"{sign}{_figure(name, x, True)}"


def _results(w: Any, d: dict[str, Any]) -> None:
    w("## Results")
    w("")
    w("| figure | night A | night B | change |")
    w("|---|---:|---:|---:|")
    for name, f in d["figures"].items():
        label = name.replace("_", " ")
        w(f"| {label} | {_figure(name, f['a'])} | {_figure(name, f['b'])} | {_change(name, f)} |")
    for name, f in d["totals"].items():
        if name in d["figures"] or not (f["a"] or f["b"]):
            continue
        w(f"| {name.replace('_', ' ')} | {_v(f['a'])} | {_v(f['b'])} | {_change(name, f)} |")
    w("")


def _steps(w: Any, d: dict[str, Any]) -> None:
    w("## Step durations")
    w("")
    steps = d.get("steps") or {}
    if not steps:
        w("No step was recorded in either night.")
        w("")
        return
    w("| step | runs A | runs B | p50 A | p50 B | p50 change | p95 A | p95 B | p95 change |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, st in steps.items():
        p50, p95 = st["p50"], st["p95"]
        w(
            f"| `{_esc(name)}` | {_v(st['n']['a'])} | {_v(st['n']['b'])} | {_s(p50['a'])} | {_s(p50['b'])} "
            f"| {_signed_s(p50['delta'])} | {_s(p95['a'])} | {_s(p95['b'])} | {_signed_s(p95['delta'])} |"
        )
    w("")


def _signed_s(x: Any) -> str:
    if x is None:
        return "–"
    return f"-{_s(-x)}" if x < 0 else f"+{_s(x)}"


def _incidents(w: Any, d: dict[str, Any]) -> None:
    w("## Incidents by component and kind")
    w("")
    rows = d.get("incidents") or []
    if not rows:
        w("No incident in either night.")
        w("")
        return
    w("| component | kind | night A | night B | change |")
    w("|---|---|---:|---:|---:|")
    for r in rows:
        w(f"| {_esc(r['component'])} | {_esc(r['kind'])} | {r['a']} | {r['b']} | {_change('incidents', r)} |")
    w("")


def _tokens(w: Any, d: dict[str, Any]) -> None:
    w("## Token usage and cost")
    w("")
    tokens, cost = d.get("tokens"), d.get("cost")
    if not tokens:
        w("No token usage was recorded in either night.")
        w("")
        return
    w("| | night A | night B | change |")
    w("|---|---:|---:|---:|")
    for name, f in tokens.items():
        w(f"| {name.replace('_', ' ')} | {_count(f['a'])} | {_count(f['b'])} | {_count(f['delta'], True)} |")
    if cost:
        ca, cb = cost.get("currency_a"), cost.get("currency_b")
        label = f"cost ({cost['currency']})" if ca == cb or not (ca and cb) else f"cost ({ca} / {cb})"
        w(f"| {label} | {_money(cost['a'])} | {_money(cost['b'])} | {_money(cost['delta'], True)} |")
    else:
        w("| cost | – | – | – |")
    w("")
    if not cost:
        w("Cost: no price table configured in either night (`[report] prices`).")
        w("")


def _count(x: Any, signed: bool = False) -> str:
    """A count as the report's token section writes it: ``75,059``."""
    if not isinstance(x, int) or isinstance(x, bool):
        return _v(x)
    return f"{'+' if signed and x > 0 else ''}{x:,}"


def _money(x: Any, signed: bool = False) -> str:
    if not isinstance(x, int | float):
        return "–"
    return f"{'+' if signed and x > 0 else ''}{x:.2f}"


def _quality(w: Any, d: dict[str, Any]) -> None:
    w("## Quality")
    w("")
    q = d.get("quality")
    if not q:
        w("No quality score was recorded in either night.")
        w("")
        return
    w(f"| `{_esc(q['metric'])}` | night A | night B | change |")
    w("|---|---:|---:|---:|")
    w(f"| cycles scored | {_v(q['n']['a'])} | {_v(q['n']['b'])} | {_change('n', q['n'])} |")
    w(f"| mean | {_v(q['mean']['a'])} | {_v(q['mean']['b'])} | {_change('mean', q['mean'])} |")
    w("")


def _settings(w: Any, d: dict[str, Any]) -> None:
    w("## Protected settings and plan choices")
    w("")
    rows = d.get("settings") or []
    if rows:
        w("| protected setting | night A | night B | change | judged |")
        w("|---|---|---|---|---|")
        for r in rows:
            a = _value(r["a"]) if r["in_a"] else "(absent)"
            b = _value(r["b"]) if r["in_b"] else "(absent)"
            change = r.get("change")
            if change is None:
                status = "not known (a secret stored masked)" if r["status"] == "not known" else r["status"]
                w(f"| `{_esc(r['setting'])}` | {a} | {b} | {status} | |")
            else:
                judged = _esc(classification({**change, "secret": change.get("masked")}))
                w(f"| `{_esc(r['setting'])}` | {a} | {b} | {_esc(change['text'])} | {judged} |")
        w("")
    else:
        w("Neither night had protected settings.")
        w("")
    plan = d["plan"]
    choices_a, choices_b = _esc(show(plan.get("choices_a") or {})), _esc(show(plan.get("choices_b") or {}))
    w(f"Plan choices (command line): night A {choices_a}, night B {choices_b}.")
    w(f"Injected faults: night A {_faults(plan.get('faults_a'))}; night B {_faults(plan.get('faults_b'))}.")
    w("")
