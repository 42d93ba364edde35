"""The header's weakening watch in MORNING_REPORT.md: what loosened since the previous
night (``weakened``), every change of a protected setting with its direction, and what
the code check found or why it was not possible (``weakening``)."""

from __future__ import annotations

from typing import Any

from .markdown_common import _esc


def classification(change: dict[str, Any]) -> str:
    """How a change of a protected setting is judged, in words (``weakening — min_* is
    stricter higher (by its name)``)."""
    if change.get("acknowledged") is not None:
        return f"acknowledged: {change['acknowledged']}"
    kind = change.get("classification")
    rule = f" — {change['rule']}" if change.get("rule") else ""
    if kind == "weakening":
        return f"**weakening**{rule}"
    if kind == "stricter":
        return f"stricter{rule}"
    if change.get("secret"):
        return "changed (a secret, compared as changed or unchanged only)"
    return "changed (which way is stricter is not declared)"


def _code(text: Any) -> str:
    """Inline code, on one line, whatever backticks it holds."""
    line = _esc(" ".join(str(text).split()))
    return f"`` {line} ``" if "`" in line else f"`{line}`"


def _weakening(w: Any, r: dict[str, Any]) -> None:
    wk = r.get("weakening")
    if not isinstance(wk, dict):
        return
    w("### Since the previous night")
    w("")
    if wk.get("previous_night_id"):
        started = wk.get("previous_started_at")
        w(f"Against night {wk['previous_night_id']} (started {started}): {_esc(wk['text'])}.")
    else:
        w(f"Weakening watch: {_esc(wk.get('text'))}.")
    w("")
    weakened = r.get("weakened") or []
    if weakened:
        mode = wk.get("mode")
        then = "the night fails" if mode == "fail" else "the verdict says so; exit 0 if the cycles passed"
        w(f'**Checks weakened since the previous night** (`[report] weakening = "{mode}"`: {then}):')
        w("")
        for item in weakened:
            w(f"- {_esc(item.get('text'))}")
        w("")
    settings = wk.get("settings") or []
    if settings:
        w("| protected setting | change | judged |")
        w("|---|---|---|")
        for change in settings:
            w(f"| `{_esc(change['key'])}` | {_esc(change['text'])} | {_esc(classification(change))} |")
        w("")
    code_and_notes(w, wk, "code checks: not recorded for this night")


def code_and_notes(w: Any, wk: dict[str, Any], missing: str) -> None:
    """The code check's line (``missing`` when none was recorded), its findings one per
    line with file:line and commit, then the comparison's notes."""
    code = wk.get("code") or {}
    text = str(code.get("text") or missing)
    w(f"{_esc(text[:1].upper() + text[1:])}.")
    if code.get("note"):
        w(f"({_esc(code['note'])})")
    w("")
    findings = code.get("findings") or []
    for f in findings:
        commit = f" (commit `{str(f.get('commit'))[:12]}`)" if f.get("commit") else ""
        before = f.get("before_text")
        was = f" (was {_code(before)})" if before is not None else ""
        change = str(f.get("change") or "?").replace("_", " ")
        where = _code(f"{f.get('file')}:{f.get('line')}")
        w(f"- {where}{commit}: {change}: {_code(f.get('text') or '')}{was}")
    if findings:
        w("")
    for note in wk.get("notes") or []:
        w(f"_Note: {_esc(note)}._")
        w("")
