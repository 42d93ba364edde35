"""The HTTP plumbing of the sandbox servers: the listening socket and the request handler."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from .routing import Request, Response

if TYPE_CHECKING:
    from .server import SandboxServer

log = logging.getLogger("overnight.sandbox")


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
