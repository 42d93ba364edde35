"""What the report reads from a night's stored rows before any section: a JSON
column as its value, and the night's ``[report]`` table."""

from __future__ import annotations

import json
from typing import Any


def json_field(raw: Any) -> Any:
    if raw is None or isinstance(raw, dict | list):
        return raw
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def report_settings(night: dict[str, Any]) -> dict[str, Any]:
    """The night's ``[report]`` table, from its stored plan (defaults when absent)."""
    plan = json_field(night.get("plan")) or {}
    raw = ((plan.get("config_raw") or {}).get("report")) or {}
    return {
        "currency": raw.get("currency", "USD"),
        "prices": raw.get("prices") or {},
        "score_metric": raw.get("score_metric", "score"),
        "weakness_metric": raw.get("weakness_metric", "weakness"),
        "weakening": raw.get("weakening", "warn"),
    }
