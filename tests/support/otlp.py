"""A real OTLP/HTTP trace receiver on loopback: decodes each ``POST /v1/traces`` body as an
``ExportTraceServiceRequest`` (opentelemetry-proto) and keeps its spans, raw bodies and
headers for the tests to read. Runs on daemon threads; waits are conditions with bounds.

``python -m tests.support.otlp PORT_FILE`` runs one as a process of its own (the export
benchmark), writing its port to PORT_FILE and, on SIGTERM, its span count to stdout.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class Span:
    """One received span, its ids as hex, its attributes and events as plain dicts."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)


class Receiver:
    """``Receiver()`` listens at once; ``url`` is its base (``/v1/traces`` is where it
    takes spans). ``close()`` stops it."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                got: list[Span] = []
                for rs in request.resource_spans:
                    resource = attrs(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            got.append(
                                Span(
                                    sp.name,
                                    sp.trace_id.hex(),
                                    sp.span_id.hex(),
                                    sp.parent_span_id.hex(),
                                    sp.kind,
                                    sp.start_time_unix_nano,
                                    sp.end_time_unix_nano,
                                    attrs(sp.attributes),
                                    [(e.name, e.time_unix_nano, attrs(e.attributes)) for e in sp.events],
                                    [
                                        (ln.trace_id.hex(), ln.span_id.hex(), attrs(ln.attributes))
                                        for ln in sp.links
                                    ],
                                    sp.status.code,
                                    sp.status.message,
                                    resource,
                                )
                            )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with receiver._cond:
                    receiver.bodies.append(body)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver.spans.extend(got)
                    receiver._cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-receiver").start()

    def wait(self, done: Callable[[list[Span]], bool], timeout: float = 10.0) -> list[Span]:
        """The spans received, once ``done(spans)`` holds (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: condition not met within {timeout} s ({len(self.spans)} spans)"
                    )
                self._cond.wait(left)
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _main(port_file: Path) -> None:
    receiver = Receiver()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    port_file.write_text(str(receiver.port))
    stop.wait()
    receiver.close()
    print(len(receiver.spans), flush=True)


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
