"""Faults for a user's own component: the fault proxy in HTTP mode (HTTP faults for any
plain-HTTP client, ``requests`` included), which methods enable which faults, and what a
plan is told when a component cannot get a fault."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

import overnight
from overnight.components import ComponentSpec
from overnight.errors import ConfigError
from overnight.faults import HttpFault, HttpFaultProxy, parse_inject
from overnight.faults.injectors import FaultsSettings, check, endpoints_of, menu


class _Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one ", b"two"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps(
            {"path": self.path, "host": self.headers["Host"], "encoding": self.headers["Accept-Encoding"]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Service", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_http_mode_answers_like_a_failing_api_to_a_requests_client(
    service: ThreadingHTTPServer,
) -> None:
    port = service.server_address[1]
    async with HttpFaultProxy(target_host="127.0.0.1", target_port=port) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        session = requests.Session()

        def get(path: str, timeout: float = 5) -> requests.Response:
            return session.get(base + path, timeout=timeout)

        # A clean pass-through: the service's answer, headers and body, unchanged; the
        # request as the client sent it (no header of the proxy's own), to the service's host.
        r = await asyncio.to_thread(get, "/stock/A-100?x=1")
        assert r.status_code == 200 and r.headers["X-Service"] == "yes"
        assert r.json() == {
            "path": "/stock/A-100?x=1",
            "host": f"127.0.0.1:{port}",
            "encoding": "gzip, deflate",
        }
        assert (await asyncio.to_thread(get, "/chunked")).text == "one two"
        posted = await asyncio.to_thread(lambda: session.post(base + "/echo", data=b"hello", timeout=5))
        assert (posted.status_code, posted.content) == (201, b"hello")

        token = proxy.http_faults.activate(HttpFault("rate_limited", retry_after_s=2))
        r = await asyncio.to_thread(get, "/x")
        assert r.status_code == 429 and r.headers["Retry-After"] == "2" and "rate limit" in r.text
        proxy.http_faults.deactivate(token)
        proxy.http_faults.activate(HttpFault("server_error", status=503, count=2))
        assert [(await asyncio.to_thread(get, "/x")).status_code for _ in range(3)] == [503, 503, 200]
        token = proxy.http_faults.activate(HttpFault("auth_expired"))
        assert (await asyncio.to_thread(get, "/x")).status_code == 401
        proxy.http_faults.deactivate(token)
        token = proxy.http_faults.activate(HttpFault("timeout"))
        with pytest.raises(requests.Timeout):
            await asyncio.to_thread(get, "/x", 0.5)
        proxy.http_faults.deactivate(token)
        token = proxy.http_faults.activate(HttpFault("slow_body", bytes_per_s=200))
        t0 = time.monotonic()
        assert (await asyncio.to_thread(get, "/slow-path")).status_code == 200
        assert time.monotonic() - t0 > 0.2  # ~80 bytes at 200 B/s, plus the headers' own
        proxy.http_faults.deactivate(token)

        # The TCP faults are the same proxy's: refused, then back on the same port.
        await proxy.down()
        with pytest.raises(requests.ConnectionError, match="Connection refused"):
            await asyncio.to_thread(get, "/x")
        await proxy.up()
        assert (await asyncio.to_thread(get, "/x")).status_code == 200
        assert await proxy.reset() >= 1
        assert (await asyncio.to_thread(get, "/x")).status_code == 200

    service.shutdown()
    service.server_close()
    async with HttpFaultProxy(target_host="127.0.0.1", target_port=port) as proxy:
        gone = await asyncio.to_thread(lambda: requests.get(f"http://127.0.0.1:{proxy.port}/x", timeout=5))
        assert gone.status_code == 502  # the service itself refused: what a reverse proxy says


def test_http_mode_targets_stay_home() -> None:
    with pytest.raises(ValueError, match="chaos stays home"):
        HttpFaultProxy(target_host="10.1.2.3", target_port=80)


# -- which methods enable which faults ------------------------------------------------------------


class Bare(overnight.Component):
    """A component with nothing for the fault proxy."""

    type_name = "bare"


class Routed(overnight.Component):
    """tcp_endpoint() and route_via(): the fault proxy can stand in front of it."""

    type_name = "routed"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        self.where = str(spec.options.get("where", "http://127.0.0.1:8431/api"))

    def tcp_endpoint(self) -> tuple[str, int]:
        return overnight.url_endpoint(self.where, 80)

    def route_via(self, host: str, port: int) -> None:
        self.where = overnight.url_via(self.where, host, port)


def _mechanism(comp: overnight.Component, inject: str) -> str:
    spec = parse_inject(inject, "--inject[1]")
    return check([spec], {comp.name: comp}, FaultsSettings())[spec.id]


def _refusal(comp: overnight.Component, inject: str) -> str:
    with pytest.raises(ConfigError) as info:
        _mechanism(comp, inject)
    return str(info.value)


def test_which_methods_enable_which_faults(tmp_path: Path) -> None:
    bare = Bare(ComponentSpec("bare", {}, tmp_path))
    assert "the component has no tcp_endpoint() and route_via()" in _refusal(
        bare, "bare:unavailable@cycle=1,duration=1s"
    )
    plain = Routed(ComponentSpec("svc", {}, tmp_path))
    assert "set fault_proxy = true on [components.svc] for unavailable" in _refusal(
        plain, "svc:unavailable@cycle=1,duration=1s"
    )
    assert 'rate_limited is an HTTP answer: set fault_proxy = "http" on [components.svc]' in _refusal(
        plain, "svc:rate_limited@cycle=1"
    )
    tcp = Routed(ComponentSpec("svc", {"fault_proxy": True}, tmp_path))
    assert _mechanism(tcp, "svc:connection_lost@cycle=1") == "tcp_proxy"
    assert 'set fault_proxy = "http"' in _refusal(tcp, "svc:server_error@cycle=1")
    http = Routed(ComponentSpec("svc", {"fault_proxy": "http"}, tmp_path))
    assert _mechanism(http, "svc:rate_limited@cycle=1,retry_after=2s") == "http_proxy"
    assert _mechanism(http, "svc:server_error@cycle=1,count=2") == "http_proxy"
    assert _mechanism(http, "svc:auth_expired@cycle=1,duration=5s") == "http_proxy"
    assert _mechanism(http, "svc:unavailable@cycle=1,duration=5s") == "tcp_proxy"
    assert _mechanism(http, "svc:timeout@cycle=1,duration=5s") == "tcp_proxy"
    assert _mechanism(http, "svc:timeout@cycle=1,duration=5s,method=http,latency=2s") == "http_proxy"
    # Where it connects is read from tcp_endpoint() (no url attribute): chaos stays home.
    assert [str(e) for e in endpoints_of(http)] == ["127.0.0.1"]
    away = Routed(ComponentSpec("svc", {"fault_proxy": "http", "where": "http://api.example.com/"}, tmp_path))
    assert "talks to api.example.com: faults stay on loopback" in _refusal(away, "svc:rate_limited@cycle=1")


def test_fault_proxy_takes_true_false_tcp_or_http(tmp_path: Path) -> None:
    assert Routed(ComponentSpec("svc", {"fault_proxy": "tcp"}, tmp_path)).fault_proxy == "tcp"
    with pytest.raises(
        ConfigError, match=r'components.svc.fault_proxy: expected true, false, "tcp" or "http"'
    ):
        Routed(ComponentSpec("svc", {"fault_proxy": "udp"}, tmp_path))


def test_menu_says_what_can_be_injected_and_why_not(tmp_path: Path) -> None:
    http = Routed(ComponentSpec("svc", {"fault_proxy": "http"}, tmp_path))
    rows = {
        r["kind"]: r
        for r in menu(http, FaultsSettings(), ["rate_limited", "connection_lost", "resource_low"])
    }
    assert rows["rate_limited"]["mechanism"] == "http_proxy" and rows["rate_limited"]["injectable"]
    assert rows["connection_lost"]["mechanism"] == "tcp_proxy"
    assert (
        not rows["resource_low"]["injectable"]
        and "no injector makes resource_low" in rows["resource_low"]["why"]
    )
    bare = {
        r["kind"]: r for r in menu(Bare(ComponentSpec("bare", {}, tmp_path)), FaultsSettings(), ["timeout"])
    }
    assert "no tcp_endpoint() and route_via()" in bare["timeout"]["why"]


def test_url_helpers_are_public() -> None:
    assert overnight.url_endpoint("http://user:pw@127.0.0.1/x", 80) == ("127.0.0.1", 80)
    assert (
        overnight.url_via("http://user:pw@db.local:8080/x?q=1", "127.0.0.1", 9)
        == "http://user:pw@127.0.0.1:9/x?q=1"
    )
    from overnight.components import url_endpoint, url_via

    assert (url_endpoint, url_via) == (overnight.url_endpoint, overnight.url_via)
