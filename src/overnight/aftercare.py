"""After a night ends: its report files, its end-of-night notification, and the record
that both were done (the ``night_reported`` event).

A process killed while writing the report leaves a finished night without one; the next
``overnight run``, ``nights`` or ``report`` on that ledger finds it here, writes the
files and sends the notification that was missed (never twice: a channel already
recorded as notified is not sent again).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from .config import NotifyConfig
from .errors import NightOwned, OvernightError
from .ledger import Ledger, ops, queries
from .notify import send_notifications
from .redaction import redact
from .report import report_paths, write_reports

log = logging.getLogger("overnight")

# A night killed while writing its report is found by the next run (the next evening's
# cron at the latest); older nights are left as they are.
CATCH_UP_WINDOW_S = 7 * 24 * 3600.0
_NOTIFY_KINDS = ("notified", "notify_failed")


def report_night(
    led: Ledger, night_id: str, notify: NotifyConfig | None
) -> tuple[dict[str, Any], Path, list[str]]:
    """Write the four report files, notify where ``[notify]`` says (unless already
    done for this night), record ``night_reported``. Returns (report, folder, one line
    per failed notification)."""
    report, folder = write_reports(led, night_id)
    failures: list[str] = []
    if notify is not None and (notify.webhook or notify.telegram):
        with led.read() as conn:
            already = queries.has_event(conn, night_id, _NOTIFY_KINDS)
        if not already:
            for result in send_notifications(report, report_paths(folder), notify):
                kind = "notified" if result["ok"] else "notify_failed"
                message = f"{result['channel']}: " + ("sent" if result["ok"] else str(result["error"]))
                with contextlib.suppress(OvernightError):  # best effort: the night is over
                    _event(led, night_id, kind, message, result)
                if not result["ok"]:
                    failures.append(redact(message) or message)
    _event(led, night_id, "night_reported", None, {"folder": str(folder)})
    return report, folder, failures


def _event(led: Ledger, night_id: str, kind: str, message: str | None, data: Any) -> None:
    led.write_sync(ops.add_event, night_id, time.time(), kind, message, data, None, None, None)


def catch_up(led: Ledger, now: float | None = None) -> list[tuple[str, Path, list[str], str]]:
    """Report the recently ended nights that have no ``night_reported`` record and whose
    folder is here. A night owned by a live process is left to it. Returns
    (night id, folder, notification failures, verdict line) for each night reported now."""
    now = time.time() if now is None else now
    with led.read() as conn:
        candidates = queries.unreported_nights(conn, now - CATCH_UP_WINDOW_S)
    done: list[tuple[str, Path, list[str], str]] = []
    for night in candidates:
        folder = Path(night["night_dir"]) / night["id"]
        if not folder.is_dir():
            continue  # another machine's night, or a folder the user removed
        try:
            claim = led.claim(night["id"])
        except NightOwned:
            continue
        try:
            with led.read() as conn:
                if queries.has_event(conn, night["id"], ("night_reported",)):
                    continue
            report, folder, failures = report_night(led, night["id"], _notify_config(night))
            done.append((night["id"], folder, failures, str(report.get("verdict"))))
        finally:
            claim.release()
    return done


def _notify_config(night: dict[str, Any]) -> NotifyConfig | None:
    """The night's own ``[notify]``, from the plan it stored (None if it cannot be read
    back, e.g. a ${VAR} no longer set: the report is still written)."""
    from .engine.plan import Plan

    try:
        return Plan.from_json(night["plan"]).load_config().config.notify
    except Exception as exc:  # the report matters more than the notification
        log.warning("night %s: its [notify] settings cannot be read back: %s", night["id"], redact(str(exc)))
        return None
