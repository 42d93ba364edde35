"""The pages and the pushed fragments, from one set of templates (jinja2, autoescaped).

A fragment the stream pushes (a section, an incident's row) is the same macro the page
was first drawn with, so a page kept live and a page loaded afresh show the same. Free
text from the ledger (details, reasons, targets) passes through ``redact`` on its way in,
whatever the ledger holds.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from ..numbers import iso
from ..redaction import redact
from ..report.fmt import fmt_duration
from ..report.incidents import incident_outcome, repair_result
from ..report.svg import VERDICT_LABELS
from ..report.timelines import health_timeline_svg
from ..verdicts import CYCLE_VERDICTS
from .live import NightView

# The lists of a night's page: each item's HTML id is ``<prefix>-<id>``.
LISTS = {"incidents": "incident", "repairs": "repair", "fallbacks": "fallback", "faults": "fault"}


@cache
def env() -> Environment:
    e = Environment(
        loader=PackageLoader("overnight.serve", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.filters.update(when=when, day=day, dur=fmt_duration, clean=clean)
    e.globals.update(
        verdicts=[(v.value, VERDICT_LABELS.get(v.value, v.value)) for v in CYCLE_VERDICTS],
        outcome=_outcome,
        repair_result=repair_result,
        tz_label=_tz_label,
    )
    return e


def clean(text: Any) -> str:
    """Free text from the ledger, fit to show: secrets masked (the template escapes it)."""
    return "" if text is None else redact(str(text))


def when(ts: float | None) -> Markup:
    """A moment as the server's local clock time, with its full date and offset in
    ``datetime`` (and a tooltip)."""
    if ts is None:
        return Markup("–")
    stamp = iso(ts) or ""
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(
        stamp, time.strftime("%H:%M:%S", time.localtime(ts))
    )


def day(ts: float | None) -> Markup:
    if ts is None:
        return Markup("–")
    stamp = iso(ts) or ""
    return Markup('<time datetime="{0}">{1}</time>').format(
        stamp, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    )


def _tz_label() -> str:
    offset = datetime.now().astimezone().strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"


def _outcome(view: NightView, incident: dict[str, Any]) -> str:
    """How an incident ended, as the morning report says it; for an open one, what has
    been tried so far."""
    rows = view.repairs_of(incident["id"])
    skipped = [r for r in rows if repair_result(r["result"]) == "skipped"]
    repairs = [r for r in rows if repair_result(r["result"]) != "skipped"]
    if incident["verified_at"] is None and incident["state"] == "open":
        running = [r for r in repairs if r["result"] is None]
        tried = len(repairs) - len(running)
        parts = [f"{tried} repair attempt{'s' if tried != 1 else ''} so far"]
        if running:
            parts.append(f"{running[-1]['strategy']} running")
        return "open: " + ", ".join(parts)
    ours = incident["state"] == "repaired" and any(r["verified"] for r in repairs)
    return incident_outcome(incident, repairs, view.fallbacks_of(incident["id"]), ours, skipped)


def _fragments(**context: Any) -> Any:
    return env().get_template("fragments.html.j2").make_module(context)


def section(view: NightView, name: str) -> str:
    """A section's body (``summary`` or ``health``) as the page holds it."""
    module = _fragments()
    if name == "summary":
        return str(module.summary_body(view))
    return str(module.health_body(view, _timeline_svg(view)))


def item(view: NightView, kind: str, item_id: int) -> str | None:
    """One row of a list (``incidents``, ``repairs``, ``fallbacks``, ``faults``); None when
    the view no longer has it."""
    module = _fragments()
    if kind == "incidents" and item_id in view.incidents:
        return str(module.incident_row(view, view.incidents[item_id]))
    if kind == "repairs" and item_id in view.repairs:
        return str(module.repair_row(view.repairs[item_id]))
    if kind == "fallbacks" and item_id in view.fallbacks:
        return str(module.fallback_row(view.fallbacks[item_id]))
    if kind == "faults":
        fault = next((f for f in view.faults.values() if f["id"] == item_id), None)
        return str(module.fault_row(fault)) if fault is not None else None
    return None


def _timeline_svg(view: NightView) -> Markup:
    """The morning report's health timeline, drawn from what the view holds so far."""
    night = view.night
    report = {
        "started_at": iso(night.get("started_at")),
        "started_ts": night.get("started_at"),
        "ended_ts": night.get("ended_at"),
        "health_timeline": view.timeline(),
        "incidents": [{**i, "escalation": clean(i["escalation"]) or None} for i in view.incidents.values()],
        "faults": {
            "injections": [
                {**f, "fault": clean(f["fault"]), "spec": clean(f["spec"]) or None}
                for f in view.faults.values()
                if f["injected_at"] is not None
            ]
        },
    }
    return health_timeline_svg(report)


def page(name: str, **context: Any) -> str:
    return env().get_template(name).render(**context)


def night_page(view: NightView, ledger: str, live: bool) -> str:
    return page(
        "night.html.j2",
        view=view,
        ledger=ledger,
        live=live,
        summary=Markup(section(view, "summary")),
        health=Markup(section(view, "health")),
        lists={kind: [Markup(item(view, kind, i) or "") for i in item_ids(view, kind)] for kind in LISTS},
    )


def item_ids(view: NightView, kind: str) -> list[int]:
    if kind == "faults":
        return sorted(f["id"] for f in view.faults.values())
    return sorted(getattr(view, kind))
