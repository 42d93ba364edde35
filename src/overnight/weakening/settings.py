"""Protected settings compared night over night: each change with its direction where
one is known, and whether it loosens what the tests check.

Two settings tables (as two nights recorded them) are flattened to dotted keys
(``llm.temperature``) and compared key by key. A change is:

- ``raised`` / ``lowered`` for two finite numbers, ``true → false`` / ``false → true``
  for two booleans, ``added`` / ``removed`` for a key one night did not have, and
  ``changed`` for anything else: strings, lists, a type change (``500`` → ``"500"``),
  ``nan`` or ``inf``;
- classified ``weakening`` (looser), ``stricter``, or ``changed`` (direction unknown).
  A number is classified when its setting declares which way is stricter
  (``{"stricter": "higher"}`` or ``"lower"``) or, undeclared, by its name: ``min_*`` is
  stricter higher, ``max_*`` lower. A boolean only when declared (``{"stricter": True}``:
  true is the stricter value), with ``off``, the words shown when it goes to the looser
  value. Nothing else is ever given a direction it cannot be sure of.

Secrets (a key ``is_secret`` calls secret-looking, at any depth, or a value holding the
``mask`` the ledger wrote in its place) are compared as changed / unchanged only, never
shown and never classified. A secret whose masked value is the same both nights is
seen through the nights' settings fingerprints alone: it is said to have changed only
when the fingerprints differ and no other key explains it.

A leaf: stdlib only. The report hands in what the ledger recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

WEAKENING = "weakening"
STRICTER = "stricter"
CHANGED = "changed"

RAISED = "raised"
LOWERED = "lowered"
SWITCHED_OFF = "true → false"
SWITCHED_ON = "false → true"
ADDED = "added"
REMOVED = "removed"

HIGHER = "higher"
LOWER = "lower"

# A value longer than this is cut in a change's text (the report keeps it whole).
_SHOWN = 60
# A key one night did not have (``classify``'s ``before`` or ``now``).
ABSENT: Any = object()


@dataclass(frozen=True)
class Change:
    """One protected setting that differs between two nights."""

    key: str  # dotted for nested tables: "llm.temperature"
    before: Any  # None when absent, or secret
    now: Any
    direction: str  # raised, lowered, "true → false", "false → true", added, removed, changed
    classification: str  # weakening, stricter, changed
    text: str  # "min_application_length lowered 15000 → 500"
    rule: str | None = None  # why it is classified: "declared in [settings.meta]", "min_* …"
    secret: bool = False
    acknowledged: str | None = None  # the reason, when [settings.acknowledged] names its new value

    @property
    def weakened(self) -> bool:
        """A loosening nobody acknowledged."""
        return self.classification == WEAKENING and self.acknowledged is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "before": self.before,
            "now": self.now,
            "direction": self.direction,
            "classification": self.classification,
            "rule": self.rule,
            "secret": self.secret,
            "acknowledged": self.acknowledged,
            "text": self.text,
        }


@dataclass(frozen=True)
class Comparison:
    """Every change, in key order, and what could not be compared (one sentence each)."""

    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def weakened(self) -> list[Change]:
        return [c for c in self.changes if c.weakened]

    @property
    def acknowledged(self) -> list[Change]:
        return [c for c in self.changes if c.acknowledged is not None]


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: ``{"llm": {"temperature": 0.2}}`` →
    ``{"llm.temperature": 0.2}``. An empty table stays a value (``{}``); lists are values."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = dict(value) if isinstance(value, Mapping) else value
    return out


def is_number(value: Any) -> bool:
    """An int or a float, never a bool (``True`` is no number of a threshold)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same kind: ``500 == 500.0`` as numbers of the same type only,
    ``True`` is not ``1``, ``nan`` is the same as ``nan``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        if type(a) is not type(b):
            return False
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def show(value: Any) -> str:
    """A value as the report writes it: JSON (``7.0``, ``true``, ``"GigaChat"``),
    ``nan`` / ``inf`` as such, long values cut."""
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return "null" if value is None else type(value).__name__


def _stricter_by_name(key: str) -> tuple[str | None, str | None]:
    """(``higher`` / ``lower``, the rule) from the setting's own name (its last part)."""
    leaf = key.rsplit(".", 1)[-1].lower()
    if leaf.startswith("min_"):
        return HIGHER, "min_* is stricter higher (by its name)"
    if leaf.startswith("max_"):
        return LOWER, "max_* is stricter lower (by its name)"
    return None, None


def classify(key: str, before: Any, now: Any, declared: Mapping[str, Any] | None = None) -> Change:
    """The change of one visible (not secret) setting from ``before`` to ``now``.

    ``declared``: its ``[settings.meta]`` entry, ``{"stricter": "higher" | "lower" | True
    | False, "off": str | None}``. ``before`` / ``now`` may be ``ABSENT`` (the key was
    added or removed)."""
    stricter = declared.get("stricter") if declared else None
    if before is ABSENT or now is ABSENT:
        direction = ADDED if before is ABSENT else REMOVED
        text = f"{key} added: {show(now)}" if before is ABSENT else f"{key} removed (was {show(before)})"
        return Change(
            key,
            None if before is ABSENT else before,
            None if now is ABSENT else now,
            direction,
            CHANGED,
            text,
        )
    if isinstance(before, bool) and isinstance(now, bool):
        direction = SWITCHED_OFF if before else SWITCHED_ON
        if not isinstance(stricter, bool):
            return Change(key, before, now, direction, CHANGED, f"{key}: {show(before)} → {show(now)}")
        looser = now != stricter
        off = declared.get("off") if declared else None
        tail = f" ({off})" if looser and off else ""
        return Change(
            key,
            before,
            now,
            direction,
            WEAKENING if looser else STRICTER,
            f"{key}: {show(before)} → {show(now)}{tail}",
            rule=f"declared in [settings.meta]: {show(stricter)} is the stricter value",
        )
    if is_number(before) and is_number(now) and math.isfinite(before) and math.isfinite(now):
        if before == now:  # 7 → 7.0: the same number, another type
            text = f"{key}: {show(before)} → {show(now)} ({type(before).__name__} → {type(now).__name__})"
            return Change(key, before, now, CHANGED, CHANGED, text)
        direction = RAISED if now > before else LOWERED
        text = f"{key} {direction} {show(before)} → {show(now)}"
        if stricter in (HIGHER, LOWER):
            rule: str | None = f"declared in [settings.meta]: stricter {stricter}"
        elif declared is None or "stricter" not in declared:
            stricter, rule = _stricter_by_name(key)
        else:  # declared for a boolean, and now a number: no direction is sure
            stricter, rule = None, None
        if stricter is None:
            return Change(key, before, now, direction, CHANGED, text)
        tighter = (direction == RAISED) == (stricter == HIGHER)
        return Change(key, before, now, direction, STRICTER if tighter else WEAKENING, text, rule=rule)
    text = f"{key}: {show(before)} → {show(now)}"
    if _kind(before) != _kind(now):
        text += f" ({_kind(before)} → {_kind(now)})"
    return Change(key, before, now, CHANGED, CHANGED, text)


def compare(
    before: Mapping[str, Any],
    now: Mapping[str, Any],
    declared: Mapping[str, Mapping[str, Any]] | None = None,
    acknowledged: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    is_secret: Callable[[str], bool] | None = None,
    mask: str | None = None,
    fingerprints_differ: bool | None = None,
) -> Comparison:
    """Every change from ``before`` (the previous night's settings) to ``now``.

    ``declared``: ``[settings.meta]`` by dotted key; ``acknowledged``:
    ``[settings.acknowledged]`` by dotted key, ``{"value", "reason"}`` — a change whose
    new value is the acknowledged one carries the reason (it is no longer weakening; a
    secret is never acknowledged). ``is_secret(name)``: whether a key (any part of a
    dotted one) names a secret; ``mask``: what the ledger wrote in place of one (a value
    holding it is a secret too). ``fingerprints_differ``: whether the two nights' settings
    fingerprints (of the unmasked values) differ, ``None`` when unknown: the only way a
    secret masked alike both nights can be seen to change."""
    declared = declared or {}
    acknowledged = acknowledged or {}
    was, is_ = flatten(before), flatten(now)

    def secret(key: str, *values: Any) -> bool:
        if is_secret is not None and any(is_secret(part) for part in key.split(".")):
            return True
        return mask is not None and any(_holds(v, mask) for v in values)

    changes: list[Change] = []
    hidden: list[str] = []  # secrets stored masked alike both nights
    for key in sorted(set(was) | set(is_)):
        a, b = was.get(key, ABSENT), is_.get(key, ABSENT)
        if secret(key, a, b):
            if a is not ABSENT and b is not ABSENT and same_value(a, b):
                if mask is None or _holds(a, mask):  # stored masked: unseen, not unchanged
                    hidden.append(key)
            else:
                changes.append(_secret_change(key, a, b))
            continue
        if a is not ABSENT and b is not ABSENT and same_value(a, b):
            continue
        changes.append(classify(key, a, b, declared.get(key)))

    notes: list[str] = []
    if fingerprints_differ and not changes:
        changes.append(_seen_by_fingerprint(hidden))
    elif fingerprints_differ and hidden:
        notes.append(
            f"{'a secret' if len(hidden) == 1 else 'secrets'} ({_names(hidden)}) stored masked, "
            "compared only through the settings fingerprint, which the other changes already explain: "
            "whether it changed too is not known"
        )

    out: list[Change] = []
    for change in changes:
        ack = acknowledged.get(change.key)
        if ack is None or change.secret or change.direction == REMOVED:
            out.append(change)
        elif _acknowledges(ack.get("value"), change.now):
            out.append(replace(change, acknowledged=str(ack.get("reason") or "")))
        else:
            notes.append(
                f"settings.acknowledged.{change.key} is for the value {show(ack.get('value'))}; "
                f"the night ran with {show(change.now)}: not acknowledged"
            )
            out.append(change)
    return Comparison(out, notes)


def _acknowledges(value: Any, now: Any) -> bool:
    """Whether an acknowledged value is the setting's new value (``500`` acknowledges
    ``500.0``: the config's own number, written either way)."""
    if is_number(value) and is_number(now):
        return math.isfinite(value) and bool(value == now)
    return same_value(value, now)


def _holds(value: Any, mask: str) -> bool:
    if isinstance(value, str):
        return mask in value
    if isinstance(value, list | tuple):
        return any(_holds(v, mask) for v in value)
    if isinstance(value, Mapping):
        return any(_holds(v, mask) for v in value.values())
    return False


def _names(keys: Iterable[str]) -> str:
    return ", ".join(keys)


def _secret_change(key: str, before: Any, now: Any) -> Change:
    if before is ABSENT:
        return Change(
            key, None, None, ADDED, CHANGED, f"{key} added (a secret, value not shown)", secret=True
        )
    if now is ABSENT:
        return Change(
            key, None, None, REMOVED, CHANGED, f"{key} removed (a secret, value not shown)", secret=True
        )
    return Change(
        key, None, None, CHANGED, CHANGED, f"{key} changed (a secret, values not shown)", secret=True
    )


def _seen_by_fingerprint(hidden: list[str]) -> Change:
    """The fingerprints differ and no recorded value explains it."""
    why = "seen only through the settings fingerprint"
    if len(hidden) == 1:
        text = f"{hidden[0]} changed (a secret, values not shown; {why})"
        return Change(hidden[0], None, None, CHANGED, CHANGED, text, secret=True)
    if hidden:
        text = f"one or more of {_names(hidden)} changed (secrets, values not shown; {why})"
        return Change(_names(hidden), None, None, CHANGED, CHANGED, text, secret=True)
    text = "the protected settings changed, but no recorded value did (seen only through the fingerprint)"
    return Change("(not recorded)", None, None, CHANGED, CHANGED, text, secret=True)


__all__ = [
    "ABSENT",
    "ADDED",
    "CHANGED",
    "HIGHER",
    "LOWER",
    "LOWERED",
    "RAISED",
    "REMOVED",
    "STRICTER",
    "SWITCHED_OFF",
    "SWITCHED_ON",
    "WEAKENING",
    "Change",
    "Comparison",
    "classify",
    "compare",
    "flatten",
    "is_number",
    "same_value",
    "show",
]
