"""Helpers the Markdown report's sections share: verdict icons, durations, times and escaping."""

from __future__ import annotations

_ICON = {
    "passed": "✅",
    "failed": "❌",
    "infra_error": "🔌",
    "timeout": "⏱️",
    "harness_error": "🛠️",
    "failed_on_fallback": "🩹",
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
