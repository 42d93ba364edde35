"""Sandbox services: local HTTP servers that speak the real protocols of the LLM and search
APIs, so the real client SDKs talk to them unchanged, with runtime fault switches.

They are part of the product: the demo night, dry runs and fault injection use them.
Everything binds loopback only::

    from overnight.sandbox import Sandbox

    with Sandbox() as sb:
        client = GigaChat(base_url=sb.gigachat.base_url, auth_url=sb.gigachat.auth_url,
                          credentials=sb.gigachat_credentials[0])
        sb.gigachat.switches.quota_per_minute = 10      # 429 with Retry-After from now on
        sb.openai.switches.refuse_connections = True    # ECONNREFUSED until switched back

Out of process, ``serve_forever()`` runs the same bundle until stopped, and another
process flips switches over HTTP through the control server:
``POST {control}/_sandbox/servers/gigachat/switches {"latency_s": 5}``.

The chat servers answer in the ``neutral`` style by default (answers built from the
prompt: its ids, its question, its instructions; ``sandbox.neutral``), or in ``grant``
prose (``sandbox.textgen``, the reference pipeline's), after scripted replies when given;
a request picks another with its path (``chat_base_url``, ``sandbox.styles``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .bugs import ProductBugs
from .gigachat import GigaChatServer
from .neutral import STYLES, Replies, ReplyRule
from .openai_api import OpenAIServer
from .search import SearchServer
from .server import LOOPBACK_HOSTS, ControlServer, SandboxServer, Switches
from .styles import style_path

__all__ = [
    "DEFAULT_API_KEYS",
    "DEFAULT_GIGACHAT_CREDENTIALS",
    "DEFAULT_PORTS",
    "DEFAULT_SEARCH_KEYS",
    "LOOPBACK_HOSTS",
    "STYLES",
    "ControlServer",
    "GigaChatServer",
    "OpenAIServer",
    "ProductBugs",
    "Replies",
    "ReplyRule",
    "Sandbox",
    "SandboxServer",
    "SearchServer",
    "Switches",
    "serve_forever",
    "shared_sandbox",
]


def _basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# Demo secrets, not secrets: two of each so a repair can rotate to another allowed one.
# GigaChat credentials are base64("client_id:client_secret"), the form the SDK expects.
DEFAULT_GIGACHAT_CREDENTIALS = (
    _basic("sandbox-client", "sandbox-secret"),
    _basic("sandbox-client-2", "sandbox-secret-2"),
)
DEFAULT_API_KEYS = ("sandbox-key", "sandbox-key-2")
DEFAULT_SEARCH_KEYS = ("sandbox-key", "sandbox-key-2")
# Fixed ports for an out-of-process sandbox (``serve_forever``); in-process bundles use 0.
DEFAULT_PORTS = {"control": 8790, "gigachat": 8791, "openai": 8792, "search": 8793}

SERVER_NAMES = ("gigachat", "openai", "search")


def _labelled(secrets: Sequence[str], prefix: str) -> dict[str, str]:
    # Readable quota clients in stats ("gigachat-1"), never the secret itself.
    return {s: f"{prefix}-{i}" for i, s in enumerate(secrets, 1)}


class Sandbox:
    """The three API servers (and a control server) started and stopped together.

    ``ports`` maps ``gigachat`` / ``openai`` / ``search`` / ``control`` to a port (0 or
    absent: a free one). ``control=False`` leaves the control server out.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        *,
        seed: int = 0,
        gigachat_credentials: Sequence[str] = DEFAULT_GIGACHAT_CREDENTIALS,
        api_keys: Sequence[str] = DEFAULT_API_KEYS,
        search_keys: Sequence[str] = DEFAULT_SEARCH_KEYS,
        control: bool = True,
        clock: Callable[[], float] = time.time,
        style: str = "neutral",
        replies: Replies | Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the sandbox binds loopback only ({' or '.join(LOOPBACK_HOSTS)}), not {host!r}")
        ports = dict(ports or {})
        unknown = set(ports) - {*SERVER_NAMES, "control"}
        if unknown:
            raise ValueError(
                f"unknown sandbox server(s) {sorted(unknown)} (known: {', '.join(SERVER_NAMES)}, control)"
            )
        common: dict[str, Any] = {"host": host, "seed": seed, "clock": clock}
        # How the chat servers answer by default: neutral, grant, or a script first.
        script = _script(replies, style)
        self.gigachat_credentials = tuple(gigachat_credentials)
        self.api_keys = tuple(api_keys)
        self.search_keys = tuple(search_keys)
        self.gigachat = GigaChatServer(
            credentials=_labelled(self.gigachat_credentials, "gigachat"),
            port=ports.get("gigachat", 0),
            **common,
            style=style,
            replies=script,
        )
        self.openai = OpenAIServer(
            api_keys=_labelled(self.api_keys, "openai"),
            port=ports.get("openai", 0),
            **common,
            style=style,
            replies=script,
        )
        self.search = SearchServer(
            api_keys=_labelled(self.search_keys, "search"), port=ports.get("search", 0), **common
        )
        self.servers: dict[str, SandboxServer] = {
            "gigachat": self.gigachat,
            "openai": self.openai,
            "search": self.search,
        }
        self.control = (
            ControlServer(self.servers, host=host, port=ports.get("control", 0)) if control else None
        )
        self._chat_urls: dict[tuple[str, str | None, str], str] = {}

    def start(self) -> Self:
        try:
            for server in self._all():
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._all():
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _all(self) -> list[SandboxServer]:
        return [*([self.control] if self.control else []), *self.servers.values()]

    @property
    def switches(self) -> dict[str, Switches]:
        return {name: s.switches for name, s in self.servers.items()}

    @property
    def urls(self) -> dict[str, str]:
        urls = {
            "gigachat": self.gigachat_url,
            "gigachat_auth": self.gigachat_auth_url,
            "openai": self.openai_url,
            "search": self.search_url,
        }
        if self.control is not None:
            urls["control"] = f"{self.control.url}/_sandbox/servers"
        return urls

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: s.stats() for name, s in self.servers.items()}

    # What a client needs, one value each (the first accepted credentials / key).

    @property
    def gigachat_url(self) -> str:
        return self.gigachat.base_url

    @property
    def gigachat_auth_url(self) -> str:
        return self.gigachat.auth_url

    @property
    def openai_url(self) -> str:
        return self.openai.base_url

    @property
    def search_url(self) -> str:
        return f"{self.search.url}/search"

    def chat_base_url(
        self,
        provider: str,
        style: str | None = None,
        replies: Replies | Iterable[Mapping[str, Any]] | None = None,
    ) -> str:
        """The base URL of the ``provider``'s chat API (``gigachat`` or ``openai``) that
        answers in ``style`` (None: the server's default), after the scripted ``replies``
        when given (rules as ``Replies`` takes them): ``{url}/style/NAME/...``
        (``sandbox.styles``)."""
        key = _chat_key(provider, style, replies)
        known = self._chat_urls.get(key)
        if known is not None:  # the same script is registered once
            return known
        server: GigaChatServer | OpenAIServer = self.gigachat if provider == "gigachat" else self.openai
        name = style
        if replies is not None:
            script = _script(replies, style or server.styles.default)
            assert script is not None
            name = server.styles.register(script)
        elif style is not None and style not in STYLES:
            raise ValueError(f"unknown sandbox style {style!r} (known: {', '.join(STYLES)})")
        base = server.base_url
        url = base if name is None else server.url + style_path(name) + base[len(server.url) :]
        self._chat_urls[key] = url
        return url

    def view(self) -> SandboxView:
        """What another process needs to talk to this sandbox (a worker of the night):
        its URLs and keys, and the chat URLs of every style and script asked for so far."""
        return SandboxView(
            gigachat_url=self.gigachat_url,
            gigachat_auth_url=self.gigachat_auth_url,
            openai_url=self.openai_url,
            search_url=self.search_url,
            credentials=self.credentials,
            api_key=self.api_key,
            search_key=self.search_key,
            chat_urls=dict(self._chat_urls),
        )

    @property
    def credentials(self) -> str:
        return self.gigachat_credentials[0]

    @property
    def api_key(self) -> str:
        return self.api_keys[0]

    @property
    def search_key(self) -> str:
        return self.search_keys[0]

    def env(self) -> dict[str, str]:
        """Environment variables that point the official clients at this sandbox."""
        return {
            "GIGACHAT_BASE_URL": self.gigachat_url,
            "GIGACHAT_AUTH_URL": self.gigachat_auth_url,
            "GIGACHAT_CREDENTIALS": self.credentials,
            "GIGACHAT_SCOPE": "GIGACHAT_API_PERS",
            "GIGACHAT_VERIFY_SSL_CERTS": "false",
            "OPENAI_BASE_URL": self.openai_url,
            "OPENAI_API_KEY": self.api_key,
            "SEARCH_URL": self.search_url,
            "SEARCH_API_KEY": self.search_key,
        }

    def describe(self) -> dict[str, Any]:
        """URLs, accepted demo credentials and keys, and the matching environment."""
        return {
            "urls": self.urls,
            "gigachat_credentials": list(self.gigachat_credentials),
            "api_keys": list(self.api_keys),
            "search_keys": list(self.search_keys),
            "env": self.env(),
        }


def _script(replies: Replies | Iterable[Mapping[str, Any]] | None, then: str) -> Replies | None:
    if replies is None or isinstance(replies, Replies):
        return replies
    return Replies(replies, then=then)


def _chat_key(provider: str, style: str | None, replies: Any) -> tuple[str, str | None, str]:
    return (provider, style, json.dumps(replies, sort_keys=True, default=str) if replies is not None else "")


@dataclass(frozen=True)
class SandboxView:
    """A running sandbox as seen from another process: what ``SandboxEndpoints`` gives,
    and the chat URLs its components asked for (a worker's components ask for the same)."""

    gigachat_url: str
    gigachat_auth_url: str
    openai_url: str
    search_url: str
    credentials: str
    api_key: str
    search_key: str
    chat_urls: dict[tuple[str, str | None, str], str]

    def chat_base_url(self, provider: str, style: str | None = None, replies: Any = None) -> str:
        url = self.chat_urls.get(_chat_key(provider, style, replies))
        if url is None:
            raise ValueError(
                f"the night's sandbox has no {provider} chat API in style {style!r} with these replies: "
                "a worker uses the styles the night's own components use"
            )
        return url


def running_sandbox() -> Sandbox | None:
    """The process-wide sandbox if it was started, else None (never starts it)."""
    with _shared_lock:
        return _shared


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """The process-wide sandbox: started on first use (free loopback ports, demo keys) and
    stopped at interpreter exit. Components with ``sandbox = true`` all talk to this one,
    so a fault driver in the same process switches what they see.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            box = Sandbox().start()
            atexit.register(box.stop)
            _shared = box
        return _shared


def serve_forever(
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    style: str = "neutral",
    replies: Replies | Iterable[Mapping[str, Any]] | None = None,
    on_ready: Callable[[Sandbox], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a ``Sandbox`` until ``stop`` is set, SIGINT or SIGTERM; then stop it cleanly.

    ``ports`` defaults to ``DEFAULT_PORTS`` (pass zeros for free ports). ``on_ready`` gets
    the started sandbox, e.g. to print ``describe()``. Signal handlers are installed only
    when called from the main thread, and restored on return.
    """
    stop = stop or threading.Event()
    sandbox = Sandbox(
        host, DEFAULT_PORTS if ports is None else ports, seed=seed, style=style, replies=replies
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        with sandbox:
            if on_ready is not None:
                on_ready(sandbox)
            while not stop.wait(1.0):
                pass
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
