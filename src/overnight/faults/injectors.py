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
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from sqlalchemy.exc import ArgumentError

from ..chaos.http import HttpFault, HttpFaults
from ..chaos.proxy import FaultProxy, is_loopback
from ..components import (
    Component,
    DiskWatcher,
    HttpFaultable,
    LocalStore,
    Replaying,
    Sandboxed,
    SqlDatabase,
    TcpProxyable,
)
from ..errors import ConfigError
from ..redaction import redact
from .plan import DEFAULT_MAX_DURATION_S, FaultSpec

GB = 1024**3
HTTP_KINDS = ("rate_limited", "quota_exceeded", "auth_expired", "server_error", "timeout", "unavailable")
PROXY_KINDS = ("connection_lost", "unavailable", "timeout")


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


# -- sandbox switches ---------------------------------------------------------------------


def _sandbox_server(comp: Component) -> Any:
    from ..sandbox import shared_sandbox

    box = shared_sandbox()
    if comp.type_name == "websearch":
        return box.search
    return box.gigachat if getattr(comp, "provider", "") == "gigachat" else box.openai


def _http_refusal(spec: FaultSpec, comp: Component) -> str | None:
    """Why an HTTP API cannot get ``spec``: it replays recorded results, or the kind."""
    if isinstance(comp, Replaying) and comp.replay is not None:
        return "this component replays recorded results; there is no connection to break"
    if spec.kind not in HTTP_KINDS:
        return f"an HTTP API gets {', '.join(HTTP_KINDS)}, not {spec.kind}"
    return None


class SandboxSwitch(Injector):
    """Flip the sandbox server's switches; restore their previous values on undo."""

    mechanism = "sandbox_switch"
    types = ("llm", "websearch")  # the APIs the sandbox serves
    capability = Sandboxed
    kinds = HTTP_KINDS
    methods = ("switch",)
    networked = False  # the sandbox is overnight's own, in this process

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        method = spec.params.get("method")
        return method == "switch" or (method is None and comp.sandbox)

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if reason := _http_refusal(spec, comp):
            return reason
        return None if comp.sandbox else "method 'switch' needs sandbox = true on the component"

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._saved: dict[str, Any] = {}
        self._revoked: tuple[dict[str, str], str, str] | None = None

    def _changes(self) -> dict[str, Any]:
        p, kind = self.spec.params, self.spec.kind
        if kind == "rate_limited":
            return {"quota_per_minute": 0, "minute_window_s": max(p.get("retry_after", 2.0), 1.0)}
        if kind == "quota_exceeded":
            window = p.get("retry_after") or self.spec.duration_s or 30.0
            return {"quota_per_day": 0, "day_window_s": max(window, 1.0)}
        if kind == "server_error":
            count = int(p.get("count", 3)) if self.instant else 10**9  # a burst, or for the duration
            return {"fail_next_5xx": count, "fail_5xx_status": int(p.get("status", 500))}
        if kind == "timeout":
            return {"latency_s": p["latency"]} if "latency" in p else {"blackhole": True}
        if kind == "unavailable":
            return {"refuse_connections": True}
        return {}

    async def inject(self) -> dict[str, Any]:
        server = _sandbox_server(self.comp)
        detail: dict[str, Any] = {"server": server.name}
        if self.spec.kind == "auth_expired":
            accepted = server.credentials if server.name == "gigachat" else server.api_keys
            key = _key_in_use(self.comp)
            if accepted is None or key is None or key not in accepted:
                raise RuntimeError(f"the key {self.comp.name} uses is not known to the sandbox")
            self._revoked = (accepted, key, accepted.pop(key))
            server.switches.expire_tokens_now()
            detail["revoked"] = self._revoked[2]  # the sandbox's label for the key, not the key
            return detail
        changes = self._changes()
        snapshot = server.switches.snapshot()
        self._saved = {k: snapshot[k] for k in changes}
        await asyncio.to_thread(server.switches.update, **changes)
        detail["switches"] = changes
        return detail

    async def undo(self) -> dict[str, Any]:
        server = _sandbox_server(self.comp)
        if self._revoked is not None:
            accepted, key, label = self._revoked
            accepted[key] = label
            self._revoked = None
            return {"restored": label}
        saved, self._saved = self._saved, {}
        if self.spec.kind == "server_error":
            saved["fail_next_5xx"] = 0
        if saved:
            await asyncio.to_thread(server.switches.update, **saved)
        if self.spec.kind in ("rate_limited", "quota_exceeded"):
            server.reset_quota()  # the refusals counted nothing, but a clean window is the promise
        return {"switches": saved}


def _key_in_use(comp: Component) -> str | None:
    literal = getattr(comp, "_literal_key", None) or getattr(comp, "api_key", None)
    if literal:
        return str(literal)
    env = comp.knobs.get("api_key_env") if "api_key_env" in comp.knobs else None
    return os.environ.get(str(env)) if env else None


# -- the HTTP fault layer -----------------------------------------------------------------


class HttpLayer(Injector):
    """Answer the component's requests with the fault inside its own HTTP client."""

    mechanism = "http_layer"
    capability = HttpFaultable
    kinds = HTTP_KINDS
    methods = ("http",)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on an HTTP API that the injectors before it did not take

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if reason := _http_refusal(spec, comp):
            return reason
        method = spec.params.get("method")
        if method not in (None, "http"):
            return f"method {method!r}: expected 'switch', 'http' or 'proxy'"
        return None

    @classmethod
    def prepare(cls, spec: FaultSpec, comp: Component) -> None:
        if isinstance(comp, HttpFaultable) and comp.http_faults is None:
            comp.http_faults = HttpFaults()

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        # A burst of `count` answers ends by itself: nothing to undo.
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._token: int | None = None

    def _fault(self) -> HttpFault:
        p, kind = self.spec.params, self.spec.kind
        if kind == "timeout" and "bytes_per_s" in p:
            return HttpFault("slow_body", bytes_per_s=p["bytes_per_s"])
        count = int(p.get("count", 3)) if self.instant else None
        return HttpFault(
            kind,
            status=p.get("status"),
            retry_after_s=p.get("retry_after"),
            count=count,
            latency_s=p.get("latency"),
        )

    def _layer(self) -> HttpFaults:
        comp = self.comp
        if not isinstance(comp, HttpFaultable) or comp.http_faults is None:
            raise RuntimeError(f"{comp.name} was not given the HTTP fault layer before it connected")
        return comp.http_faults

    async def inject(self) -> dict[str, Any]:
        fault = self._fault()
        self._token = self._layer().activate(fault)
        return {"http_fault": fault.kind, **({"count": fault.count} if fault.count else {})}

    async def undo(self) -> dict[str, Any]:
        if self._token is not None:
            self._layer().deactivate(self._token)
            self._token = None
        return {}


# -- the TCP proxy ------------------------------------------------------------------------


class ProxyFault(Injector):
    """Reset, refuse or stall the component's connections in the TCP proxy before it."""

    mechanism = "tcp_proxy"
    capability = TcpProxyable
    kinds = PROXY_KINDS
    methods = ("proxy",)

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        # Named, or a kind it makes on a component that is behind the proxy anyway.
        method = spec.params.get("method")
        return method == "proxy" or (method is None and comp.fault_proxy and spec.kind in cls.kinds)

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if not comp.fault_proxy:
            return f"method 'proxy' needs fault_proxy = true on [components.{comp.name}]"
        if spec.kind not in cls.kinds:
            return f"the TCP proxy makes {', '.join(cls.kinds)}, not {spec.kind}"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.instant = spec.kind == "connection_lost"

    @property
    def proxy(self) -> FaultProxy:
        return self.env.proxies[self.comp.name]

    async def inject(self) -> dict[str, Any]:
        p, kind = self.spec.params, self.spec.kind
        if kind == "connection_lost":
            return {"reset_connections": await self.proxy.reset()}
        if kind == "unavailable":
            await self.proxy.down()
            return {"proxy": "down"}
        if "latency" in p or "bytes_per_s" in p:
            if "latency" in p:
                self.proxy.latency(p["latency"] * 1000, p.get("jitter", 0.0) * 1000)
            if "bytes_per_s" in p:
                self.proxy.bandwidth(p["bytes_per_s"])
            return {"proxy": "slow", "latency_s": p.get("latency"), "bytes_per_s": p.get("bytes_per_s")}
        self.proxy.blackhole(True)
        return {"proxy": "blackhole"}

    async def undo(self) -> dict[str, Any]:
        await self.proxy.clear()
        return {"proxy": "clear"}


# -- PostgreSQL -----------------------------------------------------------------------------


def _sql(comp: Component) -> SqlDatabase:
    """``comp`` as the SQL database the PostgreSQL injector serves (``serves`` checked it)."""
    if not isinstance(comp, SqlDatabase):
        raise TypeError(f"{comp.name} is a {comp.type_name} component, not a SQL database")
    return comp


def _admin_conninfo(db: SqlDatabase, dbname: str | None = None) -> dict[str, Any]:
    """The component's own connection parameters (the same server, reached the same way),
    on ``dbname`` if given, named so it does not look like one of the night's backends."""
    info: dict[str, Any] = dict(_pg_params(db))
    if dbname:
        info["dbname"] = dbname
    info.update(connect_timeout=10, application_name="overnight-faults")
    return info


def _pg(db: SqlDatabase, sql: str, params: tuple[Any, ...] = (), dbname: str | None = None) -> Any:
    import psycopg

    with psycopg.connect(**_admin_conninfo(db, dbname), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresFault(Injector):
    """Terminate the night's backends, revoke connect, or stop the local server."""

    mechanism = "postgresql"
    capability = SqlDatabase
    kinds = ("connection_lost", "unavailable")
    methods = ("terminate", "revoke", "stop")

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on a SQL database is its to make or to refuse

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        kind, method = spec.kind, spec.params.get("method")
        if _sql(comp).dialect != "postgresql":
            return "database faults need a PostgreSQL url (SQLite has no connection to break)"
        if kind == "connection_lost" and method in (None, "terminate"):
            return None
        if kind == "unavailable" and method in (None, "revoke", "stop"):
            if method == "stop":
                if not settings.allow_service_control:
                    return "method 'stop' needs allow_service_control = true in [faults]"
                if not spec.params.get("stop_command") or not spec.params.get("start_command"):
                    return "method 'stop' needs stop_command and start_command"
            return None
        return (
            f"PostgreSQL faults are connection_lost (terminate) and unavailable (revoke, stop), not {kind}"
            + (f" with method {method!r}" if method else "")
        )

    @classmethod
    def endpoint_refusal(cls, spec: FaultSpec, comp: Component, endpoints: list[Endpoint]) -> str | None:
        method = spec.params.get("method")
        revoke = spec.kind == "unavailable" and method in (None, "revoke")
        if revoke and _admin_conninfo(_sql(comp)).get("dbname") in (None, "postgres"):
            return "connect cannot be revoked on the maintenance database 'postgres'"
        if method == "stop" and not all(e.local for e in endpoints):
            return "method 'stop' stops a local server only (the url is not loopback)"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.method: str = spec.params.get("method") or (
            "terminate" if spec.kind == "connection_lost" else "revoke"
        )
        self.instant = self.method == "terminate"
        self.mechanism = f"postgresql_{self.method}"
        self.db = _sql(comp)

    def _terminate(self) -> int:
        rows = _pg(
            self.db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (self.db.application_name,),
            dbname="postgres",
        )
        return sum(1 for (ok,) in rows if ok)

    async def inject(self) -> dict[str, Any]:
        db = _admin_conninfo(self.db)["dbname"]
        if self.method == "terminate":
            return {"terminated_backends": await asyncio.to_thread(self._terminate)}
        if self.method == "revoke":
            await asyncio.to_thread(
                _pg, self.db, f"ALTER DATABASE {_quote_ident(db)} ALLOW_CONNECTIONS false", (), "postgres"
            )
            terminated = await asyncio.to_thread(self._terminate)
            return {"database": db, "allow_connections": False, "terminated_backends": terminated}
        await _shell(self.spec.params["stop_command"])
        return {"server": "stopped"}

    async def undo(self) -> dict[str, Any]:
        return await self._restore(self.method, self.spec.params, self.comp)

    @classmethod
    async def _restore(cls, method: str, params: Mapping[str, Any], comp: Component) -> dict[str, Any]:
        if method == "revoke":
            db = _admin_conninfo(_sql(comp))["dbname"]
            await asyncio.to_thread(
                _pg, _sql(comp), f"ALTER DATABASE {_quote_ident(db)} ALLOW_CONNECTIONS true", (), "postgres"
            )
            return {"database": db, "allow_connections": True}
        if method == "stop":
            await _shell(params["start_command"])
            return {"server": "started"}
        return {}

    @classmethod
    async def recover(cls, record: Mapping[str, Any], comp: Component | None, env: InjectEnv) -> str:
        method = record.get("method", "")
        if method not in ("revoke", "stop"):
            return "nothing was left broken (backends were terminated once)"
        if comp is None:
            return f"cannot undo {method}: the component is no longer in the config"
        await cls._restore(method, record.get("params", {}), comp)
        return "connect allowed again" if method == "revoke" else "server started again"


async def _shell(command: str, timeout: float = 120.0) -> None:
    proc = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"{command!r} ran past {timeout:g} s") from None
    if proc.returncode != 0:
        tail = redact(err.decode(errors="replace").strip())[-200:]
        raise RuntimeError(f"{command!r} exited {proc.returncode}: {tail}")


# -- Qdrant local mode ----------------------------------------------------------------------


def _local_path(comp: Component) -> Path | None:
    return comp.path if isinstance(comp, LocalStore) else None


class QdrantLocalFault(Injector):
    """Close the component's local storage; with ``lock``, hold it with another client."""

    mechanism = "qdrant_local"
    types = ("vectorstore",)  # a Qdrant local store: the lock is Qdrant's own
    capability = LocalStore
    kinds = ("unavailable",)
    methods = ("close", "lock")
    networked = False

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on the vector store not behind the TCP proxy

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if _local_path(comp) is None:
            return "a Qdrant server is broken through the TCP proxy: set fault_proxy = true"
        if spec.kind != "unavailable" or spec.params.get("method") not in (None, "close", "lock"):
            return "Qdrant local mode gets unavailable (method 'close' or 'lock')"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.method: str = spec.params.get("method") or (
            "lock" if spec.duration_s is not None or spec.until_repaired else "close"
        )
        self.instant = self.method == "close"
        self._holder: Any = None

    async def inject(self) -> dict[str, Any]:
        await self.comp.close()
        if self.method == "close":
            return {"storage": "closed"}
        from qdrant_client import QdrantClient

        path = _local_path(self.comp)
        if path is None:
            raise RuntimeError(f"{self.comp.name} has no local storage to lock")
        self._holder = await asyncio.to_thread(QdrantClient, path=str(path))
        return {"storage": "closed and locked by another client"}

    async def undo(self) -> dict[str, Any]:
        holder, self._holder = self._holder, None
        if holder is not None:
            await asyncio.to_thread(holder.close)
            return {"storage": "lock released"}
        return {}


# -- disk fill ------------------------------------------------------------------------------


def _threshold_gb(comp: Component) -> float:
    return comp.min_free_disk_gb if isinstance(comp, DiskWatcher) else 0.0


class DiskFill(Injector):
    """A scratch file in the night dir sized to push free disk under the threshold."""

    mechanism = "disk_fill"
    capability = DiskWatcher
    kinds = ("resource_low",)
    networked = False

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on a component that watches free disk

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if spec.kind != "resource_low":
            return f"the system component gets resource_low (a disk fill), not {spec.kind}"
        if _threshold_gb(comp) <= 0:
            return "the system component has no free-disk threshold to trip"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.path: Path | None = None

    def _fill(self, path: Path) -> int:
        threshold_gb = _threshold_gb(self.comp)
        threshold = threshold_gb * GB
        below = self.spec.params.get("below", 0.25) * GB
        free = shutil.disk_usage(path.parent).free
        size = int(free - threshold + below)
        if size <= 0:
            return 0
        if size > self.env.settings.max_fill_gb * GB:
            raise RuntimeError(
                f"filling the disk under {threshold_gb:g} GB free needs "
                f"{size / GB:.1f} GB, more than [faults] max_fill_gb = {self.env.settings.max_fill_gb:g}"
            )
        with open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)
        return size

    async def inject(self) -> dict[str, Any]:
        self.env.night_path.mkdir(parents=True, exist_ok=True)
        self.path = self.env.night_path / f".fault-fill-{os.getpid()}-{id(self):x}"
        try:
            size = await asyncio.to_thread(self._fill, self.path)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return {"path": str(self.path), "bytes": size}

    async def undo(self) -> dict[str, Any]:
        path, self.path = self.path, None
        if path is not None:
            await asyncio.to_thread(path.unlink, True)
            return {"removed": str(path)}
        return {}

    @classmethod
    async def recover(cls, record: Mapping[str, Any], comp: Component | None, env: InjectEnv) -> str:
        path = record.get("detail", {}).get("path")
        if not path:
            return "no file was left"
        Path(path).unlink(missing_ok=True)
        return f"removed {path}"


# -- the registry -----------------------------------------------------------------------------

# Asked in this order, after the user's own.
_BUILTIN: tuple[type[Injector], ...] = (
    ProxyFault,
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
    raise ValueError("it has no url to tell where it connects")


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
    raise ValueError(
        f"no injector for {comp.type_name} components; set fault_proxy = true for TCP-level faults"
    )


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
            # Constructing an injector has no side effect; it knows whether it is one action.
            instant = injector(spec, comp, _NO_ENV).instant
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


_NO_ENV = InjectEnv(Path("."), FaultsSettings(), {})


def make(spec: FaultSpec, comp: Component, mechanism: str, env: InjectEnv) -> Injector:
    return injector_class(mechanism)(spec, comp, env)


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
