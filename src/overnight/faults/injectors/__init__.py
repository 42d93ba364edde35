"""Injectors: real faults on the real connections of a night's components.

Each injector is a class that says what it serves (component ``types`` and/or a
``capability`` from ``overnight.components``), which fault ``kinds`` it makes and which
``method`` names select it; ``choose`` asks the registered injectors in order, the user's
first (``register_injector``), then the built-in ones:

==============  ================================  ===========================================
mechanism       component                         fault kinds and how they are made
==============  ================================  ===========================================
tcp_proxy       any, with ``fault_proxy``         through the TCP proxy: connection_lost
                (TcpProxyable)                    (reset), unavailable (down), timeout (black
                                                  hole or ``latency``)
http_proxy      any, with ``fault_proxy =         the same proxy in HTTP mode (chaos.http_proxy):
                "http"`` (TcpProxyable)           rate_limited, quota_exceeded (429 with
                                                  Retry-After), auth_expired (401/403),
                                                  server_error (5xx); timeout with
                                                  ``method = "http"``
sandbox_switch  llm / websearch, sandbox          the sandbox server's switches: rate_limited
                (Sandboxed)                       and quota_exceeded (a zero quota with
                                                  Retry-After), auth_expired (the key in use
                                                  is revoked), server_error (5xx burst),
                                                  timeout (black hole, or ``latency``),
                                                  unavailable (the port is closed)
http_layer      an HTTP API, real endpoint        the HTTP fault layer inside the client
                (HttpFaultable)                   (chaos.http): the same kinds, answered
                                                  before the request leaves the host
postgresql      database on PostgreSQL            connection_lost: the night's backends are
                (SqlDatabase)                     terminated; unavailable: connect revoked
                                                  (``method = "revoke"``) or the local server
                                                  stopped (``method = "stop"``, if permitted)
qdrant_local    vectorstore, local mode           unavailable: the storage is closed, or
                (LocalStore)                      closed and locked by another client
                                                  (``method = "lock"``)
disk_fill       system (DiskWatcher)              resource_low: a scratch file fills the disk
                                                  below the threshold (in the night dir,
                                                  always removed)
==============  ================================  ===========================================

``check`` validates a plan against the components before the night starts (promise 8:
targets at home only); ``make`` builds the injector for one fault. Every injector's
``inject`` returns what it did, for the ledger (never a secret), and ``undo`` restores
what was there before. ``recover`` undoes what a crashed session left behind.

The registry (``register_injector``, ``registered_injectors``), ``choose``, ``check`` and
``make`` are here; ``base`` holds ``Injector``, ``InjectEnv``, ``FaultsSettings`` and the
endpoints; the built-in injectors are in ``network`` (tcp_proxy, sandbox_switch,
http_layer), ``postgresql`` and ``local`` (qdrant_local, disk_fill).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ...components import Component
from ...errors import ConfigError
from ..plan import FaultSpec
from .base import (
    GB,
    HTTP_KINDS,
    HTTP_PROXY_KINDS,
    PROXY_KINDS,
    Endpoint,
    FaultsSettings,
    InjectEnv,
    Injector,
    default_duration,
    endpoints_of,
    has_tcp_endpoint,
    libpq_endpoints,
    proxy_mode,
)
from .local import DiskFill, QdrantLocalFault
from .network import HttpLayer, HttpProxyFault, ProxyFault, SandboxSwitch
from .postgresql import PostgresFault

__all__ = [
    "GB",
    "HTTP_KINDS",
    "HTTP_PROXY_KINDS",
    "PROXY_KINDS",
    "DiskFill",
    "Endpoint",
    "FaultsSettings",
    "HttpLayer",
    "HttpProxyFault",
    "InjectEnv",
    "Injector",
    "InjectorT",
    "PostgresFault",
    "ProxyFault",
    "QdrantLocalFault",
    "SandboxSwitch",
    "check",
    "choose",
    "default_duration",
    "endpoints_of",
    "has_tcp_endpoint",
    "injector_class",
    "libpq_endpoints",
    "make",
    "menu",
    "proxy_mode",
    "register_injector",
    "registered_injectors",
]

# -- the registry -----------------------------------------------------------------------------

# Asked in this order, after the user's own.
_BUILTIN: tuple[type[Injector], ...] = (
    ProxyFault,
    HttpProxyFault,
    SandboxSwitch,
    HttpLayer,
    PostgresFault,
    QdrantLocalFault,
    DiskFill,
)
_REGISTRY: dict[str, type[Injector]] = {}

InjectorT = TypeVar("InjectorT", bound=type[Injector])


def register_injector(injector: InjectorT) -> InjectorT:
    """Let fault plans use ``injector`` (a subclass of ``Injector``), by its ``mechanism``.

    ``choose`` asks the user's injectors first, in the order they were registered (again
    under the same name: replaced in place), then the built-in ones; so a fault on a
    component it serves goes to it without any change to overnight. Returns the class, so
    it also works as a decorator.
    """
    if not (isinstance(injector, type) and issubclass(injector, Injector)):
        raise TypeError(f"{injector!r} is not a subclass of overnight.faults.injectors.Injector")
    name = injector.mechanism
    if not isinstance(name, str) or not name or name == Injector.mechanism:
        raise ValueError(f"{injector.__name__}: give it a mechanism name of its own")
    if any(name == b.mechanism for b in _BUILTIN):
        raise ValueError(f"{injector.__name__}: {name!r} is a built-in injector's name")
    if not injector.kinds:
        raise ValueError(f"{injector.__name__}: say which fault kinds it makes (kinds)")
    if not injector.types and injector.capability is None:
        raise ValueError(f"{injector.__name__}: say which components it serves (types, capability)")
    if injector.inject is Injector.inject:
        # Said now, not when the first planned fault of the night meets it.
        raise ValueError(f"{injector.__name__}: define inject() (and undo() to take the fault back)")
    _REGISTRY[name] = injector
    return injector


def registered_injectors() -> list[type[Injector]]:
    """Every injector, in the order ``choose`` asks them."""
    return [*_REGISTRY.values(), *_BUILTIN]


def injector_class(mechanism: str) -> type[Injector]:
    """The injector registered as ``mechanism``; KeyError if there is none."""
    for injector in registered_injectors():
        if injector.mechanism == mechanism:
            return injector
    raise KeyError(mechanism)


# -- choosing and checking --------------------------------------------------------------------


def choose(spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str:
    """The mechanism for ``spec`` on ``comp``; ValueError says why there is none.

    The registered injectors are asked in order (``registered_injectors``): the first
    that serves the component and claims the fault makes it, or its refusal is the answer.
    """
    for injector in registered_injectors():
        if injector.serves(comp) and injector.claims(spec, comp):
            reason = injector.refusal(spec, comp, settings)
            if reason is not None:
                raise ValueError(reason)
            return injector.mechanism
    raise ValueError(_unserved(spec, comp))


def _unserved(spec: FaultSpec, comp: Component) -> str:
    """Why no injector takes ``spec`` on ``comp``, and what would make one take it."""
    kind, name = spec.kind, comp.name
    where = f"[components.{name}]"
    if kind in PROXY_KINDS or kind in HTTP_PROXY_KINDS:
        if not has_tcp_endpoint(comp):
            return (
                f"no injector makes {kind} for {name} ({comp.type_name}): the component has no "
                "tcp_endpoint() and route_via() for the fault proxy, and no injector of its own "
                "(README: Your own component type)"
            )
        mode = proxy_mode(comp)
        if kind in HTTP_PROXY_KINDS and mode != "http":
            return f'{kind} is an HTTP answer: set fault_proxy = "http" on {where} (the proxy in HTTP mode)'
        if mode is None:
            return f"set fault_proxy = true on {where} for {kind} (the TCP fault proxy)"
    return f"no injector makes {kind} for {name} ({comp.type_name} components)"


def check(
    specs: list[FaultSpec], components: Mapping[str, Component], settings: FaultsSettings
) -> dict[str, str]:
    """Validate a plan against the night's components: {fault id: mechanism}.

    Refuses targets outside loopback and ``allowed_hosts`` (promise 8), kinds a component
    cannot get, and faults that would stay forever for want of a duration.
    """
    out: dict[str, str] = {}
    for spec in specs:
        comp = components.get(spec.target)
        try:
            if comp is None:
                known = ", ".join(sorted(components)) or "none"
                raise ValueError(f"no component named {spec.target!r} (components: {known})")
            mechanism = _check_one(spec, comp, settings)
            instant = injector_class(mechanism)(spec, comp, _NO_ENV).instant
            lasting = spec.duration_s is not None or spec.until_repaired
            if instant and lasting:
                raise ValueError(f"{spec.kind} here is a single action; drop duration/until")
            if not instant and not lasting and spec.kind not in ("rate_limited", "quota_exceeded"):
                raise ValueError("say how long: duration=30s or until=repaired")
            if spec.every_s is not None and (default_duration(spec) or 0) >= spec.every_s:
                raise ValueError("it must end before its next occurrence: shorten duration or lengthen every")
        except ValueError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from None
        out[spec.id] = mechanism
    return out


def _check_one(spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str:
    """The mechanism that would make ``spec`` on ``comp``, its target at home; ValueError
    says why none would (the plan's timing aside)."""
    mechanism = choose(spec, comp, settings)
    injector = injector_class(mechanism)
    endpoints: list[Endpoint] = []
    if injector.networked:
        try:
            endpoints = endpoints_of(comp)
        except ValueError as exc:
            raise ValueError(f"{comp.name}: cannot tell where it connects ({exc})") from None
    away = [str(e) for e in endpoints if not e.at_home(settings)]
    if away:
        raise ValueError(
            f"{comp.name} talks to {', '.join(away)}: faults stay on loopback or "
            "the project's test hosts ([faults] allowed_hosts)"
        )
    reason = injector.endpoint_refusal(spec, comp, endpoints)
    if reason is not None:
        raise ValueError(reason)
    return mechanism


def menu(comp: Component, settings: FaultsSettings, kinds: Iterable[str]) -> list[dict[str, Any]]:
    """What can be injected into ``comp``: per fault kind, ``{kind, mechanism, injectable,
    why}`` — the mechanism that would make it (with ``method`` names it also takes), or
    why none would (``overnight faults --kinds``). Nothing is built or connected."""
    out: list[dict[str, Any]] = []
    for kind in kinds:
        spec = FaultSpec(source="--kinds", target=comp.name, kind=kind)
        try:
            mechanism = _check_one(spec, comp, settings)
        except ValueError as exc:
            out.append({"kind": kind, "mechanism": None, "injectable": False, "why": str(exc)})
            continue
        out.append({"kind": kind, "mechanism": mechanism, "injectable": True, "why": None})
    return out


_NO_ENV = InjectEnv(Path("."), FaultsSettings(), {})


def make(spec: FaultSpec, comp: Component, mechanism: str, env: InjectEnv) -> Injector:
    return injector_class(mechanism)(spec, comp, env)
