"""Loopback servers that fail the way real services do, for the client-error tests: a
port that refuses connections, a server that resets them, one that never answers, one
that answers slowly (when told), one that answers an HTTP status of choice, a plain-TCP
server spoken to over TLS, and a TLS server with a self-signed certificate. Each runs on
daemon threads on 127.0.0.1 and synchronises with events, never with sleeps.

``DownService`` is a service that refuses connections until ``start()`` (its port is
bound but not listening, so nobody else can take it meanwhile), and ``StartService`` the
repair strategy that starts it: "a person restarted the service", as a night's repair.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

from overnight.agent import RepairContext, Strategy

HOST = "127.0.0.1"


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection: bound, never listening."""
    sock = socket.socket()
    try:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


class Loopback:
    """A raw TCP server with one behaviour (``mode``):

    - ``reset``: reads the request, then closes with SO_LINGER 0 (the client gets a RST);
    - ``silent``: accepts and never answers (until closed);
    - ``slow``: reads the request, sets ``received``, answers 200 once ``release`` is set;
    - ``answer``: answers ``status`` with ``headers`` and ``body``;
    - ``plain``: a plain HTTP server, for a client that speaks TLS to it;
    - ``tls``: answers 200 over TLS with a self-signed certificate.
    """

    def __init__(
        self,
        mode: str,
        status: int = 200,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"{}",
    ) -> None:
        self.mode, self.status, self.headers, self.body = mode, status, tuple(headers), body
        self.received = threading.Event()
        self.release = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._tls = _server_context() if mode == "tls" else None
        threading.Thread(target=self._serve, daemon=True, name=f"loopback-{mode}").start()

    def url(self, scheme: str = "http", path: str = "/") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError:  # the client went away (a timeout, a failed handshake)
            pass
        finally:
            conn.close()

    def _answer(self, conn: socket.socket) -> None:
        if self.mode == "silent":
            self.release.wait()
            return
        if self.mode == "plain":
            conn.recv(65536)  # a TLS ClientHello; answered as any HTTP server would
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if self._tls is not None:
            conn = self._tls.wrap_socket(conn, server_side=True)  # the client's verification fails here
        _read_head(conn)
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if self.mode == "slow":
            self.received.set()
            self.release.wait(30)
        head = f"HTTP/1.1 {self.status} Status\r\nContent-Length: {len(self.body)}\r\nConnection: close\r\n"
        head += "Content-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        conn.sendall(head.encode() + b"\r\n" + self.body)


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@cache
def self_signed_cert() -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), made once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overnight loopback test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False)
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="overnight-tls-"))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return folder / "cert.pem", folder / "key.pem"


def _server_context() -> ssl.SSLContext:
    cert, key = self_signed_cert()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


# -- a service that is down until someone starts it ------------------------------------------


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "answer": 42}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class DownService:
    """An HTTP service whose port refuses connections until ``start()``."""

    registry: ClassVar[dict[int, DownService]] = {}

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.server: ThreadingHTTPServer | None = None
        DownService.registry[self.port] = self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        if self.server is not None:
            return
        server = ThreadingHTTPServer((HOST, self.port), _Answer, bind_and_activate=False)
        server.socket.close()
        server.socket = self.sock
        server.server_address = self.sock.getsockname()
        server.server_activate()  # listen(): connections are accepted from now on
        threading.Thread(target=server.serve_forever, daemon=True, name="down-service").start()
        self.server = server

    def close(self) -> None:
        DownService.registry.pop(self.port, None)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        else:
            self.sock.close()


class StartService(Strategy):
    """Start the ``DownService`` the component's ``base_url`` points at (what a person
    restarting the service would do)."""

    name = "start_service"

    async def run(self, ctx: RepairContext) -> str:
        port = urlsplit(str(cast(Any, ctx.component).base_url)).port  # the test's component has one
        DownService.registry[int(port or 0)].start()
        return f"started the service on port {port}"
