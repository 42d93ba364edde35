"""Tell someone the night ended: a JSON webhook and/or a Telegram message.

``send_notifications`` never raises and never fails the night: each channel's outcome is
returned as ``{"channel", "ok", "status", "error"}`` for the caller to record. The
Telegram bot token travels in the URL path (that is the Bot API's design), and httpx
puts URLs into its exceptions: the token is registered with ``overnight.redaction``
before any request and every error string passes through ``redact``, so it never reaches
a result, the ledger or a log (promise 7).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from .redaction import MASK, redact, register_secret

if TYPE_CHECKING:
    from .config import NotifyConfig

log = logging.getLogger(__name__)

# Telegram refuses messages longer than this.
TELEGRAM_MAX_TEXT = 4096
_BODY_EXCERPT = 300


class _RedactRecords(logging.Filter):
    """Masks secrets in records of the ``httpx`` logger, which logs every request's full
    URL (``HTTP Request: POST https://…/bot<token>/sendMessage``) at INFO, whatever
    handler ends up writing it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _guard_http_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactRecords) for f in logger.filters):
        logger.addFilter(_RedactRecords())


def _result(channel: str, ok: bool, status: int | None = None, error: str | None = None) -> dict[str, Any]:
    return {"channel": channel, "ok": ok, "status": status, "error": error}


def _hide(text: str, *secrets: str | None) -> str:
    """Mask registered secrets, URL passwords, and ``secrets`` (even short ones)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return redact(text) or ""


def _webhook_secrets(url: str) -> tuple[str, ...]:
    """Parts of a webhook URL that may be a credential (Slack, Discord, Teams… put the
    token in the path or query): masked in errors, whatever the exception says."""
    parts = urlsplit(url)
    path_and_query = parts.path + (f"?{parts.query}" if parts.query else "")
    return tuple(p for p in (url, path_and_query if len(path_and_query) > 1 else "", parts.query) if p)


def _describe(exc: BaseException) -> str:
    """``ConnectError: [Errno 111] Connection refused`` (the type names the failure when
    the message is empty, as it is for some timeouts)."""
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# Weakening findings a Telegram message lists (the webhook body has them all).
_TELEGRAM_WEAKENED = 5


def _weakened(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in report.get("weakened") or [] if isinstance(w, dict)]


def webhook_payload(report: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """The JSON body of the webhook: the night's verdict, counts, what was weakened since
    the previous night (``weakened``: each finding's ``source`` and one-line ``text``),
    and report files."""
    weakened = _weakened(report)
    return {
        "event": "night_ended",
        "night_id": report.get("night_id"),
        "verdict": report.get("verdict"),
        "exit_code": report.get("exit_code"),
        "status": report.get("status"),
        "totals": report.get("totals"),
        "success_rate": report.get("success_rate"),
        "cycles_run": report.get("cycles_run"),
        "planned_cycles": report.get("planned_cycles"),
        "started_at": report.get("started_at"),
        "ended_at": report.get("ended_at"),
        "incidents": len(report.get("incidents") or []),
        "repairs": len((report.get("agent") or {}).get("repairs") or []),
        "weakened_count": len(weakened),
        "weakened": [{"source": w.get("source"), "text": w.get("text")} for w in weakened],
        "weakening_mode": (report.get("weakening") or {}).get("mode"),
        "report": dict(paths),
    }


def telegram_text(report: dict[str, Any], paths: dict[str, str]) -> str:
    """A short plain-text summary (no parse mode, so nothing needs escaping)."""
    totals = report.get("totals") or {}
    rate = report.get("success_rate")
    lines = [
        f"overnight {report.get('night_id')}: {report.get('verdict')}",
        f"status {report.get('status')}, {report.get('cycles_run')} of {report.get('planned_cycles')} "
        "cycles run",
        ", ".join(f"{k} {v}" for k, v in totals.items()) or "no cycle finished",
        f"success rate {'n/a' if rate is None else f'{rate * 100:.1f}%'}",
        f"incidents {len(report.get('incidents') or [])}, "
        f"repairs {len((report.get('agent') or {}).get('repairs') or [])}",
    ]
    weakened = _weakened(report)
    if weakened:
        lines.append(f"checks weakened since the previous night: {len(weakened)}")
        lines.extend(f"- {w.get('text')}" for w in weakened[:_TELEGRAM_WEAKENED])
        if len(weakened) > _TELEGRAM_WEAKENED:
            lines.append(f"- and {len(weakened) - _TELEGRAM_WEAKENED} more (see the report)")
    where = next((paths[k] for k in ("markdown", "html", "json", "junit") if paths.get(k)), None)
    if where is None and paths:
        where = next(iter(paths.values()))
    if where:
        lines.append(f"report: {where}")
    text = "\n".join(lines)
    return text if len(text) <= TELEGRAM_MAX_TEXT else text[: TELEGRAM_MAX_TEXT - 1] + "…"


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_BODY_EXCERPT] + ("…" if len(text) > _BODY_EXCERPT else "")


def _send_webhook(
    client: httpx.Client, url: str, report: dict[str, Any], paths: dict[str, str]
) -> dict[str, Any]:
    secrets = _webhook_secrets(url)
    try:
        response = client.post(url, json=webhook_payload(report, paths))
    except Exception as exc:
        return _result("webhook", False, None, _hide(_describe(exc), *secrets))
    if response.is_success:
        return _result("webhook", True, response.status_code)
    error = f"HTTP {response.status_code}: {_excerpt(response) or response.reason_phrase}"
    return _result("webhook", False, response.status_code, _hide(error, *secrets))


def _send_telegram(
    client: httpx.Client, cfg: NotifyConfig, report: dict[str, Any], paths: dict[str, str]
) -> dict[str, Any]:
    token = os.environ.get(cfg.telegram_token_env) or ""
    register_secret(token)  # first: whatever fails below, the token is masked
    chat_id = os.environ.get(cfg.telegram_chat_id_env) or ""
    missing = [
        name
        for name, value in ((cfg.telegram_token_env, token), (cfg.telegram_chat_id_env, chat_id))
        if not value
    ]
    if missing:
        return _result("telegram", False, None, f"environment variable not set: {', '.join(missing)}")
    url = f"{cfg.telegram_api.rstrip('/')}/bot{token}/sendMessage"
    body = {"chat_id": chat_id, "text": telegram_text(report, paths), "disable_web_page_preview": True}
    try:
        response = client.post(url, json=body)
    except Exception as exc:
        return _result("telegram", False, None, _hide(_describe(exc), token))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    ok = isinstance(answer, dict) and answer.get("ok") is True
    if response.is_success and ok:
        return _result("telegram", True, response.status_code)
    description = answer.get("description") if isinstance(answer, dict) else None
    if not description:
        description = _excerpt(response) or response.reason_phrase or "no description"
    error = f"HTTP {response.status_code}: {description}"
    if response.is_success:
        error = f"Telegram answered ok=false: {description}"
    return _result("telegram", False, response.status_code, _hide(error, token))


def send_notifications(
    report: dict[str, Any], paths: dict[str, str], cfg: NotifyConfig
) -> list[dict[str, Any]]:
    """Send the night's summary to every configured channel; one result per channel.

    With ``cfg.when == "failure"`` nothing is sent for a night that passed (exit code 0).
    Never raises: a failure to notify is a result with ``ok: False`` and a redacted error.
    """
    if cfg.telegram:
        register_secret(os.environ.get(cfg.telegram_token_env))  # before anything can fail
    _guard_http_logs()
    if cfg.when == "failure" and report.get("exit_code") == 0:
        return []
    channels: list[str] = []
    if cfg.webhook:
        channels.append("webhook")
    if cfg.telegram:
        channels.append("telegram")
    if not channels:
        return []
    results: list[dict[str, Any]] = []
    try:
        client = httpx.Client(timeout=cfg.timeout, headers={"User-Agent": "overnight-notify"})
    except Exception as exc:
        error = _hide(_describe(exc), *(_webhook_secrets(cfg.webhook) if cfg.webhook else ()))
        return [_result(channel, False, None, error) for channel in channels]
    with client:
        for channel in channels:
            try:
                if channel == "webhook":
                    result = _send_webhook(client, cfg.webhook or "", report, paths)
                else:
                    result = _send_telegram(client, cfg, report, paths)
            except Exception as exc:  # a bug here must not take the night's ending down
                secrets = _webhook_secrets(cfg.webhook) if cfg.webhook else ()
                token = os.environ.get(cfg.telegram_token_env)
                result = _result(channel, False, None, _hide(_describe(exc), token, *secrets))
            if result["ok"]:
                log.info("notification sent: %s (HTTP %s)", channel, result["status"])
            else:
                log.warning("notification failed: %s: %s", channel, result["error"])
            results.append(result)
    return results


__all__ = ["send_notifications", "telegram_text", "webhook_payload"]
