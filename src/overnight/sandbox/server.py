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

This module stays a little over 400 lines: the lifecycle, the request gate and the admin
operations of ``SandboxServer`` share its lock, condition and listener generation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from .plumbing import _Listener
from .quota import LOG_SIZE as LOG_SIZE
from .quota import _Quota, _Stats
from .routing import Handler as Handler
from .routing import HTTPError, Request, Response, Route, accepted_secrets, client_label, iter_sse
from .switches import Switches

log = logging.getLogger("overnight.sandbox")

LOOPBACK_HOSTS = ("127.0.0.1", "::1")
ADMIN_PREFIX = "/_sandbox/"
STYLE_PREFIX = "/style/"  # the chat servers' answer style, per request (sandbox.styles)

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
        if req.path.startswith(STYLE_PREFIX):
            # /style/NAME/rest: the chat servers answer in that style (sandbox.styles).
            name, _, rest = req.path[len(STYLE_PREFIX) :].partition("/")
            req.style, req.path = name, "/" + rest
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
