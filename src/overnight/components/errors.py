"""Classifying a client's exceptions into fault kinds, describing them, and rewriting the
endpoints of URLs (for the fault proxy)."""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import errno
import math
import re
import time
from collections import deque
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
    code = grpc_code(exc)
    if code is not None:
        # A gRPC error prints as a many-line dump; its code and details say it.
        details = " ".join(_grpc_details(exc).split())[:200]
        text = f"{code}: {details}" if details else code
    elif isinstance(status, int) and isinstance(content, bytes | str):
        # SDK errors that print their whole response (headers included): keep it short.
        body = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        text = f"HTTP {status}: {' '.join(body.split())[:200]}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type_name_of(exc)
    return redact(f"{name}: {text}" if text else name) or name


# -- the default classifier ------------------------------------------------------------------
#
# The errors of the clients users call (requests, urllib3, httpx, aiohttp, grpc, the
# stdlib's urllib, socket and ssl), recognised by their class chain's module and name,
# errno and attributes: none of those libraries is imported here (a core install may not
# have them), and a library that is not installed simply never raises its errors.

# (module, class names, fault kind), in order: the first entry that any class of the
# exception's MRO matches decides. Order matters where a library's classes inherit
# across kinds: urllib3's NewConnectionError is a ConnectTimeoutError, requests'
# ConnectTimeout a ConnectionError, aiohttp's ServerTimeoutError a ClientConnectionError.
_BY_NAME: tuple[tuple[str, frozenset[str], str], ...] = (
    ("ssl", frozenset({"SSLEOFError", "SSLZeroReturnError"}), "connection_lost"),
    ("ssl", frozenset({"SSLError"}), "unavailable"),  # certificate, handshake, wrong protocol
    (
        "urllib3",
        frozenset({"NewConnectionError", "NameResolutionError", "SSLError", "ProxyError"}),
        "unavailable",
    ),
    ("urllib3", frozenset({"ConnectTimeoutError", "ReadTimeoutError", "TimeoutError"}), "timeout"),
    ("urllib3", frozenset({"ProtocolError", "IncompleteRead", "InvalidChunkLength"}), "connection_lost"),
    ("requests", frozenset({"ConnectTimeout", "ReadTimeout", "Timeout"}), "timeout"),
    ("requests", frozenset({"SSLError", "ProxyError", "ConnectionError"}), "unavailable"),
    ("requests", frozenset({"ChunkedEncodingError"}), "connection_lost"),
    ("httpx", frozenset({"TimeoutException"}), "timeout"),
    ("httpx", frozenset({"ConnectError", "ProxyError"}), "unavailable"),
    ("httpx", frozenset({"NetworkError", "RemoteProtocolError"}), "connection_lost"),
    ("httpcore", frozenset({"TimeoutException"}), "timeout"),
    ("httpcore", frozenset({"ConnectError", "ProxyError"}), "unavailable"),
    ("httpcore", frozenset({"NetworkError", "RemoteProtocolError"}), "connection_lost"),
    ("aiohttp", frozenset({"ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError"}), "timeout"),
    ("aiohttp", frozenset({"ClientConnectorError", "ClientSSLError"}), "unavailable"),
    ("aiohttp", frozenset({"ClientConnectionError", "ClientPayloadError"}), "connection_lost"),
    ("http.client", frozenset({"RemoteDisconnected", "IncompleteRead"}), "connection_lost"),
    ("urllib.error", frozenset({"URLError"}), "unavailable"),  # (its reason, walked too, says more)
    ("socket", frozenset({"gaierror", "herror"}), "unavailable"),  # a name that does not resolve
)

_ERRNO: dict[int, str] = {
    errno.ECONNREFUSED: "unavailable",
    errno.EHOSTUNREACH: "unavailable",
    errno.ENETUNREACH: "unavailable",
    errno.EHOSTDOWN: "unavailable",
    errno.ENETDOWN: "unavailable",
    errno.ENOTCONN: "unavailable",
    errno.ECONNRESET: "connection_lost",
    errno.ECONNABORTED: "connection_lost",
    errno.EPIPE: "connection_lost",
    errno.ENETRESET: "connection_lost",
    errno.ETIMEDOUT: "timeout",
    errno.ENOSPC: "resource_low",
}

# gRPC status codes that say the dependency failed (the rest are the caller's own:
# INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, …).
_GRPC: dict[str, str] = {
    "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "timeout",
    "RESOURCE_EXHAUSTED": "rate_limited",  # quota_exceeded when its details speak of a quota
    "UNAUTHENTICATED": "auth_expired",
    "PERMISSION_DENIED": "auth_expired",
    "INTERNAL": "server_error",
    "UNKNOWN": "server_error",
    "DATA_LOSS": "server_error",
}

_MAX_CHAIN = 16  # exceptions looked at, the one raised and what it wraps
_RESPONSE_ERROR = re.compile(r"too many (\d{3}) error responses")  # urllib3's ResponseError


def _is(exc: BaseException, module: str, names: frozenset[str]) -> bool:
    """Whether a class of ``exc``'s MRO is one of ``names`` defined in ``module`` (or a
    module under it)."""
    for cls in type(exc).__mro__:
        where = cls.__module__
        if cls.__name__ in names and (where == module or where.startswith(module + ".")):
            return True
    return False


def _wrapped(exc: BaseException) -> list[BaseException]:
    """What an error wraps: its ``reason`` (urllib, urllib3), ``os_error`` (aiohttp), the
    errors among its ``args`` (requests, httpcore), its ``__cause__`` and, unless
    suppressed, its ``__context__``."""
    inner: list[object] = []
    for attr in ("reason", "os_error"):
        with contextlib.suppress(Exception):  # a property that fails: nothing there
            inner.append(getattr(exc, attr, None))
    inner.extend(exc.args[:4])
    inner.append(exc.__cause__)
    if not exc.__suppress_context__:
        inner.append(exc.__context__)
    return [e for e in inner if isinstance(e, BaseException)]


def error_chain(exc: BaseException) -> list[tuple[BaseException, int]]:
    """``exc`` and every error it wraps (see ``_wrapped``), breadth first, with the depth
    of each (0 for ``exc``); each once, at most 16."""
    out: list[tuple[BaseException, int]] = []
    seen: set[int] = set()
    queue: deque[tuple[BaseException, int]] = deque([(exc, 0)])
    while queue and len(out) < _MAX_CHAIN:
        e, depth = queue.popleft()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append((e, depth))
        queue.extend((inner, depth + 1) for inner in _wrapped(e))
    return out


def _int_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the answer an error carries, if it carries one: the error's or
    its ``response``'s ``status_code`` or ``status`` (requests, httpx, aiohttp, urllib's
    HTTPError, most SDKs), or the status urllib3's ResponseError names (retries spent on
    429 or 5xx answers)."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            status = _int_status(getattr(holder, attr, None))
            if status is not None:
                return status
    if _is(exc, "urllib3", frozenset({"ResponseError"})):
        match = _RESPONSE_ERROR.search(str(exc))
        if match:
            return int(match.group(1))
    return None


def grpc_code(exc: BaseException) -> str | None:
    """The name of a gRPC error's status code (``UNAVAILABLE``…), if ``exc`` is one."""
    if not _is(exc, "grpc", frozenset({"RpcError"})):
        return None
    code = getattr(exc, "code", None)
    try:
        value = code() if callable(code) else None
    except Exception:  # an RpcError that is not a call (a bare grpc.RpcError())
        return None
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else None


def _grpc_details(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    try:
        text = details() if callable(details) else None
    except Exception:
        return ""
    return text if isinstance(text, str) else ""


def _body(exc: BaseException) -> str:
    """Whatever the error has already read of the answer's body (never read it now: that
    could block), or its own message, for the hints ``classify_status`` looks for (a
    quota). Not the error's text: that names the URL, which may say anything."""
    response = getattr(exc, "response", None)
    for holder, attr in ((response, "_content"), (exc, "body"), (exc, "content"), (exc, "message")):
        value = getattr(holder, attr, None) if holder is not None else None
        if isinstance(value, bytes):
            return value[:4000].decode("utf-8", "replace")
        if isinstance(value, str):
            return value[:4000]
        if isinstance(value, dict):
            return str(value)[:4000]
    return ""


def _kind_of(exc: BaseException) -> str | None:
    """The fault kind of one error by itself (not what it wraps), or None."""
    for module, names, kind in _BY_NAME:
        if _is(exc, module, names):
            return kind
    if isinstance(exc, TimeoutError):  # socket.timeout, asyncio's, concurrent.futures'
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "unavailable"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "connection_lost"
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        return _ERRNO.get(exc.errno)
    return None


def classify_common(exc: BaseException) -> str | None:
    """The fault kind of an error any network client can meet, or None (not a dependency
    failure: it propagates unchanged).

    Knows the errors of requests and urllib3, httpx (and httpcore), aiohttp, grpc, the
    stdlib's urllib, http.client, socket and ssl, by their class chain (module and name),
    errno and attributes, without importing any of them. The error is looked at with
    everything it wraps (requests wraps urllib3, which wraps socket: ``error_chain``):

    - an answer of the server decides, the outermost one: its HTTP status through
      ``classify_status`` (a 404 is the caller's own: None), or its gRPC status code;
    - else the innermost error recognised (the root cause: a ``ConnectionRefusedError``
      under requests' ``ConnectionError``), so a wrapper's own kind is the last resort.
    """
    chain = error_chain(exc)
    for e, _ in chain:
        status = http_status(e)
        if status is not None:
            return classify_status(status, _body(e))
        code = grpc_code(e)
        if code is not None:
            kind = _GRPC.get(code)
            if kind == "rate_limited":
                return classify_status(429, _grpc_details(e))
            return kind
    best: str | None = None
    best_depth = -1
    for e, depth in chain:
        kind = _kind_of(e)
        if kind is not None and depth > best_depth:
            best, best_depth = kind, depth
    return best


def retry_after_s(value: object, now: float | None = None) -> float | None:
    """A ``Retry-After`` header's wait in seconds: a number, or an HTTP date (the time
    left until then, at least 0); None when absent or unreadable."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def fault_details_common(exc: BaseException) -> dict[str, Any]:
    """Facts a repair can use from an error any client can meet: ``retry_after_s`` from
    the ``Retry-After`` of the answer it carries (the outermost, as ``classify_common``
    reads it), when there is one."""
    for e, _ in error_chain(exc):
        if http_status(e) is None:
            continue
        headers = getattr(getattr(e, "response", None), "headers", None)
        if headers is None:
            headers = getattr(e, "headers", None)
        get = getattr(headers, "get", None)
        if not callable(get):
            return {}
        try:
            raw = get("retry-after")
            if raw is None:
                raw = get("Retry-After")
        except Exception:
            return {}
        wait = retry_after_s(raw)
        return {"retry_after_s": wait} if wait is not None else {}
    return {}


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
