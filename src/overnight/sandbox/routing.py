"""Requests, responses and routes of the sandbox servers, the client labels of their
secrets, and server-sent events."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qs


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
    style: str | None = None  # the answer style its path asked for (/style/NAME/...), if any
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


def iter_sse(events: Iterator[Any]) -> Iterator[bytes]:
    """Server-sent events: ``data: <json>`` per event, then ``data: [DONE]``."""
    for event in events:
        yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
