"""The database and system components against real servers: PostgreSQL 15 on loopback and
SQLite files. Their classifiers are tested on the errors those servers really give."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from overnight.components import ComponentSpec
from overnight.components.database import DatabaseComponent
from overnight.components.system import SystemComponent
from overnight.errors import ConfigError, InfraError


def _db(tmp_path: Path, **options: object) -> DatabaseComponent:
    return DatabaseComponent(ComponentSpec("db", dict(options), tmp_path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "app.sqlite3")
    return request.getfixturevalue("pg_url")


async def test_handle_round_trip_and_probe(tmp_path: Path, db_url: str) -> None:
    comp = _db(tmp_path, url=db_url)
    await comp.connect()
    try:
        db = comp.handle
        await db.execute(
            "CREATE TABLE anketa (night TEXT, cycle INTEGER, body TEXT, PRIMARY KEY (night, cycle))"
        )
        await db.execute(
            "INSERT INTO anketa VALUES (:n, :c, :b)",
            [{"n": "night-1", "c": 1, "b": "x"}, {"n": "night-1", "c": 2, "b": "y"}],
        )
        rows = await db.fetch_all("SELECT cycle, body FROM anketa ORDER BY cycle")
        assert rows == [{"cycle": 1, "body": "x"}, {"cycle": 2, "body": "y"}]
        probe = await comp.probe()
        assert probe.healthy and probe.latency_s < 5 and probe.detail == "SELECT 1"
        # A duplicate key is the product's (or scenario's) problem, never an infra error.
        with pytest.raises(Exception) as info:
            await db.execute("INSERT INTO anketa VALUES ('night-1', 1, 'dup')")
        assert not isinstance(info.value, InfraError)
    finally:
        await comp.close()


async def test_terminated_backend_is_connection_lost_and_rebuild_repairs(tmp_path: Path, pg_url: str) -> None:
    comp = _db(tmp_path, url=pg_url, pool_size=2)
    faults: list[str] = []
    comp.on_error(lambda _c, kind, _e: faults.append(kind))
    await comp.connect()
    db = comp.handle
    with pytest.raises(InfraError) as info:
        async with db.transaction() as conn:
            pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await conn.exec_driver_sql("SELECT 1")
    info_exc = info.value
    assert info_exc.component == "db" and info_exc.kind == "connection_lost"
    assert faults == ["connection_lost"]
    await comp.rebuild_pool()
    assert (await comp.probe()).healthy
    assert await db.fetch_one("SELECT 1 AS one") == {"one": 1}
    await comp.close()


async def test_refused_port_is_unavailable(tmp_path: Path) -> None:
    comp = _db(tmp_path, url=f"postgresql://nobody:pw@127.0.0.1:{_free_port()}/x", connect_timeout=2)
    await comp.connect()
    try:
        probe = await comp.probe()
        assert not probe.healthy and probe.fault_kind == "unavailable", probe
        with pytest.raises(InfraError) as info:
            await comp.handle.fetch_all("SELECT 1")
        assert info.value.kind == "unavailable"
        assert "pw@" not in str(info.value)
    finally:
        await comp.close()


async def test_bad_password_is_auth_expired(tmp_path: Path, pg_url: str) -> None:
    # A role of its own with a known password: the admin URL's own password (any
    # OVERNIGHT_TEST_PG_URL's) is nothing this test can rely on.
    role = f"ovt_pw_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    bad = make_url(pg_url).set(username=role, password="wrong-password").render_as_string(hide_password=False)
    comp = _db(tmp_path, url=bad)
    try:
        try:
            psycopg.connect(bad, connect_timeout=10).close()
        except psycopg.OperationalError:
            pass
        else:
            pytest.skip("this server does not check passwords from this host (trust auth in pg_hba.conf)")
        await comp.connect()
        probe = await comp.probe()
        assert not probe.healthy and probe.fault_kind == "auth_expired", probe
        assert "wrong-password" not in probe.detail
    finally:
        await comp.close()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


async def test_statement_timeout_is_timeout(tmp_path: Path, pg_url: str) -> None:
    comp = _db(tmp_path, url=pg_url)
    await comp.connect()
    try:
        with pytest.raises(InfraError) as info:
            async with comp.handle.transaction() as conn:
                await conn.exec_driver_sql("SET LOCAL statement_timeout = 50")
                await conn.exec_driver_sql("SELECT pg_sleep(2)")
        assert info.value.kind == "timeout"
    finally:
        await comp.close()


async def test_connections_revoked_are_unavailable(tmp_path: Path, pg_url: str, pg_admin_url: str) -> None:
    db_name = pg_url.rsplit("/", 1)[1]
    comp = _db(tmp_path, url=pg_url)
    await comp.connect()
    try:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db_name,)
            )
        await comp.rebuild_pool()
        probe = await comp.probe()
        assert not probe.healthy and probe.fault_kind == "unavailable", probe
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true')
        await comp.close()


async def test_sqlite_in_a_missing_folder_is_unavailable(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "app.sqlite3"
    comp = _db(tmp_path, url=str(target))
    await comp.connect()  # creates the folder
    (target.parent / "app.sqlite3").unlink()
    for extra in target.parent.iterdir():
        extra.unlink()
    target.parent.rmdir()
    await comp.rebuild_pool()
    probe = await comp.probe()
    assert not probe.healthy and probe.fault_kind == "unavailable", probe
    await comp.close()


def test_unknown_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"components\.db\.pool_sise: unknown option"):
        _db(tmp_path, pool_sise=3)
    with pytest.raises(ConfigError, match="unsupported database"):
        _db(tmp_path, url="mysql://x@h/db")


async def test_system_probe_measures_and_trips_thresholds(tmp_path: Path) -> None:
    ok = SystemComponent(
        ComponentSpec("system", {"min_free_disk_gb": 0.001, "min_available_memory_gb": 0.001}, tmp_path)
    )
    probe = await ok.probe()
    assert probe.healthy and "free disk" in probe.detail
    status = await ok.handle.check()
    assert status.free_disk_gb > 0 and status.available_memory_gb > 0
    low = SystemComponent(ComponentSpec("system", {"min_free_disk_gb": 10**9}, tmp_path))
    probe = await low.probe()
    assert not probe.healthy and probe.fault_kind == "resource_low" and "free disk" in probe.detail
