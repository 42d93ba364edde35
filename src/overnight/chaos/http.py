"""HTTP faults: a transport layer inside an httpx-based client that answers like a failing API.

Works with ``httpx`` and with its API-compatible fork ``httpx2`` (what the ``openai`` SDK
uses): the wrapper is built from the inner transport's own module, so either client
accepts it. Faults are switched at any moment while traffic flows::

    faults = HttpFaults()
    client = httpx.AsyncClient(transport=fault_transport(httpx.AsyncHTTPTransport(), faults))
    token = faults.activate(HttpFault("rate_limited", retry_after_s=2.5))  # 429, Retry-After: 3
    faults.activate(HttpFault("server_error", status=503, count=2))        # next 2 requests: 503
    faults.deactivate(token)                                                # pass-through again

Synthesised answers (429, 401/403, 5xx, refused connections, read timeouts) never reach
the wire, so only our own client sees them (promise 8, "Chaos stays home"); ``timeout``
with a short latency and ``slow_body`` still send the real request and slow its answer.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from types import ModuleType
from typing import Any, Protocol

__all__ = ["HTTP_FAULT_KINDS", "STATUSES", "HttpFault", "HttpFaults", "fault_transport"]

# The HTTP statuses a fault kind may answer with (every mechanism: sandbox switch, HTTP
# layer); a kind not listed has no status of its own.
STATUSES: dict[str, tuple[int, ...]] = {
    "rate_limited": (429,),
    "quota_exceeded": (429,),
    "auth_expired": (401, 403),
    "server_error": tuple(range(500, 600)),
}

HTTP_FAULT_KINDS = (
    "rate_limited",
    "quota_exceeded",
    "auth_expired",
    "server_error",
    "timeout",
    "unavailable",
    "slow_body",
)

_RETRY_KINDS = ("rate_limited", "quota_exceeded")
_DRIPS_PER_S = 20  # slow_body chunk = rate / 20: smooth enough, without a sleep per byte


def _number(name: str, value: float | None, *, positive: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value!r}")


@dataclass(frozen=True, slots=True)
class HttpFault:
    """One HTTP fault. Fields that do not apply to ``kind`` must stay None.

    ``status``: server_error any 5xx (default 500); auth_expired 401 (default) or 403;
    the 429 kinds only 429. ``retry_after_s``: 429 kinds, sent as whole seconds rounded
    up, at least 1 (default 1). ``count``: answer the next ``count`` requests this way,
    then pass through (None: until deactivated). ``latency_s``: timeout only, how long the
    "server" stalls (None: forever, i.e. until the client's read timeout).
    ``bytes_per_s``: slow_body only (required), the delivery rate of the real body.
    """

    kind: str
    status: int | None = None
    retry_after_s: float | None = None
    count: int | None = None
    latency_s: float | None = None
    bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in HTTP_FAULT_KINDS:
            raise ValueError(f"unknown HTTP fault kind {kind!r} (known: {', '.join(HTTP_FAULT_KINDS)})")
        allowed = STATUSES.get(kind)
        if self.status is not None:
            if allowed is None:
                raise ValueError(f"{kind} takes no status (it has no HTTP answer of its own)")
            if isinstance(self.status, bool) or self.status not in allowed:
                want = "a 5xx status" if kind == "server_error" else " or ".join(map(str, allowed))
                raise ValueError(f"{kind} needs {want}, not {self.status!r}")
        # A field that would be silently ignored is a mistake in the fault plan: say so.
        for name, applies in (
            ("retry_after_s", kind in _RETRY_KINDS),
            ("latency_s", kind == "timeout"),
            ("bytes_per_s", kind == "slow_body"),
        ):
            if getattr(self, name) is not None and not applies:
                raise ValueError(f"{name} does not apply to {kind}")
        _number("retry_after_s", self.retry_after_s, positive=False)
        _number("latency_s", self.latency_s, positive=False)
        _number("bytes_per_s", self.bytes_per_s, positive=True)
        if kind == "slow_body" and self.bytes_per_s is None:
            raise ValueError("slow_body needs bytes_per_s (> 0)")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise ValueError(f"count must be a positive integer or None, not {self.count!r}")

    @property
    def status_code(self) -> int | None:
        """The status a synthesised answer carries (None: the kind does not synthesise one)."""
        if self.status is not None:
            return self.status
        return {"rate_limited": 429, "quota_exceeded": 429, "auth_expired": 401, "server_error": 500}.get(
            self.kind
        )

    @property
    def retry_after(self) -> int:
        """The ``Retry-After`` value in whole seconds: rounded up, at least 1."""
        return max(1, math.ceil(1.0 if self.retry_after_s is None else self.retry_after_s))


class _Entry:
    __slots__ = ("fault", "remaining")

    def __init__(self, fault: HttpFault) -> None:
        self.fault = fault
        self.remaining = fault.count


class HttpFaults:
    """The active HTTP faults of one component. Thread-safe (a lock); the transport consults it per request.

    The most recently activated fault wins; a ``count`` fault removes itself once it has
    answered ``count`` requests, and the one activated before it applies again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}  # insertion order = activation order
        self._tokens = itertools.count(1)
        self._intercepted = 0

    def activate(self, fault: HttpFault) -> int:
        """Apply ``fault`` from the next request on; returns the token for ``deactivate``."""
        if not isinstance(fault, HttpFault):
            raise TypeError(f"expected an HttpFault, not {type(fault).__name__}")
        with self._lock:
            token = next(self._tokens)
            self._entries[token] = _Entry(fault)
            return token

    def deactivate(self, token: int) -> None:
        """Remove one fault; a token already gone (deactivated, cleared, used up) is fine."""
        with self._lock:
            self._entries.pop(token, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def active(self) -> list[HttpFault]:
        """Active faults, oldest first (the last one answers the next request)."""
        with self._lock:
            return [e.fault for e in self._entries.values()]

    @property
    def intercepted(self) -> int:
        """Requests a fault took so far (synthesised, refused, stalled or slowed)."""
        with self._lock:
            return self._intercepted

    def _take(self) -> HttpFault | None:
        """The fault for the request about to be sent (None: pass through), counting it."""
        if not self._entries:  # the common case, without the lock; a racing activate applies next time
            return None
        with self._lock:
            if not self._entries:
                return None
            token = next(reversed(self._entries))
            entry = self._entries[token]
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    del self._entries[token]
            self._intercepted += 1
            return entry.fault


class AsyncTransport(Protocol):
    """What ``fault_transport`` wraps: an ``httpx`` or ``httpx2`` ``AsyncBaseTransport``."""

    async def handle_async_request(self, request: Any) -> Any: ...

    async def aclose(self) -> None: ...


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _synthesise(hx: ModuleType, fault: HttpFault, request: Any) -> Any:
    status = fault.status_code
    assert status is not None
    headers = {"Content-Type": "application/json"}
    if fault.kind == "rate_limited":
        headers["Retry-After"] = str(fault.retry_after)
        body = _error_body(
            "rate_limit_exceeded", f"rate limit reached, try again in {fault.retry_after} s (injected fault)"
        )
    elif fault.kind == "quota_exceeded":
        headers["Retry-After"] = str(fault.retry_after)
        body = _error_body("insufficient_quota", "quota exceeded for this key (injected fault)")
    elif fault.kind == "auth_expired":
        body = _error_body("invalid_token", "token expired (injected fault)")
    else:
        body = _error_body("server_error", f"{status} {HTTPStatus(status).phrase} (injected fault)")
    return hx.Response(status, headers=headers, content=body, request=request)


class _FaultTransportBase:
    """The behaviour; ``fault_transport`` mixes it with one httpx module's AsyncBaseTransport."""

    _hx: ModuleType
    _slow_stream: type

    def __init__(self, inner: AsyncTransport, faults: HttpFaults) -> None:
        self.inner = inner
        self.faults = faults

    async def handle_async_request(self, request: Any) -> Any:
        fault = self.faults._take()
        if fault is None:
            return await self.inner.handle_async_request(request)
        hx = self._hx
        if fault.kind == "unavailable":
            raise hx.ConnectError("[Errno 111] Connection refused (injected fault)", request=request)
        if fault.kind == "timeout":
            read = (request.extensions.get("timeout") or {}).get("read")
            if fault.latency_s is None or (read is not None and fault.latency_s >= read):
                # The client's read timeout lives in the connection we never open, so enforce it here.
                if read is None:
                    await asyncio.get_running_loop().create_future()  # stalls until cancelled
                else:
                    await asyncio.sleep(read)
                raise hx.ReadTimeout("timed out (injected fault)", request=request)
            await asyncio.sleep(fault.latency_s)
            return await self.inner.handle_async_request(request)
        if fault.kind == "slow_body":
            assert fault.bytes_per_s is not None
            response = await self.inner.handle_async_request(request)
            # The raw (still encoded) bytes go through unchanged, so every header stays true.
            extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
            return hx.Response(
                response.status_code,
                headers=response.headers,
                stream=self._slow_stream(response, fault.bytes_per_s),
                request=request,
                extensions=extensions,
            )
        return _synthesise(hx, fault, request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _SlowStreamBase:
    """Re-delivers a response's raw body in small chunks, paced to ``bytes_per_s``."""

    def __init__(self, response: Any, bytes_per_s: float) -> None:
        self._response = response
        self._rate = bytes_per_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        step = max(1, int(self._rate / _DRIPS_PER_S))
        start = time.monotonic()
        sent = 0
        async for data in self._response.aiter_raw():
            for i in range(0, len(data), step):
                piece = data[i : i + step]
                sent += len(piece)
                # Pace against the clock, not per chunk, so sleep overshoot does not add up.
                delay = start + sent / self._rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield piece

    async def aclose(self) -> None:
        # Also reached when the client stops reading early: the inner connection goes back.
        await self._response.aclose()


_classes: dict[str, type[_FaultTransportBase]] = {}
_classes_lock = threading.Lock()


def _httpx_module(inner: object) -> ModuleType:
    # The class's top-level module, walking the MRO so a user's own subclass (defined in
    # their package) still resolves to the httpx or httpx2 it derives from.
    for cls in type(inner).__mro__:
        try:
            module = importlib.import_module(cls.__module__.split(".")[0])
        except ImportError:
            continue
        base = getattr(module, "AsyncBaseTransport", None)
        if isinstance(base, type) and isinstance(inner, base) and hasattr(module, "Response"):
            return module
    raise TypeError(f"{type(inner).__qualname__} is not an httpx or httpx2 AsyncBaseTransport")


def _transport_class(hx: ModuleType) -> type[_FaultTransportBase]:
    with _classes_lock:
        cls = _classes.get(hx.__name__)
        if cls is None:
            slow = type("SlowBodyStream", (_SlowStreamBase, hx.AsyncByteStream), {"__module__": __name__})
            cls = type(
                "FaultTransport",
                (_FaultTransportBase, hx.AsyncBaseTransport),
                {"__module__": __name__, "_hx": hx, "_slow_stream": slow},
            )
            _classes[hx.__name__] = cls
        return cls


def fault_transport(inner: AsyncTransport, faults: HttpFaults) -> Any:
    """Wrap ``inner`` so ``faults`` apply to every request; returns an AsyncBaseTransport of
    inner's module (``httpx`` or ``httpx2``), for that module's ``AsyncClient(transport=...)``.
    ``aclose()`` closes ``inner`` too.
    """
    return _transport_class(_httpx_module(inner))(inner, faults)
