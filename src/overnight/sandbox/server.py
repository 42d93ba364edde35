"""The shared base of the sandbox servers: real HTTP on loopback, runtime fault switches.

Each server is a standard-library ``ThreadingHTTPServer`` serving from a daemon thread
(one thread per connection, HTTP/1.1 keep-alive), so nothing here runs on, or can block,
the caller's event loop. A request goes through the same gate on every server, in this
order: ``blackhole`` (accept, read, never answer while it is on), ``latency_s``,
``fail_next_5xx``, authentication (401), quota (429 with ``Retry-After``), the endpoint.
Requests held by a black hole go on when it is switched off (like a healed network) and
are dropped unanswered by ``stop()`` or ``refuse_connections``.

``refuse_connections`` is real: the listening socket is closed and every open connection
is shut down, so clients get ECONNREFUSED; switching it off binds the same port again.

Admin endpoints (never subject to the switches)::

    GET  /_sandbox/switches        current switches (JSON)
    POST /_sandbox/switches        {"name": value, ...} -> the switches after the change
    GET  /_sandbox/stats           requests per endpoint, status codes, a recent log
    POST /_sandbox/expire-tokens   invalidate every issued access token
    POST /_sandbox/reset-quota     forget the quota windows (a new day)
    POST /_sandbox/reset-stats
    GET  /_sandbox/health

A refusing server cannot be reached on its own port; ``ControlServer`` serves the same
operations for a set of servers from a port of its own (``/_sandbox/servers/NAME/...``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import socket
import socketserver
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("overnight.sandbox")

LOOPBACK_HOSTS = ("127.0.0.1", "::1")
ADMIN_PREFIX = "/_sandbox/"
LOG_SIZE = 500

__all__ = [
    "LOOPBACK_HOSTS",
    "ControlServer",
    "HTTPError",
    "Request",
    "Response",
    "Route",
    "SandboxServer",
    "Switches",
    "accepted_secrets",
    "client_label",
    "iter_sse",
]


# -- switches --------------------------------------------------------------------------


def _nonneg_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return float(v)


def _pos_float(v: Any) -> float:
    f = _nonneg_float(v)
    if f == 0:
        raise ValueError("expected a number > 0")
    return f


def _nonneg_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected an integer >= 0, got {v!r}")
    return v


def _opt_quota(v: Any) -> int | None:
    return None if v is None else _nonneg_int(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _status_5xx(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 500 <= v <= 599:
        raise ValueError(f"expected a status 500-599, got {v!r}")
    return v


def _rate(v: Any) -> float:
    f = _nonneg_float(v)
    if f > 1:
        raise ValueError(f"expected a rate in [0, 1], got {f!r}")
    return f


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "latency_s": _nonneg_float,
    "fail_next_5xx": _nonneg_int,
    "fail_5xx_status": _status_5xx,
    "refuse_connections": _bool,
    "blackhole": _bool,
    "quota_per_minute": _opt_quota,
    "quota_per_day": _opt_quota,
    "minute_window_s": _pos_float,
    "day_window_s": _pos_float,
    "token_ttl_s": _pos_float,
    "bug_rate": _rate,
    "bug_seed": _int,
    "intermittent_bug_rate": _rate,
    "intermittent_bug_seed": _int,
}


@dataclass(eq=False)
class Switches:
    """Runtime fault switches of one server. Thread-safe; assignments take effect at once.

    ``switches.latency_s = 2`` and ``switches.update(latency_s=2, blackhole=False)`` both
    validate, apply under a lock and notify the server (which is how ``refuse_connections``
    closes and reopens the port synchronously). Quotas count per API key / credentials
    over sliding windows of ``minute_window_s`` and ``day_window_s`` (shrink them in tests
    and dry runs). ``bug_rate`` / ``bug_seed`` drive the "missing section" product bug of
    ``textgen`` for a fixed share of inputs; ``intermittent_bug_rate`` /
    ``intermittent_bug_seed`` make it fire on some calls of the same input only (see
    ``sandbox.bugs``). ``token_epoch`` is read-only: ``expire_tokens_now()`` bumps it.
    """

    latency_s: float = 0.0
    fail_next_5xx: int = 0
    fail_5xx_status: int = 500
    refuse_connections: bool = False
    blackhole: bool = False
    quota_per_minute: int | None = None
    quota_per_day: int | None = None
    minute_window_s: float = 60.0
    day_window_s: float = 86400.0
    token_ttl_s: float = 1800.0
    bug_rate: float = 0.0
    bug_seed: int = 0
    intermittent_bug_rate: float = 0.0
    intermittent_bug_seed: int = 0
    token_epoch: int = 0

    NAMES: ClassVar[tuple[str, ...]] = tuple(_VALIDATORS)

    if TYPE_CHECKING:  # set in __post_init__; at run time not dataclass fields
        _lock: threading.Lock = field(init=False, repr=False)
        _listeners: list[Callable[[dict[str, Any]], None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in self.NAMES:
            object.__setattr__(self, name, _VALIDATORS[name](getattr(self, name)))
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_listeners", [])

    def __setattr__(self, name: str, value: Any) -> None:
        if "_lock" not in self.__dict__:  # still inside __init__
            object.__setattr__(self, name, value)
        else:
            self.update(**{name: value})

    @classmethod
    def validate(cls, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Checked and normalised values, or ValueError naming the first bad one."""
        out = {}
        for name, value in changes.items():
            if name not in _VALIDATORS:
                raise ValueError(f"unknown switch {name!r} (known: {', '.join(cls.NAMES)})")
            try:
                out[name] = _VALIDATORS[name](value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return out

    def update(self, **changes: Any) -> dict[str, Any]:
        """Apply several switches at once (all or none); returns those that changed."""
        values = self.validate(changes)
        with self._lock:
            changed = {k: v for k, v in values.items() if getattr(self, k) != v}
            for k, v in changed.items():
                object.__setattr__(self, k, v)
            listeners = list(self._listeners)
        # Outside the lock: a listener may take a while (closing a port) or read switches.
        for listener in listeners:
            listener(changed)
        return changed

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {name: getattr(self, name) for name in (*self.NAMES, "token_epoch")}

    to_dict = snapshot

    def take_5xx(self) -> int | None:
        """Consume one of ``fail_next_5xx``: the status to answer with, or None."""
        with self._lock:
            if self.fail_next_5xx <= 0:
                return None
            object.__setattr__(self, "fail_next_5xx", self.fail_next_5xx - 1)
            return self.fail_5xx_status

    def expire_tokens_now(self) -> int:
        """Invalidate every access token issued so far (401 until the client re-authenticates)."""
        with self._lock:
            object.__setattr__(self, "token_epoch", self.token_epoch + 1)
            return self.token_epoch

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)


# -- requests, responses, routes -------------------------------------------------------


class HTTPError(Exception):
    """Raised by an endpoint to answer with the server's error format."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message  # the handler's (case-insensitive) header message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    client: str | None = None  # who is calling (a label, never the secret)
    _conn: socket.socket | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HTTPError(400, "invalid_json", "the request body is not valid JSON") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise HTTPError(400, "invalid_json", "the request body must be a JSON object")
        return data

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}

    def bearer(self) -> str | None:
        auth = self.header("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return value.strip() or None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None  # sent with chunked transfer encoding
    after: Callable[[], None] | None = None  # run once the response is on the wire

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        body = json.dumps(data, ensure_ascii=False).encode()
        return cls(status=status, body=body, headers=dict(headers or {}))


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # "/v1/models/{model}"
    handler: Handler
    auth: bool = True  # the server's authenticate() must accept the caller
    metered: bool = True  # counts against the quota

    def match(self, path: str) -> dict[str, str] | None:
        m = _template_regex(self.template).match(path)
        return m.groupdict() if m else None


@functools.lru_cache(maxsize=256)
def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(f"^{body}$")


def client_label(secret: str) -> str:
    """A stable name for an API key or credentials that reveals nothing of them."""
    return "client-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def accepted_secrets(secrets: Mapping[str, str] | Iterable[str] | None) -> dict[str, str] | None:
    """Accepted secrets -> client labels. None means: accept any non-empty secret."""
    if secrets is None:
        return None
    if isinstance(secrets, Mapping):
        return {str(k): str(v) for k, v in secrets.items()}
    if isinstance(secrets, str):
        secrets = [secrets]
    return {s: client_label(s) for s in secrets}


# -- quotas and stats ------------------------------------------------------------------


class _Quota:
    """Sliding windows of admitted requests per client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute: dict[str, deque[float]] = {}
        self._day: dict[str, deque[float]] = {}

    def admit(self, client: str, now: float, sw: Switches) -> tuple[str, float] | None:
        """None if admitted (and counted), else ("day" | "minute", seconds until a slot frees)."""
        windows = (
            ("day", self._day, sw.quota_per_day, sw.day_window_s),
            ("minute", self._minute, sw.quota_per_minute, sw.minute_window_s),
        )
        with self._lock:
            for _, table, _, window in windows:
                dq = table.setdefault(client, deque())
                while dq and dq[0] <= now - window:
                    dq.popleft()
            for kind, table, limit, window in windows:
                dq = table[client]
                if limit is not None and len(dq) >= limit:
                    # The slot frees when the request `limit` places back leaves the window.
                    oldest = dq[len(dq) - limit] if limit else now
                    return kind, max(0.0, oldest + window - now)
            for _, table, _, _ in windows:
                table[client].append(now)
        return None

    def reset(self) -> None:
        with self._lock:
            self._minute.clear()
            self._day.clear()


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_endpoint: dict[str, dict[str, int]] = {}
            self.by_status: dict[str, int] = {}
            self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def record(self, endpoint: str, status: int | None, client: str | None, started: float) -> None:
        key = "dropped" if status is None else str(status)
        entry = {
            "t": round(time.time(), 3),
            "endpoint": endpoint,
            "status": status,
            "client": client,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        with self._lock:
            self.total += 1
            per = self.by_endpoint.setdefault(endpoint, {})
            per[key] = per.get(key, 0) + 1
            self.by_status[key] = self.by_status.get(key, 0) + 1
            self.log.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.total,
                "by_status": dict(self.by_status),
                "by_endpoint": {
                    ep: {"count": sum(c.values()), "by_status": dict(c)} for ep, c in self.by_endpoint.items()
                },
                "log": list(self.log),
            }


# -- HTTP plumbing ---------------------------------------------------------------------


class _Listener(ThreadingHTTPServer):
    """One bound listening socket; tracks open connections so they can be cut."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: SandboxServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.generation = owner._generation
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would do a reverse DNS lookup (getfqdn) we do not need.
        socketserver.TCPServer.server_bind(self)
        # Bound by then: the address is getsockname()'s (host, port, ...) with a str host.
        self.server_name, self.server_port = cast(str, self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def cut_connections(self, keep: socket.socket | None = None) -> None:
        with self._conns_lock:
            conns = [c for c in self._conns if c is not keep]
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("sandbox %s: connection error from %s", self.owner.name, client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "overnight-sandbox/0.1"
    sys_version = ""
    timeout = 300  # idle keep-alive connections do not hold a thread forever
    server: _Listener

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox %s: " + format, self.server.owner.name, *args)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._write(Response.json({"error": "unreadable request body"}, 400))
            self.close_connection = True
            return
        req = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            _conn=self.connection,
        )
        resp = owner._dispatch(req, self.server.generation)
        if resp is None:  # dropped: close without a word
            self.close_connection = True
            return
        self._write(resp)
        if resp.after is not None:
            resp.after()

    def _write(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("X-Request-ID", str(uuid.uuid4()))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if resp.stream is None:
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(resp.body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            for piece in resp.stream:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# -- the server ------------------------------------------------------------------------


class SandboxServer:
    """A local HTTP server with fault switches. Subclasses declare ``routes()``.

    Binds only 127.0.0.1 or ::1 (promise 8: chaos stays home). ``port=0`` picks a free
    port; after that the port is kept, across ``refuse_connections``, for good.
    ``clock`` (seconds, like ``time.time``) drives token expiry and quota windows, so a
    test can move time forward instead of waiting.
    """

    name: ClassVar[str] = "sandbox"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        switches: Switches | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the sandbox binds loopback only ({' or '.join(LOOPBACK_HOSTS)}), not {host!r}")
        self.host = host
        self._port = int(port)
        self.switches = switches or Switches()
        self.seed = seed
        self.clock = clock
        self._quota = _Quota()
        self._stats = _Stats()
        self._state = threading.RLock()
        self._cv = threading.Condition()
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._generation = 0  # bumped whenever the listener goes away: held requests drop
        self._local = threading.local()  # the admin connection to spare while refusing
        self._in_flight = 0
        self._routes = self.routes()
        self.switches.add_listener(self._on_switches)

    # lifecycle

    def start(self) -> Self:
        with self._state:
            if self._started:
                return self
            self._bind()
            self._started = True
            if self.switches.refuse_connections:
                self._unbind()
        return self

    def stop(self) -> None:
        with self._state:
            self._started = False
            self._unbind()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"sandbox {self.name} has not been started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _bind(self) -> None:
        listener = _Listener(self, (self.host, self._port))
        self._port = listener.server_address[1]
        thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.name}:{self._port}",
            daemon=True,
        )
        thread.start()
        self._listener, self._thread = listener, thread

    def _unbind(self, keep: socket.socket | None = None) -> None:
        listener, thread = self._listener, self._thread
        self._listener = self._thread = None
        if listener is None:
            return
        listener.shutdown()  # waits for the accept loop to stop
        listener.server_close()  # closes the listening socket: ECONNREFUSED from now on
        with self._cv:
            self._generation += 1
            self._cv.notify_all()
        listener.cut_connections(keep)
        with self._cv:  # held and delayed requests were released: let them finish their record
            self._cv.wait_for(lambda: self._in_flight == 0, timeout=2.0)
        if thread is not None:
            thread.join(timeout=5)

    def _on_switches(self, changed: dict[str, Any]) -> None:
        keep = getattr(self._local, "keep", None)
        if "refuse_connections" in changed:
            with self._state:
                if self._started:
                    if self.switches.refuse_connections and self._listener is not None:
                        self._unbind(keep)
                    elif not self.switches.refuse_connections and self._listener is None:
                        self._bind()
        with self._cv:
            self._cv.notify_all()  # blackhole / latency changes release or re-check held requests

    # what subclasses provide

    def routes(self) -> list[Route]:
        return []

    def authenticate(self, req: Request) -> str | Response:
        """The caller's client label, or the 401 response to send."""
        return "anonymous"

    def error(self, status: int, code: str, message: str) -> Response:
        """An error in this protocol's format."""
        return Response.json({"error": {"code": code, "message": message}}, status)

    def rate_limited(self, kind: str, retry_after_s: float) -> Response:
        """The 429 for an exhausted "day" or "minute" window, with ``Retry-After``."""
        code = "insufficient_quota" if kind == "day" else "rate_limit_exceeded"
        resp = self.error(429, code, self.quota_message(kind, retry_after_s))
        resp.headers.update(self.retry_after_headers(retry_after_s))
        return resp

    def quota_message(self, kind: str, retry_after_s: float) -> str:
        if kind == "day":
            return "daily quota exhausted"
        return f"rate limit reached, try again in {math.ceil(retry_after_s)} s"

    def retry_after_headers(self, retry_after_s: float) -> dict[str, str]:
        # Retry-After is whole seconds (RFC 9110); round up so a client that honours it is admitted.
        return {"Retry-After": str(max(1, math.ceil(retry_after_s)))}

    # the request gate

    def _dispatch(self, req: Request, generation: int) -> Response | None:
        if req.path.startswith(ADMIN_PREFIX):
            return self._admin(req)
        started = time.perf_counter()
        route, params = self._match(req)
        endpoint = f"{req.method} {route.template if route else req.path}"
        resp: Response | None = None
        with self._cv:
            self._in_flight += 1
            self._cv.notify_all()
        try:
            resp = self._gate(req, route, params, generation)
            return resp
        finally:
            self._stats.record(endpoint, resp.status if resp else None, req.client, started)
            with self._cv:
                self._in_flight -= 1
                self._cv.notify_all()

    def _match(self, req: Request) -> tuple[Route | None, dict[str, str]]:
        for route in self._routes:
            if route.method == req.method:
                params = route.match(req.path)
                if params is not None:
                    return route, params
        return None, {}

    def _gate(
        self, req: Request, route: Route | None, params: dict[str, str], generation: int
    ) -> Response | None:
        sw = self.switches
        # A black hole that heals lets held requests through late, like a healed network;
        # stop() or refuse_connections drops them unanswered.
        if sw.blackhole and not self._hold(generation, lambda: not self.switches.blackhole):
            return None
        if sw.latency_s > 0 and not self._pause(sw.latency_s, generation):
            return None
        status = sw.take_5xx()
        if status is not None:
            return self.error(status, "server_error", "the server had an error processing your request")
        if route is None:
            return self.error(404, "not_found", f"no endpoint {req.method} {req.path}")
        req.params = params
        try:
            if route.auth:
                who = self.authenticate(req)
                if isinstance(who, Response):
                    return who
                req.client = who
            if route.metered:
                verdict = self._quota.admit(req.client or "anonymous", self.clock(), sw)
                if verdict is not None:
                    return self.rate_limited(*verdict)
            return route.handler(req)
        except HTTPError as exc:
            return self.error(exc.status, exc.code, exc.message)
        except Exception:
            log.exception("sandbox %s: %s %s failed", self.name, req.method, req.path)
            return self.error(500, "sandbox_bug", "internal error of the sandbox itself")

    def _hold(self, generation: int, released: Callable[[], bool]) -> bool:
        """Wait until ``released()``; False if the listener went away meanwhile."""
        with self._cv:
            while self._generation == generation and not released():
                self._cv.wait(timeout=1.0)
            return self._generation == generation

    def _pause(self, seconds: float, generation: int) -> bool:
        deadline = time.monotonic() + seconds
        with self._cv:
            while self._generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._cv.wait(timeout=left)
        return False

    @property
    def in_flight(self) -> int:
        """Requests inside the gate right now (held by a black hole, delayed, being served)."""
        return self._in_flight

    def wait_in_flight(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` requests are in flight (for tests and fault drivers)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._in_flight >= n, timeout=timeout)

    # quota, stats, admin

    def reset_quota(self) -> None:
        self._quota.reset()

    def reset_stats(self) -> None:
        self._stats.reset()

    def stats(self) -> dict[str, Any]:
        """Requests per endpoint (``"METHOD /template"``) and status (``"dropped"``: no answer)."""
        return {"server": self.name, "url": self.url if self._port else None, **self._stats.snapshot()}

    def admin(self, op: str, method: str, body: Any, keep: socket.socket | None = None) -> Response:
        """One admin operation (see the module docstring); ``keep``: the caller's own socket."""
        if op == "switches" and method == "GET":
            return Response.json(self.switches.snapshot())
        if op == "switches" and method == "POST":
            if not isinstance(body, dict):
                return Response.json({"error": "expected a JSON object of switches"}, 400)
            try:
                values = Switches.validate(body)
            except ValueError as exc:
                return Response.json({"error": str(exc)}, 400)
            # Refusing our own port from this very connection: the switch closes the port
            # and every other connection at once; this one gets its answer, then is cut.
            self._local.keep = keep
            try:
                self.switches.update(**values)
            except OSError as exc:  # the port could not be bound again
                return Response.json({"error": f"cannot listen on port {self._port}: {exc}"}, 500)
            finally:
                self._local.keep = None
            resp = Response.json(self.switches.snapshot())
            if keep is not None and not self.listening and self._started:
                resp.headers["Connection"] = "close"
                resp.after = lambda: self._cut(keep)
            return resp
        if op == "stats" and method == "GET":
            return Response.json(self.stats())
        if op == "expire-tokens" and method == "POST":
            return Response.json({"token_epoch": self.switches.expire_tokens_now()})
        if op == "reset-quota" and method == "POST":
            self.reset_quota()
            return Response.json({"ok": True})
        if op == "reset-stats" and method == "POST":
            self.reset_stats()
            return Response.json({"ok": True})
        if op == "health" and method == "GET":
            return Response.json({"ok": True, "server": self.name})
        return Response.json({"error": f"no admin operation {method} {op}"}, 404)

    @staticmethod
    def _cut(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _admin(self, req: Request) -> Response:
        op = req.path[len(ADMIN_PREFIX) :].strip("/")
        body = _admin_body(req)
        if isinstance(body, Response):
            return body
        return self.admin(op, req.method, body, keep=req._conn)


def _admin_body(req: Request) -> Any:
    if req.method != "POST" or not req.body:
        return {}
    try:
        return json.loads(req.body)
    except ValueError:
        return Response.json({"error": "the request body is not valid JSON"}, 400)


class ControlServer(SandboxServer):
    """Admin operations for several servers from one port that never refuses.

    ``GET /_sandbox/servers`` lists them; ``/_sandbox/servers/NAME/OP`` is ``OP`` of the
    server called NAME (``switches``, ``stats``, ``expire-tokens``, ``reset-quota``, ...).
    """

    name = "control"

    def __init__(self, servers: Mapping[str, SandboxServer], **kwargs: Any) -> None:
        self.servers = dict(servers)
        super().__init__(**kwargs)

    def _admin(self, req: Request) -> Response:
        rest = req.path[len(ADMIN_PREFIX) :].strip("/").split("/")
        if rest == ["servers"] and req.method == "GET":
            return Response.json(
                {n: {"url": s.url, "listening": s.listening} for n, s in self.servers.items()}
            )
        if len(rest) >= 3 and rest[0] == "servers":
            target = self.servers.get(rest[1])
            if target is None:
                return Response.json({"error": f"no sandbox server {rest[1]!r}"}, 404)
            body = _admin_body(req)
            if isinstance(body, Response):
                return body
            return target.admin("/".join(rest[2:]), req.method, body)
        return super()._admin(req)


def iter_sse(events: Iterator[Any]) -> Iterator[bytes]:
    """Server-sent events: ``data: <json>`` per event, then ``data: [DONE]``."""
    for event in events:
        yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
