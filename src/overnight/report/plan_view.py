"""What the night was asked to test: its protected settings (values, not only a hash),
the plan choices given on the command line, which components the scenario really used
in which step, and whether the previous night ran the same plan (so a trend compares
like with like)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from itertools import compress, repeat
from operator import is_not
from typing import Any

from ..config import SETTINGS_DECLARATIONS
from ..faults.plan import FaultSpec
from ..ledger import queries
from ..redaction import MASK, is_secret_key

_calls = queries.column(queries.AttemptRow, "calls")


def _data(event: dict[str, Any] | None) -> dict[str, Any]:
    if not event or not event.get("data"):
        return {}
    try:
        value = json.loads(event["data"])
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _started(rows: queries.NightRows) -> dict[str, Any]:
    events = rows.events_of("night_started")
    return _data(events[0] if events else None)


def protected_settings(rows: queries.NightRows, masked: bool = True) -> dict[str, Any]:
    """The values the night ran with (secrets masked). Nights recorded before the values
    were: the settings as written in the stored config.

    The ledger masks a string under a secret-looking key, not a number or a boolean
    (``pin_token = 12345678`` is stored as it is): ``masked`` masks every value under
    such a key, at any depth. Unmasked only for comparisons that never show a value
    (the weakening watch says of a secret "changed" or nothing)."""
    settings = _started_or_planned(rows, "settings", _planned_settings)
    shown: dict[str, Any] = mask_secret_values(settings) if masked else settings
    return shown


def mask_secret_values(data: Any) -> Any:
    """``data`` with every value held under a secret-looking key masked, whatever its type."""
    if isinstance(data, dict):
        return {
            k: MASK if is_secret_key(str(k)) and v is not None else mask_secret_values(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [mask_secret_values(v) for v in data]
    return data


def _planned_settings(plan: dict[str, Any]) -> Any:
    """``[settings]`` of the stored config, without the tables that are not settings."""
    settings = (plan.get("config_raw") or {}).get("settings")
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if k not in SETTINGS_DECLARATIONS}


def plan_choices(rows: queries.NightRows) -> dict[str, Any]:
    """Protected settings chosen on the command line for this night (e.g. --mock-websearch)."""
    choices: dict[str, Any] = mask_secret_values(
        _started_or_planned(rows, "plan_choices", lambda plan: plan.get("choices"))
    )
    return choices


def _started_or_planned(
    rows: queries.NightRows, key: str, in_plan: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """The table ``key`` of the night_started event; for nights recorded before it was,
    ``in_plan`` of the stored plan; {} when neither is a table."""
    started = _started(rows)
    if isinstance(started.get(key), dict):
        return dict(started[key])
    try:
        plan = json.loads(rows.night.get("plan") or "{}")
    except ValueError:
        return {}
    found = in_plan(plan)
    return dict(found) if isinstance(found, dict) else {}


def component_use(rows: queries.NightRows, declared: list[str]) -> dict[str, Any]:
    """Calls per step and component over every attempt that recorded them: a component
    the scenario declared but never called (replayed, mocked, skipped) is listed unused.
    ``known`` is False for nights recorded before calls were (nothing is claimed then)."""
    by_step: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    known = False
    attempts = rows.attempts
    for a in compress(attempts, map(is_not, map(_calls, attempts), repeat(None))):
        raw = a.calls
        known = True
        try:
            calls = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            continue
        for step, per_component in (calls or {}).items():
            for component, n in per_component.items():
                by_step[step][component] += int(n)
    by_component: dict[str, dict[str, Any]] = {}
    for step, per_component in by_step.items():
        for component, n in per_component.items():
            row = by_component.setdefault(component, {"calls": 0, "steps": []})
            row["calls"] += n
            row["steps"].append(step)
    for row in by_component.values():
        row["steps"].sort()
    return {
        "known": known,
        "by_step": {step: dict(sorted(v.items())) for step, v in sorted(by_step.items())},
        "by_component": dict(sorted(by_component.items())),
        "unused": sorted(c for c in declared if c not in by_component) if known else [],
    }


def comparison(rows: queries.NightRows, previous: queries.NightRows | None) -> dict[str, Any] | None:
    """Whether the previous night ran the same plan: the same protected settings (by
    their fingerprint, and which values differ) and the same plan choices."""
    if previous is None:
        return None
    now, before = protected_settings(rows), protected_settings(previous)
    differences = [
        {"key": key, "before": before.get(key), "now": now.get(key)}
        for key in sorted(set(now) | set(before))
        if now.get(key) != before.get(key)
    ]
    same_settings = rows.night["protected_fingerprint"] == previous.night["protected_fingerprint"]
    if not same_settings and not differences:
        differences = [{"key": "(a secret or nested value)", "before": "***", "now": "***"}]
    choices_now, choices_before = plan_choices(rows), plan_choices(previous)
    faults_now, faults_before = fault_plan(rows), fault_plan(previous)
    return {
        "comparable": same_settings and choices_now == choices_before and faults_now == faults_before,
        "settings_differ": differences if not same_settings else [],
        "choices_now": choices_now,
        "choices_before": choices_before,
        "faults_now": faults_now,
        "faults_before": faults_before,
    }


def fault_plan(rows: queries.NightRows) -> list[str]:
    """The faults the night was planned to inject, as ``--inject`` specs: a drill night is
    not compared like for like with a night without one."""
    try:
        plan = json.loads(rows.night.get("plan") or "{}")
    except ValueError:
        return []
    specs = plan.get("faults") or []
    return sorted(_label(f) for f in specs if isinstance(f, dict))


def _label(spec: dict[str, Any]) -> str:
    try:
        return FaultSpec.from_dict(spec).label()
    except (TypeError, ValueError):
        return str(spec.get("name") or "?")
