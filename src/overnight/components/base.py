"""The component protocol: a dependency with a handle, a probe, a classifier and knobs.

A component's *handle* is what the scenario calls. Every call goes through
``Component.call``, which turns the client's exceptions into ``InfraError`` with a
diagnosed fault kind and tells whoever listens (the repair agent) at once, so detection
does not wait for the next probe. Anything the classifier does not recognise as a
dependency failure propagates unchanged: a bug stays a bug.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, overload

from pydantic import BaseModel, ValidationError

from ..config import describe_validation_error
from ..errors import ConfigError, InfraError
from ..redaction import redact
from ..runtime import NullRecorder, Recorder, current_call
from .errors import (
    RemoteError,
    classify_common,
    classify_status,
    describe_error,
    fault_details_common,
    type_name_of,
    url_endpoint,
    url_via,
)
from .knobs import Knob, KnobRefused, Knobs
from .options import (
    COMMON_OPTIONS,
    TIMEOUT_CEILING,
    NonEmptyStr,
    Options,
    TimeoutOptions,
    _BaseOptions,
)

__all__ = [
    "COMMON_OPTIONS",
    "FAULT_KINDS",
    "TIMEOUT_CEILING",
    "Component",
    "ComponentSpec",
    "ErrorListener",
    "Knob",
    "KnobRefused",
    "Knobs",
    "NonEmptyStr",
    "OptionError",
    "Options",
    "ProbeResult",
    "RemoteError",
    "SandboxEndpoints",
    "TimeoutOptions",
    "classify_common",
    "classify_status",
    "describe_error",
    "fault_details_common",
    "url_endpoint",
    "url_via",
]

T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound=BaseModel)

log = logging.getLogger("overnight.components")

# Sync client calls (``Component.call`` with a plain function) run on threads of their
# own, apart from the event loop's default executor (the night's own work: ledger reads,
# the ownership check, sync scenarios). A thread cannot be killed: a call abandoned at its
# deadline keeps its thread until the client returns, and must not starve anything else.
# Threads are made on demand, so the bound costs nothing until calls need it.
CALL_THREADS = 256
_call_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_call_pool_lock = threading.Lock()


def _call_threads() -> concurrent.futures.ThreadPoolExecutor:
    """The pool of sync client calls; one per process (a forked worker makes its own)."""
    global _call_pool
    with _call_pool_lock:
        if _call_pool is None or _call_pool[0] != os.getpid():
            pool = concurrent.futures.ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="overnight-call")
            _call_pool = (os.getpid(), pool)
        return _call_pool[1]


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` makes a coroutine: an ``async def`` function or method, a
    ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type) or not callable(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


FAULT_KINDS: tuple[str, ...] = (
    "connection_lost",
    "quota_exceeded",
    "rate_limited",
    "auth_expired",
    "timeout",
    "server_error",
    "unavailable",
    "resource_low",
    "bad_response",
)


class OptionError(ConfigError):
    """A component option is invalid: ``components.NAME.KEY: what was expected``."""

    def __init__(self, component: str, key: str, message: str) -> None:
        self.component, self.key, self.message = component, key, message
        where = f"components.{component}.{key}" if key else f"components.{component}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling working with the 3-arg constructor
        return (type(self), (self.component, self.key, self.message))


class SandboxEndpoints(Protocol):
    """Where the in-process sandbox APIs listen, and the credentials they accept."""

    @property
    def gigachat_url(self) -> str: ...
    @property
    def gigachat_auth_url(self) -> str: ...
    @property
    def openai_url(self) -> str: ...
    @property
    def search_url(self) -> str: ...
    @property
    def credentials(self) -> str: ...
    @property
    def api_key(self) -> str: ...
    @property
    def search_key(self) -> str: ...


@dataclass(frozen=True)
class ComponentSpec:
    """What a factory receives: the component's name, its config table, where things live."""

    name: str
    options: dict[str, Any]
    night_dir: Path
    critical: bool = True
    base_dir: Path | None = None  # the config's folder: relative input files resolve here
    # The sandbox for ``sandbox = true``, started on first call. Given by whoever builds
    # the components (the engine), so components do not depend on the sandbox package.
    sandbox: Callable[[], SandboxEndpoints] | None = None

    def sandbox_endpoints(self) -> SandboxEndpoints:
        if self.sandbox is None:
            raise ConfigError(
                f"components.{self.name}: sandbox = true, but whoever built this component "
                "gave it no sandbox (ComponentSpec.sandbox)"
            )
        return self.sandbox()

    def resolve(self, value: str | Path) -> Path:
        """An input file named in config: absolute, or relative to the config's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir or Path.cwd()) / p


@dataclass
class ProbeResult:
    """One bounded health check. ``healthy`` is only ever True after a real check passed."""

    healthy: bool
    latency_s: float
    fault_kind: str | None = None
    detail: str = ""
    checked_at: float = field(default_factory=time.time)
    # Facts a repair can use, as from ``fault_details`` (a probe's 429 carries its Retry-After).
    details: dict[str, Any] = field(default_factory=dict)


ErrorListener = Callable[["Component", str, BaseException], None]


class Component:
    """Base class of every component, built in or the user's.

    Override ``connect``, ``close``, ``probe`` and ``classify`` as needed; expose a
    ``handle`` whose methods wrap their client calls in ``await self.call(op, fn, ...)``.
    """

    type_name: ClassVar[str] = "custom"

    def __init__(self, spec: ComponentSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.critical = spec.critical
        self.knobs = Knobs(spec.name)
        self.recorder: Recorder = NullRecorder()
        self.sandbox = False  # True when it talks to overnight's own sandbox services
        self.peers: dict[str, Component] = {}  # the night's other components, by name
        self._listeners: list[ErrorListener] = []
        # The client repairs made on it (``reconnect``, ``rebuild_pool``, ``refresh_token``),
        # in order: a worker process repeats them on its own clients before its next attempt.
        self.client_repairs: list[str] = []
        # Where the fault proxy stands in front of it (``route_via``), for workers to follow.
        self.routed_via: tuple[str, int] | None = None
        # Put overnight's TCP fault proxy between it and its server (fault injection).
        self.fault_proxy = self._validate(_BaseOptions, spec.options).fault_proxy

    def options(self, model: type[OptionsT]) -> OptionsT:
        """This component's own options, validated by ``model`` (a subclass of ``Options``).

        The repair agent's per-component keys (``COMMON_OPTIONS``) are validated by the
        agent, so they are left out unless ``model`` declares one it reads itself. Any
        problem is an ``OptionError`` naming ``components.NAME.KEY`` (exit 2)::

            class InventoryOptions(Options):
                base_url: str = Field(min_length=1)
                timeout: float = Field(10.0, ge=1, le=60)

            opts = self.options(InventoryOptions)
        """
        declared = model.model_fields
        own = {k: v for k, v in self.spec.options.items() if k not in COMMON_OPTIONS or k in declared}
        return self._validate(model, own)

    def _validate(self, model: type[OptionsT], values: dict[str, Any]) -> OptionsT:
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            prefix = f"components.{self.name}."
            unknown = "unknown option"
            if len(exc.errors()[0]["loc"]) == 1:  # a top-level typo: say what the type takes
                own = ", ".join(model.model_fields)
                unknown += f" ({self.type_name} options: {own}; and the agent's per-component keys)"
            key, what = describe_validation_error(exc, prefix, unknown)
            key = "" if key == prefix.rstrip(".") else key.removeprefix(prefix)  # whole-table errors
            raise OptionError(self.name, key, what) from None

    def reject_unknown(self, leftover: dict[str, Any]) -> None:
        """Raise an OptionError naming the first option this component does not know.

        For a component that reads ``spec.options`` by hand; ``options(Model)`` does this
        and checks every value's type and bounds too."""
        unknown = sorted(k for k in leftover if k not in COMMON_OPTIONS)
        if unknown:
            more = f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise OptionError(self.name, unknown[0], f"unknown option{more}")

    # -- what subclasses provide ---------------------------------------------------

    @property
    def handle(self) -> Any:
        """What the scenario gets as ``ctx.components[name]``."""
        return self

    @property
    def target(self) -> str:
        """Where it points (URL, path), secrets masked; shown in reports."""
        return ""

    async def connect(self) -> None:
        """Open clients and pools. Called once when the night starts."""

    async def close(self) -> None:
        """Release everything. Called once when the night ends, even on errors."""

    async def probe(self) -> ProbeResult:
        """A bounded, real health check. Components without one say so."""
        raise NotImplementedError(f"component {self.name!r} ({self.type_name}) has no probe")

    @property
    def has_probe(self) -> bool:
        return type(self).probe is not Component.probe

    def classify(self, exc: BaseException) -> str | None:
        """The fault kind of a client exception, or None if it is not a dependency failure.
        By default ``classify_common``: the network errors of requests/urllib3, httpx,
        aiohttp, grpc and the stdlib's urllib, socket and ssl, and HTTP statuses."""
        return classify_common(exc)

    def fault_details(self, exc: BaseException) -> dict[str, Any]:
        """Extra facts a repair can use, e.g. ``{"retry_after_s": 30}`` from a 429. By
        default ``fault_details_common``: the ``Retry-After`` of the HTTP answer the
        error carries (requests, httpx, aiohttp, urllib)."""
        return fault_details_common(exc)

    def details_of(self, exc: BaseException) -> dict[str, Any]:
        """``fault_details`` of an error met here, or the details a remote one carries."""
        return dict(exc.details) if isinstance(exc, RemoteError) else self.fault_details(exc)

    def connection(self) -> dict[str, Any]:
        """How a client of its own reaches the dependency (a pytest suite's test, through
        the ``overnight_components`` fixture): URL, host, port, credentials, as the type
        has them; as it is now (a fault proxy's address, a rotated key). May hold
        secrets: it goes to the night's own test processes only, never to a record. The
        default: the ``tcp_endpoint`` (host, port), when there is one."""
        try:
            host, port = self.tcp_endpoint()
        except Exception:  # no TCP endpoint (local, sandbox): nothing to say
            return {}
        return {"host": host, "port": port}

    async def reconnect(self) -> None:
        """Drop clients and connect again (the simplest repair)."""
        await self.close()
        await self.connect()

    @property
    def can_reconnect(self) -> bool:
        """Whether ``reconnect()`` does anything: the type overrides it, ``connect()`` or
        ``close()``. The base class's are no-ops, so for a component with neither there is
        no client to reopen, and the ``reconnect`` repair says it was skipped."""
        cls = type(self)
        return (
            cls.reconnect is not Component.reconnect
            or cls.connect is not Component.connect
            or cls.close is not Component.close
        )

    def tcp_endpoint(self) -> tuple[str, int]:
        """The TCP (host, port) of its server, for ``fault_proxy``; before connect."""
        from ..errors import ConfigError

        raise ConfigError(
            f"components.{self.name}: fault_proxy: a {self.type_name} component has no TCP endpoint"
        )

    def route_via(self, host: str, port: int) -> None:
        """Talk to (host, port) instead of ``tcp_endpoint()`` from now on (the fault proxy)."""
        raise NotImplementedError

    # -- wiring --------------------------------------------------------------------

    def worker_conflict(self) -> str | None:
        """Why this component cannot also be built in worker processes of the night
        (``executor = "process"`` or ``"ray"``): a store one process holds locked, say.
        None when it can (each worker builds its own)."""
        return None

    def note_client_repair(self, action: str) -> None:
        """A repair remade this component's client by calling its method ``action`` (no
        arguments): workers with their own clients call it too. A custom strategy that
        rebuilds a client says so here."""
        if not hasattr(self, "client_repairs"):  # a subclass that skipped __init__
            self.client_repairs = []
        self.client_repairs.append(action)

    def bind(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def on_error(self, listener: ErrorListener) -> None:
        """Be told at once when a call fails with a dependency fault."""
        self._listeners.append(listener)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "target": redact(self.target) or "",
            "sandbox": self.sandbox,
            "critical": self.critical,
            "probe": self.has_probe,
            "knobs": self.knobs.describe(),
            **({"fault_proxy": True} if self.fault_proxy else {}),
        }

    @overload
    async def call(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    @overload
    async def call(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def call(self, op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call, ``fn(*args, **kwargs)``; classify its failure into an
        InfraError (``classify``) and tell the listeners (the repair agent) at once.

        ``fn`` may be an async function (awaited here) or a plain, blocking one (a
        ``requests`` call, a sync SDK): that one runs in a worker thread, so it never
        blocks the event loop, and an awaitable it returns is then awaited here.

        A call is bounded by the deadline around it, sync or async alike: the cycle's
        ``cycle_timeout`` (the attempt ends ``timeout``), a probe's ``probe_timeout``, a
        repair's ``repair_timeout``. At that deadline an async call is cancelled; a sync
        one cannot be, since Python cannot kill a thread: the call still ends on time, and
        its thread is abandoned, left to finish its blocking call in the background (a
        ``call_abandoned`` event says so). Give a sync client a timeout of its own
        (``requests.get(url, timeout=…)``): that frees the thread, and its timeout error
        is classified ``timeout``, retried and signalled like any other fault.
        """
        scope = current_call.get()
        if scope is not None:
            scope.count(self.name)
        try:
            if is_async_callable(fn):
                return await fn(*args, **kwargs)
            result = await self._in_thread(op, functools.partial(fn, *args, **kwargs))
            if inspect.isawaitable(result):  # a plain function around an async call
                return await result
            return result
        except InfraError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = self.classify(exc)
            if kind is None:
                raise
            self.report_fault(kind, exc, op)
            raise InfraError(self.name, kind, f"{op}: {describe_error(exc)}") from exc

    async def _in_thread(self, op: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a call thread, in a copy of this context (``current_call`` included,
        as ``asyncio.to_thread`` does)."""
        context = contextvars.copy_context()
        future = _call_threads().submit(context.run, fn)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a call still queued never starts
            if not future.done():
                scope = current_call.get()
                log.warning(
                    "%s: %s was cancelled (its deadline, or the night stopping) while its thread "
                    "was still in the client call; a thread cannot be killed: it is left to finish",
                    self.name,
                    op,
                )
                with contextlib.suppress(Exception):
                    self.recorder.event(
                        "call_abandoned",
                        f"{op}: cancelled (its deadline, or the night stopping) while its thread "
                        "was still in the blocking call; left to finish on its own",
                        {"op": op, "step": scope.step if scope else None},
                        component=self.name,
                    )
            raise

    def report_fault(self, kind: str, exc: BaseException, op: str = "") -> None:
        """Record a classified fault and tell the listeners (the repair agent)."""
        scope = current_call.get()
        self.recorder.event(
            "component_fault",
            f"{op}: {describe_error(exc)}" if op else describe_error(exc),
            {
                "fault_kind": kind,
                "op": op,
                "error_type": type_name_of(exc),
                "step": scope.step if scope else None,
                **self.details_of(exc),
            },
            component=self.name,
        )
        for listener in list(self._listeners):
            # A broken listener must not turn a dependency fault into a harness error.
            with contextlib.suppress(Exception):
                listener(self, kind, exc)

    def record_usage(self, data: dict[str, Any]) -> None:
        scope = current_call.get()
        payload = dict(data)
        payload["step"] = scope.step if scope else None
        self.recorder.event("usage", None, payload, component=self.name)
