"""The ``database`` component: SQLite (embedded default) or PostgreSQL, async and pooled.

Config::

    [components.db]
    type = "database"
    url = "postgresql://app:${DB_PASSWORD}@127.0.0.1:5432/app"   # default: SQLite in the night dir
    pool_size = 5                 # 1..512
    connect_timeout = 10          # knob, seconds (1..60)
    probe_timeout = 5             # seconds for the probe's SELECT 1 (the agent's bounds)
    restart_command = "pg_ctlcluster 15 main restart"   # optional, used by the repair agent

The handle offers ``execute``, ``fetch_all``, ``fetch_one`` and ``transaction()``; every
driver error is classified (refused → unavailable, terminated backend → connection_lost,
statement or pool timeout → timeout, bad password → auth_expired).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..config import AgentConfig
from ..errors import ConfigError
from .base import (
    Component,
    ComponentSpec,
    Knob,
    NonEmptyStr,
    OptionError,
    Options,
    ProbeResult,
    classify_common,
    describe_error,
)
from .options import not_both

_LOST = (
    "terminating connection",
    "server closed the connection",
    "connection is closed",
    "connection was closed",
    "connection already closed",
    "the connection is lost",
    "consuming input failed",
    "ssl syscall",
    "connection reset",
    "broken pipe",
    "eof detected",
)
_UNAVAILABLE = (
    "connection refused",
    "could not connect",
    "connection failed",
    "is not accepting connections",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "no such host",
    "name or service not known",
    "too many connections",
    "remaining connection slots",
    "unable to open database file",
    "database is locked",
    "does not allow connections",
    "not currently accepting connections",
    "permission denied for database",
)
_TIMEOUT = ("timeout", "timed out", "canceling statement due to")
_AUTH = ("password authentication failed", "authentication failed", "no pg_hba.conf entry")


# The engine is async: the drivers to_async_url leads to, and nothing else.
_ASYNC_DRIVERS = {"sqlite": ("aiosqlite",), "postgresql": ("psycopg", "psycopg_async")}


def to_async_url(url: str) -> str:
    """``postgresql://`` → psycopg async; a path or ``sqlite:///`` → aiosqlite."""
    if "://" not in url:
        return "sqlite+aiosqlite:///" + str(Path(url).expanduser().resolve())
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg"):
        return "postgresql+psycopg://" + rest
    if scheme == "sqlite":
        return "sqlite+aiosqlite://" + rest
    return url


class DatabaseOptions(Options):
    url: NonEmptyStr | None = None
    dsn: NonEmptyStr | None = None  # another name for url
    # Beyond 512 (the most cycles run at once) a pool only exhausts the server's slots.
    pool_size: int = Field(5, ge=1, le=512)
    connect_timeout: float = Field(10.0, ge=1, le=60)  # the knob's bounds
    # Also the agent's per-component key, so the same bounds as [agent] probe_timeout.
    probe_timeout: Annotated[float, AgentConfig.model_fields["probe_timeout"]]
    restart_command: NonEmptyStr | None = None

    @field_validator("dsn")
    @classmethod
    def _one_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return not_both(value, info, "url")


class DatabaseHandle:
    """What the scenario calls: ``ctx.components["db"]``."""

    def __init__(self, component: DatabaseComponent) -> None:
        self._c = component

    @property
    def dialect(self) -> str:
        return self._c.dialect

    async def execute(
        self, sql: str, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """Run one statement (or one per params row) in its own transaction; rowcount."""

        async def run() -> int:
            async with self._c.engine.begin() as conn:
                result = await conn.execute(text(sql), params or {})
                return result.rowcount

        return await self._c.call("execute", run)

    async def fetch_all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            async with self._c.engine.connect() as conn:
                result = await conn.execute(text(sql), params or {})
                return [dict(r._mapping) for r in result]

        return await self._c.call("fetch_all", run)

    async def fetch_one(self, sql: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """``async with db.transaction() as conn: await conn.execute(text(...))``.

        Driver errors raised inside the block are classified like any other call; the
        scenario's own exceptions pass through untouched.
        """
        try:
            async with self._c.engine.begin() as conn:
                yield conn
        except Exception as exc:
            kind = self._c.classify(exc)
            if kind is None:
                raise
            self._c.report_fault(kind, exc, "transaction")
            from ..errors import InfraError

            raise InfraError(self._c.name, kind, f"transaction: {describe_error(exc)}") from exc


class DatabaseComponent(Component):
    type_name = "database"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(DatabaseOptions)
        key = "dsn" if opts.dsn is not None else "url"
        url = opts.url or opts.dsn
        if url is None:
            url = str(spec.night_dir / f"{spec.name}.sqlite3")
        elif "://" not in url and not Path(url).expanduser().is_absolute():
            url = str(spec.resolve(url))  # a relative SQLite path: the config's folder
        try:
            self.url = to_async_url(url)
            parsed = make_url(self.url)
            port = parsed.port
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            raise OptionError(self.name, key, f"not a database URL: {exc}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise OptionError(self.name, key, f"unsupported database {self.dialect!r} (sqlite or postgresql)")
        if parsed.get_driver_name() not in _ASYNC_DRIVERS[self.dialect]:
            driver = parsed.get_driver_name()
            raise OptionError(self.name, key, f"unsupported driver {driver!r} (use {self.dialect}://…)")
        if port is not None and not 1 <= port <= 65535:
            raise OptionError(self.name, key, f"port {port} is not between 1 and 65535")
        self.pool_size = opts.pool_size
        self.restart_command = opts.restart_command
        self.probe_timeout = opts.probe_timeout
        timeout = opts.connect_timeout
        self.knobs.declare(Knob("connect_timeout", timeout, minimum=1, maximum=60, unit="s"))
        self._engine: AsyncEngine | None = None
        self._created = False
        self._handle = DatabaseHandle(self)

    @property
    def handle(self) -> DatabaseHandle:
        return self._handle

    @property
    def target(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            url = self.url
            if path and path != ":memory:":
                if not self._created:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    self._created = True
                else:
                    # Once created, never again: a database that vanished mid-night must
                    # show as unavailable, not come back silently empty.
                    url = f"sqlite+aiosqlite:///file:{path}?mode=rw&uri=true"
            return create_async_engine(url, connect_args={"timeout": self.knobs.get("connect_timeout")})
        engine = create_async_engine(
            self.url,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_pre_ping=True,
            pool_timeout=30,
            connect_args={
                "connect_timeout": int(self.knobs.get("connect_timeout")),
                "application_name": self.application_name,
            },
        )
        event.listen(engine.sync_engine, "handle_error", self._on_driver_error)
        return engine

    @property
    def application_name(self) -> str:
        """How this process's connections show in pg_stat_activity (faults terminate them)."""
        return f"overnight-{os.getpid()}-{self.name}"[:63]

    def _on_driver_error(self, context: Any) -> None:
        # Pre-ping finds a connection the server dropped and quietly reconnects: the cycle
        # never sees it, but the connection *was* lost. Tell the agent, which verifies the
        # pool with a probe (a transient incident when the reconnect held).
        if context.is_pre_ping and context.is_disconnect:
            exc = context.original_exception
            self.report_fault("connection_lost", exc, "pre_ping")

    def tcp_endpoint(self) -> tuple[str, int]:
        if self.dialect != "postgresql":
            raise ConfigError(f"components.{self.name}: fault_proxy: SQLite has no TCP endpoint")
        url = make_url(self.url)
        return url.host or "127.0.0.1", url.port or 5432

    def route_via(self, host: str, port: int) -> None:
        self.url = make_url(self.url).set(host=host, port=port).render_as_string(hide_password=False)

    def connection(self) -> dict[str, Any]:
        """``url`` for a client of the test's own (``sqlite:///PATH`` or
        ``postgresql://user:password@host:port/db``, through the fault proxy when there is
        one), and its parts."""
        url = make_url(self.url)
        if self.dialect == "sqlite":
            return {"dialect": "sqlite", "path": url.database, "url": f"sqlite:///{url.database}"}
        host, port = url.host or "127.0.0.1", url.port or 5432
        return {
            "dialect": "postgresql",
            "url": url.set(drivername="postgresql", host=host, port=port).render_as_string(
                hide_password=False
            ),
            "host": host,
            "port": port,
            "database": url.database,
            "user": url.username,
            "password": url.password,
        }

    async def connect(self) -> None:
        self._engine = self._make_engine()
        if self.dialect == "sqlite":
            async with self._engine.begin() as conn:
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def rebuild_pool(self) -> None:
        """Dispose of every pooled connection and build a fresh engine."""
        await self.close()
        self._engine = self._make_engine()

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.probe_timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            kind = self.classify(exc) or "unavailable"
            return ProbeResult(False, time.perf_counter() - t0, kind, describe_error(exc))
        return ProbeResult(True, time.perf_counter() - t0, None, "SELECT 1")

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, PoolTimeout):
            return "timeout"
        if isinstance(exc, DBAPIError):
            message = str(exc.orig if exc.orig is not None else exc).lower()
            if exc.connection_invalidated:
                return "connection_lost"
            kind = _by_message(message)
            if kind is not None:
                return kind
            # Integrity, syntax and data errors are the product's (or the scenario's).
            return None
        try:
            import psycopg
        except ImportError:  # pragma: no cover
            pass
        else:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return _by_message(str(exc).lower()) or "connection_lost"
        kind = classify_common(exc)
        if kind is not None:
            return kind
        if isinstance(exc, OSError):
            return _by_message(str(exc).lower())
        return None


def _by_message(message: str) -> str | None:
    if any(m in message for m in _AUTH):
        return "auth_expired"
    if any(m in message for m in _LOST):
        return "connection_lost"
    if any(m in message for m in _UNAVAILABLE):
        return "unavailable"
    if any(m in message for m in _TIMEOUT):
        return "timeout"
    return None
