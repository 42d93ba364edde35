"""Classifying a client's exceptions into fault kinds, describing them, and rewriting the
endpoints of URLs (for the fault proxy)."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from ..redaction import redact


class RemoteError(Exception):
    """An error met and diagnosed in another process (a test of a pytest-suite night), as
    it arrives here: the name of its type, its message, and the facts a repair can use
    (``fault_details`` as its component's classifier read them there)."""

    def __init__(self, type_name: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.details = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:  # the 3-arg constructor survives pickling
        return (type(self), (self.type_name, self.message, self.details))


def type_name_of(exc: BaseException) -> str:
    """The bare name of an error's type (a remote error's own type, not RemoteError)."""
    if isinstance(exc, RemoteError):
        return exc.type_name.rpartition(".")[2] or exc.type_name
    return type(exc).__name__


def describe_error(exc: BaseException) -> str:
    status, content = getattr(exc, "status_code", None), getattr(exc, "content", None)
    if isinstance(status, int) and isinstance(content, bytes | str):
        # SDK errors that print their whole response (headers included): keep it short.
        body = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        text = f"HTTP {status}: {' '.join(body.split())[:200]}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type_name_of(exc)
    return redact(f"{name}: {text}" if text else name) or name


_CONNECTION_LOST = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def classify_common(exc: BaseException) -> str | None:
    """Network-level faults any client can hit, by exception type and errno."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    else:
        if isinstance(exc, httpx.TimeoutException):
            return "timeout"
        if isinstance(exc, httpx.ConnectError):
            return "unavailable"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return "connection_lost"
        if isinstance(exc, httpx.HTTPStatusError):
            return classify_status(exc.response.status_code, exc.response.text)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "unavailable"
    if isinstance(exc, _CONNECTION_LOST):
        return "connection_lost"
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOTCONN,
    ):
        return "unavailable"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "resource_low"
    return None


def classify_status(status: int, body: str = "") -> str | None:
    """HTTP status (and body hints) to a fault kind; None for the product's own 4xx."""
    lowered = body.lower()
    if status in (401, 403):
        return "auth_expired"
    if status == 429:
        return "quota_exceeded" if "quota" in lowered else "rate_limited"
    if status in (502, 503, 504):
        return "unavailable"
    if status >= 500:
        return "server_error"
    if status == 408:
        return "timeout"
    return None


def url_endpoint(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a URL; ``default_port`` when the URL has none."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def url_via(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user, password, path and query kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
