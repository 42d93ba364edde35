"""Keep secrets out of everything we write (promise 7).

Two nets: values that came from ``${ENV}`` interpolation or were declared secret are
registered here and replaced wherever they appear; and passwords inside URLs
(``scheme://user:password@host``) are masked whatever their origin.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)")
_KEYISH = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization)\b"
    r"\s*[=:]\s*['\"]?)(?P<val>(?:Bearer\s+|Basic\s+)?[^\s'\",;&]+)"
)

_lock = threading.Lock()
_secrets: set[str] = set()
# Secrets shorter than this are not registered: replacing "1" everywhere would
# mangle every number in a report and protect nothing.
_MIN_LEN = 4


def register_secret(value: str | None) -> None:
    """Remember a secret value so that ``redact`` masks it from now on."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str | None) -> str | None:
    """Return ``text`` with registered secrets and URL passwords masked."""
    if not text:
        return text
    if _secrets:
        with _lock:
            known = sorted(_secrets, key=len, reverse=True)
        for value in known:
            if value in text:
                text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYISH.sub(lambda m: m.group("head") + MASK, text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line passes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)) or ""


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: its password masked."""
    return redact(url) or url
