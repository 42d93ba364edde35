"""The PostgreSQL injector (``postgresql``): terminate the night's backends, revoke
connect, or stop the local server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ...components import Component, SqlDatabase
from ...redaction import redact
from ..plan import FaultSpec
from .base import Endpoint, FaultsSettings, InjectEnv, Injector, _pg_params

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
