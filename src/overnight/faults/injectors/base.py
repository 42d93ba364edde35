"""The base of every injector: ``Injector`` (what one serves and does), ``InjectEnv``,
the ``[faults]`` settings, and where a component's client connects (``Endpoint``,
``endpoints_of``: promise 8 is checked on it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
from sqlalchemy.exc import ArgumentError

from ...chaos.proxy import FaultProxy, is_loopback
from ...components import Component, SqlDatabase
from ...redaction import redact
from ..plan import DEFAULT_MAX_DURATION_S, FaultSpec

GB = 1024**3
HTTP_KINDS = ("rate_limited", "quota_exceeded", "auth_expired", "server_error", "timeout", "unavailable")
PROXY_KINDS = ("connection_lost", "unavailable", "timeout")
# What the fault proxy in HTTP mode adds to PROXY_KINDS: answers of a failing API.
HTTP_PROXY_KINDS = ("rate_limited", "quota_exceeded", "auth_expired", "server_error")


def proxy_mode(comp: Component) -> str | None:
    """How ``comp`` is put behind the fault proxy: ``"tcp"``, ``"http"``, or None (not)."""
    mode = comp.fault_proxy
    if mode is False:
        return None
    return "http" if mode == "http" else "tcp"


def has_tcp_endpoint(comp: Component) -> bool:
    """Whether its type says where its server is (overrides ``tcp_endpoint`` and
    ``route_via``), so the fault proxy can stand in front of it."""
    cls = type(comp)
    return cls.tcp_endpoint is not Component.tcp_endpoint and cls.route_via is not Component.route_via


@dataclass(frozen=True)
class FaultsSettings:
    """The config's ``[faults]`` table: what fault injection may touch."""

    allowed_hosts: tuple[str, ...] = ()
    allow_service_control: bool = False
    max_fill_gb: float = 5.0


class Injector:
    """One fault on one component, and, as class attributes, what this kind of injector
    serves. ``choose`` reads those:

    - ``types`` (component type names) and ``capability`` (a Protocol of
      ``overnight.components``, tested with ``isinstance``): the components it serves;
      give one or both.
    - ``kinds``: the fault kinds it makes; ``methods``: the ``method = "..."`` values of a
      fault plan that name it.
    - ``networked``: it breaks the component's connection to its server, so the server
      must be at home (loopback or ``[faults] allowed_hosts``, promise 8); ``False`` for an
      injector that acts on local things only.

    ``claims`` and ``refusal`` refine them; ``prepare`` runs before the components connect.
    Constructing one has no side effect (``check`` builds one to ask ``instant``);
    ``instant`` injectors act once and leave nothing to undo.
    """

    mechanism = "injector"  # its registered name, recorded with every injection
    types: ClassVar[tuple[str, ...]] = ()
    capability: ClassVar[type[Any] | None] = None
    kinds: ClassVar[tuple[str, ...]] = ()
    methods: ClassVar[tuple[str, ...]] = ()
    networked: ClassVar[bool] = True
    instant = False
    method: str | None = None  # the method it uses, where it has a choice (recorded)

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        self.spec = spec
        self.comp = comp
        self.env = env

    @classmethod
    def serves(cls, comp: Component) -> bool:
        """Whether ``comp`` is one of the components it is for (``types``, ``capability``)."""
        if cls.types and comp.type_name not in cls.types:
            return False
        return cls.capability is None or isinstance(comp, cls.capability)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        """Whether it answers for ``spec`` on ``comp`` (a component it serves): it then makes
        the fault or says why it cannot, and no injector after it is asked. Default: the
        plan names one of its ``methods``, or names none and asks for one of its ``kinds``."""
        method = spec.params.get("method")
        return method in cls.methods if method is not None else spec.kind in cls.kinds

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        """Why it cannot make ``spec`` on ``comp``, or None when it can (a fault plan error,
        shown before the night starts). Default: a kind it does not make."""
        if spec.kind not in cls.kinds:
            return f"{cls.mechanism} makes {', '.join(cls.kinds)}, not {spec.kind}"
        return None

    @classmethod
    def endpoint_refusal(cls, spec: FaultSpec, comp: Component, endpoints: list[Endpoint]) -> str | None:
        """Why not, once ``check`` knows where the component connects (``networked``
        injectors; the endpoints are all at home by then), or None."""
        return None

    @classmethod
    def prepare(cls, spec: FaultSpec, comp: Component) -> None:
        """Called for each planned fault before the components connect (to put a fault
        layer into the client it is about to build)."""

    async def inject(self) -> dict[str, Any]:
        raise NotImplementedError

    async def undo(self) -> dict[str, Any]:
        return {}

    @classmethod
    async def recover(cls, record: Mapping[str, Any], comp: Component | None, env: InjectEnv) -> str:
        """Undo what a crashed session left injected. Default: it died with the process."""
        return "the process that injected it has ended, and the fault with it"


@dataclass
class InjectEnv:
    """What injectors may use besides their component."""

    night_path: Path
    settings: FaultsSettings
    proxies: dict[str, FaultProxy]


# -- where a component connects ----------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One place a component's client connects to: an address or host name, or a Unix socket."""

    where: str
    socket: bool = False

    @property
    def local(self) -> bool:
        return self.socket or is_loopback(self.where)

    def at_home(self, settings: FaultsSettings) -> bool:
        allowed = {h.strip().lower() for h in settings.allowed_hosts}
        return self.local or self.where.strip().lower() in allowed

    def __str__(self) -> str:
        return f"the Unix socket {self.where}" if self.socket else self.where


def _pg_params(db: SqlDatabase) -> dict[str, str]:
    """The libpq parameters the database component's driver gets from its URL: SQLAlchemy's
    psycopg dialect, multi-host query forms included, turned into a conninfo as psycopg does."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db.url)
    # SQLAlchemy's psycopg dialect is not annotated (its methods are untyped calls).
    _, kwargs = PGDialect_psycopg().create_connect_args(url)  # type: ignore[no-untyped-call]
    # As strings: make_conninfo str()s every value itself (its types leave out float).
    plain = {k: str(v) for k, v in kwargs.items() if isinstance(v, str | int | float)}
    return {k: str(v) for k, v in conninfo_to_dict(make_conninfo("", **plain)).items()}


def libpq_endpoints(params: Mapping[str, str], environ: Mapping[str, str] | None = None) -> list[Endpoint]:
    """Where libpq connects for these conninfo ``params``, as libpq decides it: PGHOST and
    PGHOSTADDR fill what the params leave out; per entry of the host lists ``hostaddr`` is
    the address used when given, else ``host``; a host starting with ``/`` or ``@`` is a
    Unix socket, and none at all is the default socket. ValueError if a pg_service entry
    could name the host instead (it is read before the environment)."""
    env = os.environ if environ is None else environ
    if params.get("service") or env.get("PGSERVICE"):
        raise ValueError(
            "its connection names a pg_service entry, which can name another host; "
            "give host (and hostaddr) in the url instead"
        )
    host = params["host"] if "host" in params else env.get("PGHOST", "")
    hostaddr = params["hostaddr"] if "hostaddr" in params else env.get("PGHOSTADDR", "")
    hosts, addrs = host.split(","), hostaddr.split(",")
    out: list[Endpoint] = []
    for i in range(max(len(hosts), len(addrs))):
        name = hosts[i].strip() if i < len(hosts) else ""
        addr = addrs[i].strip() if i < len(addrs) else ""
        if addr:
            out.append(Endpoint(addr))
        elif not name:
            out.append(Endpoint("(libpq's default directory)", socket=True))
        else:
            out.append(Endpoint(name, socket=name.startswith(("/", "@"))))
    return out


def endpoints_of(comp: Component) -> list[Endpoint]:
    """Where ``comp``'s client really connects (promise 8 is checked on this). ValueError
    when that cannot be told from its configuration."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if isinstance(comp, SqlDatabase):
        if comp.dialect != "postgresql":
            return [Endpoint("(a SQLite file)", socket=True)]
        try:
            return libpq_endpoints(_pg_params(comp))
        except (ArgumentError, psycopg.ProgrammingError):
            # The parser's message may quote the url, password included.
            raise ValueError("its url cannot be read as a PostgreSQL connection") from None
    for attr in ("url", "base_url", "endpoint"):
        value = getattr(comp, attr, None)
        if not value:
            continue
        text = str(value)
        if text.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
            # A libpq URL that a user's component passes to libpq itself.
            try:
                scheme, rest = text.split("://", 1)
                params = conninfo_to_dict(scheme.split("+", 1)[0] + "://" + rest)
                # Parsed from a string, every value is one already.
                return libpq_endpoints({k: str(v) for k, v in params.items()})
            except psycopg.ProgrammingError:
                raise ValueError(f"its {attr} cannot be read as a PostgreSQL connection") from None
        try:
            host = httpx.URL(text).host  # what the HTTP clients (httpx underneath) connect to
        except httpx.InvalidURL as exc:
            raise ValueError(f"its {attr} is not a URL: {redact(str(exc))}") from None
        if not host:
            raise ValueError(f"its {attr} names no host")
        return [Endpoint(host)]
    if has_tcp_endpoint(comp):
        try:
            host, _port = comp.tcp_endpoint()
        except Exception as exc:  # a user's tcp_endpoint() may raise anything
            raise ValueError(f"its tcp_endpoint() failed: {redact(str(exc))}") from None
        return [Endpoint(host)]
    raise ValueError("it has no url, and no tcp_endpoint(), to tell where it connects")


def default_duration(spec: FaultSpec) -> float | None:
    """How long a fault lasts when the plan does not say: a 429's own Retry-After."""
    if spec.duration_s is not None:
        return spec.duration_s
    if spec.until_repaired:
        return _duration_param(spec, "max_duration", DEFAULT_MAX_DURATION_S)
    if spec.kind == "rate_limited":
        return max(_duration_param(spec, "retry_after", 2.0), 1.0)
    if spec.kind == "quota_exceeded":
        return max(_duration_param(spec, "retry_after", 30.0), 1.0)
    return None


def _duration_param(spec: FaultSpec, name: str, default: float) -> float:
    """One of plan.DURATION_PARAMS, which parse_duration made seconds."""
    value: float = spec.params.get(name, default)
    return value
