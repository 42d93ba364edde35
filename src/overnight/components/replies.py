"""Scripted sandbox replies: the file an ``llm`` component's ``sandbox_replies`` names.

TOML, one ``[[reply]]`` table per rule, tried in order::

    [[reply]]
    pattern = "reset .*password"          # a regular expression, searched (any case) in
    replies = [                           # the last user message
        "Open Settings, then Security [faq-12].",
        "Use the reset link on the sign-in page [faq-12].",
    ]

    [[reply]]
    pattern = "refund"
    reply = "Refunds take 5 days [faq-31]."   # one reply

or JSON Lines, one rule per line (``{"pattern": "refund", "reply": "…"}``). Read and
checked when the config is (a missing file, a bad pattern or an unknown key is one line
naming ``components.NAME.sandbox_replies``, exit 2); the sandbox gets the rules as data
(components never import the sandbox), and ``overnight sandbox --replies FILE`` reads the
same file.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["load_replies"]

_KEYS = {"pattern", "replies", "reply"}


def load_replies(path: Path) -> list[dict[str, Any]]:
    """The rules of a replies file, each ``{"pattern": str, "replies": [str, …]}``; a
    ValueError says what is wrong, in one line (the caller names the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if path.suffix.lower() == ".toml":
        try:
            raw = tomllib.loads(text).get("reply")
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not TOML ({exc})") from None
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{path}: no [[reply]] tables")
        where = "[[reply]] number"
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}: line {n} is not JSON ({exc})") from None
        if not raw:
            raise ValueError(f"{path}: no rules (one JSON object per line)")
        where = "rule number"
    else:
        raise ValueError(f"{path}: expected a .toml or .jsonl file")
    return [_rule(entry, f"{path}: {where} {i}") for i, entry in enumerate(raw, 1)]


def _rule(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table with pattern and replies")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (keys: pattern, replies or reply)")
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where}: pattern must be a non-empty string (a regular expression)")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: pattern {pattern!r} is not a regular expression ({exc})") from None
    if ("replies" in entry) == ("reply" in entry):
        raise ValueError(f"{where}: give replies (a list) or reply (one), not both or neither")
    replies = entry["replies"] if "replies" in entry else [entry["reply"]]
    if not isinstance(replies, list) or not replies or not all(isinstance(r, str) and r for r in replies):
        raise ValueError(f"{where}: replies must be a non-empty list of non-empty strings")
    return {"pattern": pattern, "replies": list(replies)}
