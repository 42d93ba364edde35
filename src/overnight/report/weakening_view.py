"""The weakening watch in the report: what loosened since the previous ended night of the
same scenario — protected settings that moved in their lenient direction, and checks
removed, commented out or skipped in the scenario's code — and the two report keys that
say it, ``weakening`` (everything compared) and ``weakened`` (the findings nobody
acknowledged, each with a one-line ``text``).

What is compared, and with which declarations, is read from the ledger alone: the two
nights' ``night_started`` settings (secrets masked at the ledger's door) and protected
fingerprints, the ``[settings.meta]``, ``[settings.acknowledged]`` and ``[report]
weakening`` of the night being reported (its stored config, so reporting an old night
again gives the same answer), and the night's ``code_checks`` event, when one was
recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from ..config import Acknowledgement, SettingMeta, describe_validation_error
from ..ledger import queries
from ..numbers import iso, plural
from ..redaction import MASK, is_secret_key
from ..weakening.settings import compare
from .plan_view import protected_settings
from .settings import json_field, report_settings
from .trend import PreviousNight

WARN, FAIL = "warn", "fail"
NO_PREVIOUS = "no previous ended night of this scenario to compare with"
NOT_RECORDED = "not recorded for this night"

# A code finding of these kinds is a weakening finding (a changed check is listed as one,
# never judged stricter: the diff of a line cannot tell).
CODE_CHANGES = {
    "removed": "check removed",
    "commented_out": "check commented out",
    "changed": "check changed",
    "skip_added": "skip added",
    "xfail_added": "xfail added",
}
# Characters of a check's line shown in a finding's text (the finding keeps it whole).
_LINE_SHOWN = 100


def declarations(night: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``[settings.meta]`` and ``[settings.acknowledged]`` of the night, from its stored
    config, each entry as a plain dict; an entry that does not read (a night recorded by
    another version) is left out, with a note."""
    plan = json_field(night.get("plan")) or {}
    raw = ((plan.get("config_raw") or {}).get("settings")) or {}
    notes: list[str] = []
    tables: list[dict[str, Any]] = []
    for table, model in (("meta", SettingMeta), ("acknowledged", Acknowledgement)):
        entries = raw.get(table) if isinstance(raw, dict) else None
        read: dict[str, Any] = {}
        if entries is not None and not isinstance(entries, dict):
            notes.append(f"settings.{table} of this night's config is not a table: not used")
            entries = None
        for key, value in (entries or {}).items():
            try:
                read[str(key)] = model.model_validate(value).model_dump()
            except ValidationError as exc:
                where, what = describe_validation_error(exc, f"settings.{table}.{key}.")
                notes.append(f"{where}: {what}: not used")
        tables.append(read)
    return tables[0], tables[1], notes


def weakening_mode(night: dict[str, Any]) -> tuple[str, str | None]:
    """``[report] weakening`` of the night ("warn" unless it says "fail"), and a note when
    the stored value is neither."""
    mode = report_settings(night)["weakening"]
    if mode in (WARN, FAIL):
        return mode, None
    return (
        WARN,
        f"[report] weakening = {mode!r} in this night's config is neither 'warn' nor 'fail': read as 'warn'",
    )


def code_section(data: Any) -> dict[str, Any]:
    """The night's ``code_checks`` event data as the report shows it (``None``: no such
    event was recorded). Always an object with ``status`` (``compared``,
    ``not_available`` or ``not_recorded``), ``reason``, the commits and the night
    compared, ``files``, ``note``, ``findings`` (as recorded) and ``text``, one line."""
    if not isinstance(data, dict):
        return {
            "status": "not_recorded",
            "reason": NOT_RECORDED,
            "before_commit": None,
            "after_commit": None,
            "previous_night_id": None,
            "files": [],
            "note": None,
            "findings": [],
            "text": f"code checks: {NOT_RECORDED}",
        }
    status = data.get("status")
    findings = [f for f in _list(data.get("findings")) if isinstance(f, dict)]
    files = [str(f) for f in _list(data.get("files"))]
    before, after = data.get("before_commit"), data.get("after_commit")
    reason = data.get("reason")
    if status == "compared":
        span = f"{_short(before)} → {_short(after)}"
        found = [f for f in findings if f.get("change") in CODE_CHANGES]
        what = (
            f"{plural(len(found), 'check')} removed, commented out, changed or skipped"
            if found
            else "no check removed, commented out, changed or skipped"
        )
        text = f"code checks: compared {span} ({plural(len(files), 'file')}): {what}"
    else:
        status = "not_available" if status == "not_available" else str(status or "not_available")
        text = f"code checks: not possible: {reason or 'no reason recorded'}"
    return {
        "status": status,
        "reason": reason,
        "before_commit": before,
        "after_commit": after,
        "previous_night_id": data.get("previous_night_id"),
        "files": files,
        "note": data.get("note"),
        "findings": findings,
        "text": text,
    }


def code_findings(code: dict[str, Any]) -> list[dict[str, Any]]:
    """The weakening findings of a ``code_section``: every finding of a compared night
    whose change is one of ``CODE_CHANGES``, each with a one-line ``text`` and the few
    words the verdict line uses (``short``)."""
    if code.get("status") != "compared":
        return []
    out = []
    for f in code.get("findings") or []:
        change = f.get("change")
        if change not in CODE_CHANGES:
            continue
        where = f"{f.get('file') or '?'}:{f.get('line') if f.get('line') is not None else '?'}"
        words = CODE_CHANGES[change]
        statement = _line(f.get("text"))
        if change == "changed" and f.get("before_text") is not None:
            statement = f"{_line(f.get('before_text'))} → {statement}"
        commit = f" (commit {_short(f.get('commit'))})" if f.get("commit") else ""
        out.append(
            {
                "source": "code",
                "file": f.get("file"),
                "line": f.get("line"),
                "commit": f.get("commit"),
                "change": change,
                "statement": f.get("text"),
                "before_statement": f.get("before_text"),
                "short": f"{where} {words}",
                "text": f"{where}{commit}: {words}: {statement}"
                if statement
                else f"{where}{commit}: {words}",
            }
        )
    return out


def weakening_section(
    rows: queries.NightRows,
    previous: PreviousNight | None,
    code_checks: dict[str, Any] | None = None,
    since: str = "the previous night",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(``weakening``, ``weakened``) of the night against ``previous``, the previous ended
    night of the same scenario (``overnight diff``: any earlier night, ``since`` naming
    it in the texts). ``code_checks``: a code comparison (``weakening.code``'s result,
    with ``previous_night_id``) to use instead of the one the night recorded."""
    night = rows.night
    mode, mode_note = weakening_mode(night)
    meta, acknowledged, notes = declarations(night)
    if mode_note:
        notes.append(mode_note)
    if code_checks is None:
        code_events = rows.events_of("code_checks")
        code_checks = json_field(code_events[-1]["data"]) if code_events else None
    code = code_section(code_checks)
    settings: list[dict[str, Any]] = []
    weakened: list[dict[str, Any]] = []
    if previous is None:
        text = NO_PREVIOUS
    else:
        fp_now, fp_before = (
            night.get("protected_fingerprint"),
            previous.rows.night.get("protected_fingerprint"),
        )
        differ = None if fp_now is None or fp_before is None else fp_now != fp_before
        compared = compare(
            protected_settings(previous.rows, masked=False),
            protected_settings(rows, masked=False),
            meta,
            acknowledged,
            is_secret=is_secret_key,
            mask=MASK,
            fingerprints_differ=differ,
        )
        notes.extend(compared.notes)
        settings = [c.as_dict() for c in compared.changes]
        for c in compared.weakened:
            weakened.append(
                {
                    "source": "settings",
                    "key": c.key,
                    "before": c.before,
                    "now": c.now,
                    "direction": c.direction,
                    "short": c.text,
                    "text": c.text,
                }
            )
        their = code.get("previous_night_id")
        if code["status"] == "compared" and their and their != previous.rows.id:
            notes.append(f"the code checks compared night {their}; the settings, night {previous.rows.id}")
        text = _summary(settings, len(weakened), since)
    weakened.extend(code_findings(code))
    return (
        {
            "previous_night_id": previous.rows.id if previous else None,
            "previous_started_at": iso(previous.rows.night["started_at"]) if previous else None,
            "mode": mode,
            "text": text,
            "settings": settings,
            "code": code,
            "acknowledged": [s for s in settings if s["acknowledged"] is not None],
            "notes": notes,
        },
        weakened,
    )


def _summary(settings: list[dict[str, Any]], loosened: int, since: str) -> str:
    if not settings:
        return f"protected settings: unchanged since {since}"
    acknowledged = sum(1 for s in settings if s["acknowledged"] is not None)
    parts = [plural(len(settings), "protected setting") + f" changed since {since}"]
    if loosened:
        parts.append(f"{loosened} loosened")
    if acknowledged:
        parts.append(f"{acknowledged} acknowledged")
    return ", ".join(parts)


def _list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else []


def _short(commit: Any) -> str:
    return str(commit)[:12] if commit else "?"


def _line(text: Any) -> str:
    if text is None:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= _LINE_SHOWN else line[: _LINE_SHOWN - 1] + "…"
