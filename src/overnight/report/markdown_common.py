"""Helpers the Markdown report's sections share: verdict icons, durations, times, escaping
and a section's heading."""

from __future__ import annotations

from typing import Any, TypeVar

_T = TypeVar("_T")

_ICON = {
    "passed": "✅",
    "failed": "❌",
    "infra_error": "🔌",
    "timeout": "⏱️",
    "harness_error": "🛠️",
    "failed_on_fallback": "🩹",
    "crashed": "💥",
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


def _heading(w: Any, title: str, data: _T | None, none: str) -> _T | None:
    """A section's ``## title``, and its ``data``; without any, the line ``none`` ends the
    section, and None comes back."""
    w(f"## {title}")
    w("")
    if data:
        return data
    w(none)
    w("")
    return None


_HEALTH = {
    "healthy": "✅ Healthy",
    "unhealthy": "❌ Unhealthy",
    "unmonitored": "➖ Unmonitored (no probe)",
    "never probed": "❔ Never probed",
}


def _time(iso_ts: str | None) -> str:
    return iso_ts[11:19] if iso_ts else "–"


def _hhmmss(ts: float | None) -> str:
    import time as _t

    return _t.strftime("%H:%M:%S", _t.localtime(ts)) if ts else "–"
