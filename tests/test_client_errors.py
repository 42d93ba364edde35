"""The clients users call, each failing for real over loopback, and what the default
network classifier (``classify_common``, a custom component's ``classify`` unless it
writes its own) makes of each error: requests, urllib3, httpx, aiohttp, grpc, and the
stdlib's urllib, socket and ssl. Refused (a port bound and never listening), reset (a
server that reads the request and closes with SO_LINGER 0), timeout (a server that never
answers, a short client timeout), HTTP 429 with Retry-After, 500, 503, 401, and TLS
failures (TLS spoken to a plain server; a self-signed certificate with verification on).

Then the issue's reproduction on a real night: a custom component calling ``requests``
(sync, through ``call``) against a service that refuses connections. Its cycles end
``infra_error`` naming the component and kind, are retried, and the agent opens an
incident at once."""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
import requests
import urllib3

from overnight.components import Component, ComponentSpec, classify_common, fault_details_common
from overnight.components.errors import retry_after_s
from overnight.errors import InfraError

from .conftest import REPO
from .helpers import FAST_AGENT, run_and_read
from .support.loopback import HOST, DownService, Loopback, refusing_port, self_signed_cert

T = 2.0  # a client timeout that is never reached (the server answers or fails at once)
SHORT = 0.25  # the timeout a client meets against the silent server

# -- the servers ---------------------------------------------------------------------------------


@dataclass
class Servers:
    refused: int  # a port that refuses connections
    reset: Loopback
    silent: Loopback
    plain: Loopback  # spoken to over https
    tls: Loopback  # a self-signed certificate
    status: dict[int, Loopback]  # 429 (Retry-After: 7), 500, 503, 401, 404, and "quota" (429 naming a quota)

    def url(self, case: str, scheme: str = "http") -> str:
        if case == "refused":
            return f"{scheme}://{HOST}:{self.refused}/"
        if case in ("plain", "tls"):
            return getattr(self, case).url("https")
        server = self.status[int(case)] if case.isdigit() else getattr(self, case)
        return str(server.url(scheme))


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with refusing_port() as port:
        status = {
            429: Loopback("answer", 429, [("Retry-After", "7")], b'{"error": "slow down"}'),
            500: Loopback("answer", 500),
            503: Loopback("answer", 503),
            401: Loopback("answer", 401),
            404: Loopback("answer", 404),
        }
        quota = Loopback("answer", 429, [("Retry-After", "30")], b'{"error": "monthly quota exceeded"}')
        status[4290] = quota
        made = Servers(
            port, Loopback("reset"), Loopback("silent"), Loopback("plain"), Loopback("tls"), status
        )
        try:
            yield made
        finally:
            for s in (made.reset, made.silent, made.plain, made.tls, *status.values()):
                s.close()


# -- each library's call, as its users write it -------------------------------------------------


def _requests(url: str, timeout: float) -> None:
    requests.get(url, timeout=timeout).raise_for_status()


_FORCE = (401, 429, 500, 503)  # statuses urllib3 itself raises on: its Retry's status_forcelist


def _urllib3(url: str, timeout: float) -> None:
    # A PoolManager's retries spent (total=0: at once): every failure arrives as MaxRetryError.
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, status_forcelist=_FORCE))
    http.request("GET", url, timeout=timeout)


def _urllib3_no_retries(url: str, timeout: float) -> None:
    # retries=False: the underlying error itself (NewConnectionError, ProtocolError, …)
    urllib3.PoolManager(retries=False).request("GET", url, timeout=timeout)


def _httpx(url: str, timeout: float) -> None:
    httpx.get(url, timeout=timeout).raise_for_status()


async def _httpx_async(url: str, timeout: float) -> None:
    async with httpx.AsyncClient(timeout=timeout) as client:
        (await client.get(url)).raise_for_status()


async def _aiohttp(url: str, timeout: float) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()


def _urllib(url: str, timeout: float) -> None:
    urllib.request.urlopen(url, timeout=timeout).close()


# (library, call, the servers it meets and what each must be classified as, with the type
# of the error the library raised and the Retry-After read from it)
HTTP_CLIENTS: dict[str, Callable[[str, float], Any]] = {
    "requests": _requests,
    "urllib3": _urllib3,
    "httpx": _httpx,
    "httpx-async": _httpx_async,
    "aiohttp": _aiohttp,
    "urllib": _urllib,
}

# case -> (expected kind, expected retry_after_s)
EXPECTED: dict[str, tuple[str | None, float | None]] = {
    "refused": ("unavailable", None),
    "reset": ("connection_lost", None),
    "silent": ("timeout", None),
    "429": ("rate_limited", 7.0),
    "4290": ("quota_exceeded", 30.0),
    "500": ("server_error", None),
    "503": ("unavailable", None),
    "401": ("auth_expired", None),
    "404": (None, None),  # the caller's own: not a dependency failure
    "plain": ("unavailable", None),  # TLS spoken to a plain HTTP server
    "tls": ("unavailable", None),  # a self-signed certificate, verification on
}

# The error each library raises in each case (type name as raised; what the table of the
# closing note lists). urllib3 loses the response when its retries are spent on a status
# (MaxRetryError names it, without the headers: no Retry-After), and a 404 is no error to
# it; aiohttp's 429 carries no body (so no quota); urllib raises a reset or a read timeout
# unwrapped.
RAISED: dict[str, dict[str, str]] = {
    "requests": {
        "refused": "requests.exceptions.ConnectionError",
        "reset": "requests.exceptions.ConnectionError",
        "silent": "requests.exceptions.ReadTimeout",
        "plain": "requests.exceptions.SSLError",
        "tls": "requests.exceptions.SSLError",
        **dict.fromkeys(("429", "4290", "500", "503", "401", "404"), "requests.exceptions.HTTPError"),
    },
    "urllib3": dict.fromkeys(
        ("refused", "reset", "silent", "plain", "tls", "429", "4290", "500", "503", "401"),
        "urllib3.exceptions.MaxRetryError",
    ),
    "httpx": {
        "refused": "httpx.ConnectError",
        "reset": "httpx.ReadError",
        "silent": "httpx.ReadTimeout",
        "plain": "httpx.ConnectError",
        "tls": "httpx.ConnectError",
        **dict.fromkeys(("429", "4290", "500", "503", "401", "404"), "httpx.HTTPStatusError"),
    },
    "aiohttp": {
        "refused": "aiohttp.client_exceptions.ClientConnectorError",
        "reset": "aiohttp.client_exceptions.ClientOSError",
        "silent": "builtins.TimeoutError",  # ClientTimeout(total=…)
        "plain": "aiohttp.client_exceptions.ClientConnectorSSLError",
        "tls": "aiohttp.client_exceptions.ClientConnectorCertificateError",
        **dict.fromkeys(
            ("429", "4290", "500", "503", "401", "404"), "aiohttp.client_exceptions.ClientResponseError"
        ),
    },
    "urllib": {
        "refused": "urllib.error.URLError",
        "reset": "builtins.ConnectionResetError",
        "silent": "builtins.TimeoutError",
        "plain": "urllib.error.URLError",
        "tls": "urllib.error.URLError",
        **dict.fromkeys(("429", "4290", "500", "503", "401", "404"), "urllib.error.HTTPError"),
    },
}
RAISED["httpx-async"] = RAISED["httpx"]


def _expected(lib: str, case: str) -> tuple[str | None, float | None]:
    kind, retry_after = EXPECTED[case]
    if lib == "urllib3":
        retry_after = None  # the response is gone with the spent retries
    if lib in ("urllib3", "aiohttp", "urllib") and case == "4290":
        # No body read to find the quota in: urllib3's is gone with the response,
        # aiohttp's error keeps none, urllib's is unread (reading it could block).
        kind = "rate_limited"
    return kind, retry_after


async def _raised(call: Callable[[], Any]) -> BaseException:
    """The error ``call`` raises (awaited if it is a coroutine); fails if none."""
    try:
        result = call()
        if isinstance(result, Awaitable):
            await result
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


def _qualname(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}"


CASES = [(lib, case) for lib in HTTP_CLIENTS for case in EXPECTED if case in RAISED[lib]]


@pytest.mark.parametrize(("lib", "case"), CASES, ids=[f"{lib}-{case}" for lib, case in CASES])
async def test_each_http_clients_real_error_is_classified(servers: Servers, lib: str, case: str) -> None:
    timeout = SHORT if case == "silent" else T
    exc = await _raised(lambda: HTTP_CLIENTS[lib](servers.url(case), timeout))
    assert _qualname(exc) == RAISED[lib][case], (exc, exc.__cause__, exc.__context__)
    kind, retry_after = _expected(lib, case)
    assert classify_common(exc) == kind, repr(exc)
    assert fault_details_common(exc).get("retry_after_s") == retry_after, repr(exc)


async def test_urllib3_without_retries_raises_the_underlying_errors(servers: Servers) -> None:
    seen = {}
    for case in ("refused", "reset", "silent", "plain", "tls"):
        exc = await _raised(lambda c=case: _urllib3_no_retries(servers.url(c), SHORT if c == "silent" else T))
        seen[case] = (type(exc).__name__, classify_common(exc))
    assert seen == {
        # NewConnectionError is a ConnectTimeoutError in urllib3 2: still "unavailable".
        "refused": ("NewConnectionError", "unavailable"),
        "reset": ("ProtocolError", "connection_lost"),
        "silent": ("ReadTimeoutError", "timeout"),
        "plain": ("SSLError", "unavailable"),
        "tls": ("SSLError", "unavailable"),
    }


# -- socket and ssl ----------------------------------------------------------------------------


async def test_socket_and_ssl_errors_are_classified(servers: Servers) -> None:
    def refused() -> None:
        socket.create_connection((HOST, servers.refused), timeout=T)

    def reset() -> None:
        with socket.create_connection((HOST, servers.reset.port), timeout=T) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1024)

    def timed_out() -> None:
        with socket.create_connection((HOST, servers.silent.port), timeout=T) as s:
            s.settimeout(SHORT)
            s.recv(1024)

    def unknown_service() -> None:
        socket.getaddrinfo(HOST, "no-such-service-overnight")  # resolved locally: no network

    def tls_to_plain() -> None:
        context = ssl.create_default_context()
        with socket.create_connection((HOST, servers.plain.port), timeout=T) as raw:
            context.wrap_socket(raw, server_hostname=HOST)

    def self_signed() -> None:
        context = ssl.create_default_context()
        with socket.create_connection((HOST, servers.tls.port), timeout=T) as raw:
            context.wrap_socket(raw, server_hostname=HOST)

    seen = {}
    for name, fn in {
        "refused": refused,
        "reset": reset,
        "timeout": timed_out,
        "gaierror": unknown_service,
        "tls_to_plain": tls_to_plain,
        "self_signed": self_signed,
    }.items():
        exc = await _raised(fn)
        seen[name] = (_qualname(exc), classify_common(exc))
    assert seen == {
        "refused": ("builtins.ConnectionRefusedError", "unavailable"),
        "reset": ("builtins.ConnectionResetError", "connection_lost"),
        "timeout": ("builtins.TimeoutError", "timeout"),  # socket.timeout is TimeoutError
        "gaierror": ("socket.gaierror", "unavailable"),
        "tls_to_plain": ("ssl.SSLError", "unavailable"),
        "self_signed": ("ssl.SSLCertVerificationError", "unavailable"),
    }


async def test_a_trusted_certificate_is_no_error(servers: Servers) -> None:
    # The TLS server is fine once its certificate is trusted: the failure above is the
    # verification's, not the server's.
    cert, _ = self_signed_cert()
    assert requests.get(servers.tls.url("https"), timeout=T, verify=str(cert)).status_code == 200


# -- grpc -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[int]:
    """A real gRPC server on loopback with one generic method, ``/t.T/Do``, that answers
    the status named in the request (bytes in, bytes out: no protobuf needed)."""
    from concurrent import futures

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        what = request.decode()
        if what == "hang":  # until the client's deadline ends the call
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait(10)
            return b""
        if what == "bug":
            raise RuntimeError("a bug in the service")  # the client gets UNKNOWN
        if what == "ok":
            return b"fine"
        code, _, details = what.partition(":")
        context.abort(getattr(grpc.StatusCode, code), details or f"{code} from the test server")
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(4))
    method = grpc.unary_unary_rpc_method_handler(handler)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Do": method}),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


GRPC_EXPECTED = {
    "UNAVAILABLE": "unavailable",
    "hang": "timeout",  # DEADLINE_EXCEEDED
    "RESOURCE_EXHAUSTED": "rate_limited",
    "RESOURCE_EXHAUSTED:the project's quota is spent": "quota_exceeded",
    "UNAUTHENTICATED": "auth_expired",
    "PERMISSION_DENIED": "auth_expired",
    "INTERNAL": "server_error",
    "bug": "server_error",  # UNKNOWN
    "INVALID_ARGUMENT": None,  # the caller's own
    "NOT_FOUND": None,
}


async def test_grpc_status_codes_are_classified(grpc_server: int, servers: Servers) -> None:
    with grpc.insecure_channel(f"{HOST}:{grpc_server}") as channel:
        do = channel.unary_unary("/t.T/Do")
        assert do(b"ok", timeout=T) == b"fine"
        seen = {}
        for what in GRPC_EXPECTED:
            exc = await _raised(lambda w=what: do(w.encode(), timeout=0.5 if w == "hang" else T))
            assert isinstance(exc, grpc.RpcError)
            seen[what] = classify_common(exc)
    assert seen == GRPC_EXPECTED
    # Refused, and reset during the connection's setup: grpc says UNAVAILABLE for both.
    for port in (servers.refused, servers.reset.port):
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            exc = await _raised(lambda ch=channel: ch.unary_unary("/t.T/Do")(b"ok", timeout=T))
        assert exc.code() == grpc.StatusCode.UNAVAILABLE and classify_common(exc) == "unavailable"  # type: ignore[attr-defined]
    # grpc.aio's errors are RpcErrors too.
    async with grpc.aio.insecure_channel(f"{HOST}:{grpc_server}") as aio:
        exc = await _raised(lambda: aio.unary_unary("/t.T/Do")(b"UNAVAILABLE", timeout=T))
    assert type(exc).__name__ == "AioRpcError" and classify_common(exc) == "unavailable"


# -- the rules ----------------------------------------------------------------------------------


def _http_date(ts: float) -> str:
    return format_datetime(datetime.datetime.fromtimestamp(ts, datetime.UTC), usegmt=True)


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_s("7") == 7.0 and retry_after_s(b"1.5") == 1.5
    assert retry_after_s(_http_date(now + 90), now=now) == 90.0
    assert retry_after_s(_http_date(now - 90), now=now) == 0.0  # already past: no wait
    assert retry_after_s("soon") is None and retry_after_s("-3") is None and retry_after_s(None) is None


def test_what_is_not_a_network_error_stays_unclassified() -> None:
    assert classify_common(ValueError("bad input")) is None
    assert classify_common(KeyError("answer")) is None
    # A product error raised on its own is not wrapped in a network cause.
    try:
        try:
            raise KeyError("answer")
        except KeyError:
            raise ValueError("the answer has no id") from None
    except ValueError as exc:
        assert classify_common(exc) is None
    # One raised while handling a refused connection is that refusal's consequence.
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            raise RuntimeError("inventory service down")  # noqa: B904 - its context is the point
    except RuntimeError as exc:
        assert classify_common(exc) == "unavailable"


def test_the_classifier_needs_none_of_the_client_libraries() -> None:
    """A core install may not have requests, urllib3, aiohttp or grpc: nothing imports
    them, and the classifier works without them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('requests', 'urllib3', 'aiohttp', 'grpc'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from overnight.components import classify_common, fault_details_common\n"
        "assert classify_common(ConnectionRefusedError(111, 'refused')) == 'unavailable'\n"
        "assert classify_common(TimeoutError()) == 'timeout'\n"
        "assert fault_details_common(TimeoutError()) == {}\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'aiohttp', 'grpc') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# -- through a custom component's call ----------------------------------------------------------


class _Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, Any, str | None]] = []

    def event(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        self.events.append((kind, message, data, component))


class Inventory(Component):
    """A user's component: a requests client, no classify() of its own."""

    type_name = "inventory"

    def __init__(self, spec: ComponentSpec, base_url: str) -> None:
        super().__init__(spec)
        self.base_url = base_url

    async def stock(self, timeout: float = T) -> Any:
        def get() -> Any:
            response = requests.get(f"{self.base_url}/stock/A-100", timeout=timeout)
            response.raise_for_status()
            return response.json()

        return await self.call("stock", get)  # a plain function: run in a worker thread


@pytest.mark.parametrize(
    ("case", "kind", "details"),
    [
        ("refused", "unavailable", {}),
        ("reset", "connection_lost", {}),
        ("silent", "timeout", {}),
        ("429", "rate_limited", {"retry_after_s": 7.0}),
        ("503", "unavailable", {}),
        ("401", "auth_expired", {}),
        ("plain", "unavailable", {}),
    ],
)
async def test_a_custom_component_gets_the_classification_without_writing_one(
    tmp_path: Path, servers: Servers, case: str, kind: str, details: dict[str, Any]
) -> None:
    comp = Inventory(ComponentSpec("inventory", {}, tmp_path), servers.url(case).rstrip("/"))
    told: list[str] = []
    comp.on_error(lambda _c, k, _e: told.append(k))
    recorder = _Recorded()
    comp.bind(recorder)
    with pytest.raises(InfraError) as raised:
        await comp.stock(timeout=SHORT if case == "silent" else T)
    assert (raised.value.component, raised.value.kind) == ("inventory", kind)
    assert told == [kind]  # the agent would be told at once
    ((event, _msg, data, component),) = recorder.events
    assert event == "component_fault" and component == "inventory" and data["fault_kind"] == kind
    assert {k: data[k] for k in details} == details and ("retry_after_s" in data) == bool(details)
    # a 404 stays the caller's own: it propagates unchanged, nobody is told
    comp404 = Inventory(ComponentSpec("inventory", {}, tmp_path), servers.url("404").rstrip("/"))
    with pytest.raises(requests.HTTPError):
        await comp404.stock()


# -- the reproduction: a night ------------------------------------------------------------

SVC = """
import asyncio
import time

import requests

import overnight
from overnight.components import Options, ProbeResult


class SvcOptions(Options):
    base_url: str


class Svc(overnight.Component):
    # requests (sync) through call(); no classify() of its own.
    type_name = "svc"

    def __init__(self, spec):
        super().__init__(spec)
        self.base_url = self.options(SvcOptions).base_url
        self.session = None

    async def connect(self):
        self.session = requests.Session()

    async def close(self):
        self.session.close()

    async def answer(self, question):
        def post():
            r = self.session.get(f"{self.base_url}/answer", params={"q": question}, timeout=5)
            r.raise_for_status()
            return r.json()["answer"]

        return await self.call("answer", post)

    async def probe(self):
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(requests.get, f"{self.base_url}/health", timeout=2)
        except Exception as exc:
            return ProbeResult(False, time.perf_counter() - t0, self.classify(exc), str(exc))
        return ProbeResult(True, time.perf_counter() - t0, None, "GET /health")
"""


async def test_a_requests_component_refusing_connections_is_an_infra_error_the_agent_repairs(
    tmp_path: Path,
) -> None:
    """Issue 20's night: the service refuses connections. Before: 7 harness errors, never
    retried, the agent never told. Now: infra_error (svc, unavailable), an incident opened
    by the cycle's signal, the service started by a repair, the cycle retried and passed."""
    service = DownService()
    project = tmp_path / "project"
    project.mkdir()
    (project / "svc_component.py").write_text(SVC)
    code = """
    async def cycle(ctx):
        async with ctx.step("ask"):
            answer = await ctx.components["svc"].answer(f"question {ctx.cycle}")
        assert answer == 42
    """
    config = FAST_AGENT + (
        '[components.svc]\ntype = "svc_component:Svc"\n'
        f'base_url = "{service.url}"\n'
        "startup_grace = 60\n"  # no periodic probe first: the cycle's call finds the outage
        'repairs = { unavailable = ["tests.support.loopback:StartService"] }\n'
    )
    try:
        night = await run_and_read(tmp_path, code, config, cycles=3, retry_attempts=2)
    finally:
        service.close()
    report, atts = night.report, night.attempts
    assert report["totals"]["passed"] == 3, report["failures"]
    first = atts[1][0]
    assert (first["verdict"], first["fault_component"], first["fault_kind"]) == (
        "infra_error",
        "svc",
        "unavailable",
    )
    assert first["error_type"] == "InfraError" and "ConnectionError" in first["error_message"]
    assert "Connection refused" in first["error_message"]
    assert [a["verdict"] for a in atts[1]] == ["infra_error", "passed"]  # retried after the repair
    assert all(len(atts[c]) == 1 for c in (2, 3))
    ((fault_event),) = night.events("component_fault")
    assert (
        fault_event["component"] == "svc"
        and json.loads(fault_event["data"])["error_type"] == "ConnectionError"
    )
    (incident,) = night.incidents
    assert (incident["component"], incident["fault_kind"], incident["trigger"], incident["state"]) == (
        "svc",
        "unavailable",
        "signal",
        "repaired",
    )
    (repair,) = night.repairs
    assert repair["strategy"] == "start_service" and repair["result"] == "done" and repair["verified"]
    assert incident["verified_at"] <= atts[1][1]["started_at"]  # the retry waited for the repair
