"""Injectors: real faults on the real connections of a night's components.

Which injector serves a fault depends on the component and how it is reached:

==============================  ===========================================================
component                       fault kinds and how they are made
==============================  ===========================================================
llm / websearch, sandbox        the sandbox server's switches: rate_limited and
                                quota_exceeded (a zero quota with Retry-After),
                                auth_expired (the key in use is revoked), server_error
                                (5xx burst), timeout (black hole, or ``latency``),
                                unavailable (the port is closed)
llm / websearch, real endpoint  the HTTP fault layer inside the client (chaos.http): the
                                same kinds, answered before the request leaves the host
database, PostgreSQL            connection_lost: the night's backends are terminated;
                                unavailable: connect revoked (``method = "revoke"``) or the
                                local server stopped (``method = "stop"``, if permitted)
vectorstore, local mode         unavailable: the storage is closed, or closed and locked
                                by another client (``method = "lock"``)
system                          resource_low: a scratch file fills the disk below the
                                threshold (in the night dir, always removed)
any, with ``fault_proxy``       through the TCP proxy: connection_lost (reset),
                                unavailable (down), timeout (black hole or ``latency``)
==============================  ===========================================================

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
from typing import Any, Protocol, cast

import httpx
from sqlalchemy.exc import ArgumentError

from ..chaos.proxy import FaultProxy, is_loopback
from ..components import Component
from ..errors import ConfigError
from ..redaction import redact
from .plan import DEFAULT_MAX_DURATION_S, FaultSpec

GB = 1024**3
HTTP_KINDS = ("rate_limited", "quota_exceeded", "auth_expired", "server_error", "timeout", "unavailable")
PROXY_KINDS = ("connection_lost", "unavailable", "timeout")


# What the type-specific injectors read of their component. ``choose`` gives each mechanism
# only to components of its type (by ``type_name``), so the casts below are to these.


class _PostgresTarget(Protocol):
    """A ``database`` component on PostgreSQL."""

    @property
    def url(self) -> str: ...

    @property
    def application_name(self) -> str: ...


class _LocalStoreTarget(Protocol):
    """A ``vectorstore`` component in local mode."""

    @property
    def path(self) -> Path | None: ...


class _DiskTarget(Protocol):
    """A ``system`` component."""

    @property
    def min_free_disk_gb(self) -> float: ...


@dataclass(frozen=True)
class FaultsSettings:
    """The config's ``[faults]`` table: what fault injection may touch."""

    allowed_hosts: tuple[str, ...] = ()
    allow_service_control: bool = False
    max_fill_gb: float = 5.0


class Injector:
    """One fault on one component. ``instant`` injectors act once and leave nothing to undo."""

    mechanism = "injector"
    instant = False

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        self.spec = spec
        self.comp = comp
        self.env = env

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


class SandboxSwitch(Injector):
    """Flip the sandbox server's switches; restore their previous values on undo."""

    mechanism = "sandbox_switch"

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

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        # A burst of `count` answers ends by itself: nothing to undo.
        self.instant = spec.kind == "server_error" and spec.duration_s is None and not spec.until_repaired
        self._token: int | None = None

    def _fault(self) -> Any:
        from ..chaos.http import HttpFault

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

    async def inject(self) -> dict[str, Any]:
        fault = self._fault()
        self._token = self.comp.http_faults.activate(fault)
        return {"http_fault": fault.kind, **({"count": fault.count} if fault.count else {})}

    async def undo(self) -> dict[str, Any]:
        if self._token is not None:
            self.comp.http_faults.deactivate(self._token)
            self._token = None
        return {}


# -- the TCP proxy ------------------------------------------------------------------------


class ProxyFault(Injector):
    mechanism = "tcp_proxy"

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


def _admin_conninfo(comp: Component, dbname: str | None = None) -> dict[str, Any]:
    """The component's own connection parameters (the same server, reached the same way),
    on ``dbname`` if given, named so it does not look like one of the night's backends."""
    info: dict[str, Any] = dict(_pg_params(comp))
    if dbname:
        info["dbname"] = dbname
    info.update(connect_timeout=10, application_name="overnight-faults")
    return info


def _pg(comp: Component, sql: str, params: tuple[Any, ...] = (), dbname: str | None = None) -> Any:
    import psycopg

    with psycopg.connect(**_admin_conninfo(comp, dbname), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresFault(Injector):
    """Terminate the night's backends, revoke connect, or stop the local server."""

    mechanism = "postgresql"

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.method = spec.params.get("method") or (
            "terminate" if spec.kind == "connection_lost" else "revoke"
        )
        self.instant = self.method == "terminate"
        self.mechanism = f"postgresql_{self.method}"

    def _terminate(self) -> int:
        rows = _pg(
            self.comp,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (cast(_PostgresTarget, self.comp).application_name,),
            dbname="postgres",
        )
        return sum(1 for (ok,) in rows if ok)

    async def inject(self) -> dict[str, Any]:
        db = _admin_conninfo(self.comp)["dbname"]
        if self.method == "terminate":
            return {"terminated_backends": await asyncio.to_thread(self._terminate)}
        if self.method == "revoke":
            await asyncio.to_thread(
                _pg, self.comp, f"ALTER DATABASE {_quote_ident(db)} ALLOW_CONNECTIONS false", (), "postgres"
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
            db = _admin_conninfo(comp)["dbname"]
            await asyncio.to_thread(
                _pg, comp, f"ALTER DATABASE {_quote_ident(db)} ALLOW_CONNECTIONS true", (), "postgres"
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


class QdrantLocalFault(Injector):
    """Close the component's local storage; with ``lock``, hold it with another client."""

    mechanism = "qdrant_local"

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.method = spec.params.get("method") or (
            "lock" if spec.duration_s is not None or spec.until_repaired else "close"
        )
        self.instant = self.method == "close"
        self._holder: Any = None

    async def inject(self) -> dict[str, Any]:
        await self.comp.close()
        if self.method == "close":
            return {"storage": "closed"}
        from qdrant_client import QdrantClient

        path = str(cast(_LocalStoreTarget, self.comp).path)
        self._holder = await asyncio.to_thread(QdrantClient, path=path)
        return {"storage": "closed and locked by another client"}

    async def undo(self) -> dict[str, Any]:
        holder, self._holder = self._holder, None
        if holder is not None:
            await asyncio.to_thread(holder.close)
            return {"storage": "lock released"}
        return {}


# -- disk fill ------------------------------------------------------------------------------


class DiskFill(Injector):
    """A scratch file in the night dir sized to push free disk under the threshold."""

    mechanism = "disk_fill"

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.path: Path | None = None

    def _fill(self, path: Path) -> int:
        threshold_gb = cast(_DiskTarget, self.comp).min_free_disk_gb
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


MECHANISMS: dict[str, type[Injector]] = {
    "sandbox_switch": SandboxSwitch,
    "http_layer": HttpLayer,
    "tcp_proxy": ProxyFault,
    "postgresql": PostgresFault,
    "qdrant_local": QdrantLocalFault,
    "disk_fill": DiskFill,
}


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


def _pg_params(comp: Component) -> dict[str, str]:
    """The libpq parameters the database component's driver gets from its URL: SQLAlchemy's
    psycopg dialect, multi-host query forms included, turned into a conninfo as psycopg does."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
    from sqlalchemy.engine import make_url

    url = make_url(cast(_PostgresTarget, comp).url)
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

    if comp.type_name == "database":
        if getattr(comp, "dialect", "") != "postgresql":
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
    """The mechanism for ``spec`` on ``comp``; ValueError says why there is none."""
    kind, tname, method = spec.kind, comp.type_name, spec.params.get("method")
    proxied = bool(getattr(comp, "fault_proxy", False))
    if method == "proxy" or (method is None and proxied and kind in PROXY_KINDS):
        if not proxied:
            raise ValueError(f"method 'proxy' needs fault_proxy = true on [components.{comp.name}]")
        if kind not in PROXY_KINDS:
            raise ValueError(f"the TCP proxy makes {', '.join(PROXY_KINDS)}, not {kind}")
        return "tcp_proxy"
    if tname in ("llm", "websearch"):
        if getattr(comp, "replay", None) is not None:
            raise ValueError("this component replays recorded results; there is no connection to break")
        if kind not in HTTP_KINDS:
            raise ValueError(f"an HTTP API gets {', '.join(HTTP_KINDS)}, not {kind}")
        sandbox = bool(getattr(comp, "sandbox", False))
        if method in (None, "switch") and sandbox:
            return "sandbox_switch"
        if method == "switch":
            raise ValueError("method 'switch' needs sandbox = true on the component")
        if method not in (None, "http"):
            raise ValueError(f"method {method!r}: expected 'switch', 'http' or 'proxy'")
        return "http_layer"
    if tname == "database":
        if getattr(comp, "dialect", "") != "postgresql":
            raise ValueError("database faults need a PostgreSQL url (SQLite has no connection to break)")
        if kind == "connection_lost" and method in (None, "terminate"):
            return "postgresql"
        if kind == "unavailable" and method in (None, "revoke", "stop"):
            if method == "stop":
                if not settings.allow_service_control:
                    raise ValueError("method 'stop' needs allow_service_control = true in [faults]")
                if not spec.params.get("stop_command") or not spec.params.get("start_command"):
                    raise ValueError("method 'stop' needs stop_command and start_command")
            return "postgresql"
        raise ValueError(
            f"PostgreSQL faults are connection_lost (terminate) and unavailable (revoke, stop), not {kind}"
            + (f" with method {method!r}" if method else "")
        )
    if tname == "vectorstore":
        if getattr(comp, "url", None):
            raise ValueError("a Qdrant server is broken through the TCP proxy: set fault_proxy = true")
        if kind != "unavailable" or method not in (None, "close", "lock"):
            raise ValueError("Qdrant local mode gets unavailable (method 'close' or 'lock')")
        return "qdrant_local"
    if tname == "system":
        if kind != "resource_low":
            raise ValueError(f"the system component gets resource_low (a disk fill), not {kind}")
        return "disk_fill"
    raise ValueError(f"no injector for {tname} components; set fault_proxy = true for TCP-level faults")


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
            networked = mechanism in ("http_layer", "tcp_proxy", "postgresql")
            stop = spec.params.get("method") == "stop"
            endpoints: list[Endpoint] = []
            if networked or stop:
                try:
                    endpoints = endpoints_of(comp)
                except ValueError as exc:
                    raise ValueError(f"{comp.name}: cannot tell where it connects ({exc})") from None
            away = [str(e) for e in endpoints if not e.at_home(settings)]
            if networked and away:
                raise ValueError(
                    f"{comp.name} talks to {', '.join(away)}: faults stay on loopback or "
                    "the project's test hosts ([faults] allowed_hosts)"
                )
            revoke = spec.kind == "unavailable" and spec.params.get("method") in (None, "revoke")
            if (
                mechanism == "postgresql"
                and revoke
                and _admin_conninfo(comp).get("dbname") in (None, "postgres")
            ):
                raise ValueError("connect cannot be revoked on the maintenance database 'postgres'")
            if stop and not all(e.local for e in endpoints):
                raise ValueError("method 'stop' stops a local server only (the url is not loopback)")
            # Constructing an injector has no side effect; it knows whether it is one action.
            instant = MECHANISMS[mechanism](spec, comp, _NO_ENV).instant
            lasting = spec.duration_s is not None or spec.until_repaired
            if instant and lasting:
                raise ValueError(f"{spec.kind} here is a single action; drop duration/until")
            if not instant and not lasting and spec.kind not in ("rate_limited", "quota_exceeded"):
                raise ValueError("say how long: duration=30s or until=repaired")
            if spec.every_s is not None and (default_duration(spec) or 0) >= spec.every_s:
                raise ValueError("it must end before its next occurrence: shorten duration or lengthen every")
            if mechanism == "disk_fill" and cast(_DiskTarget, comp).min_free_disk_gb <= 0:
                raise ValueError("the system component has no free-disk threshold to trip")
        except ValueError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from None
        out[spec.id] = mechanism
    return out


_NO_ENV = InjectEnv(Path("."), FaultsSettings(), {})


def make(spec: FaultSpec, comp: Component, mechanism: str, env: InjectEnv) -> Injector:
    return MECHANISMS[mechanism](spec, comp, env)


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
