"""Shared fixtures: real ledgers (SQLite files, PostgreSQL databases) and scenario folders.

PostgreSQL: the fixture starts the local cluster with the Debian cluster tools if it is
down, creates a test role once, and gives each test its own database. Set
OVERNIGHT_TEST_PG_URL to use another server instead (a superuser URL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ROLE = "overnight_test"
PG_PASSWORD = "overnight-test-pw"
REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def _local_cluster() -> tuple[str, str, int, str] | None:
    if not shutil.which("pg_lsclusters"):
        return None
    out = _run(["pg_lsclusters", "--no-header"]).stdout.strip().splitlines()
    if not out:
        return None
    ver, name, port, status = out[0].split()[:4]
    return ver, name, int(port), status


def _as_postgres(sql: str) -> None:
    res = _run(["su", "postgres", "-c", f"psql -v ON_ERROR_STOP=1 -qc {_shq(sql)}"])
    if res.returncode != 0:
        raise RuntimeError(f"psql failed: {res.stderr.strip()}")


def _shq(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A superuser URL of a running PostgreSQL (started here if it was down)."""
    url = os.environ.get("OVERNIGHT_TEST_PG_URL")
    if url:
        return url
    cluster = _local_cluster()
    if cluster is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have PostgreSQL: no local cluster found (pg_lsclusters)")
        pytest.skip("PostgreSQL is not installed here (no pg_lsclusters / cluster)")
    ver, name, port, status = cluster
    if status != "online":
        res = _run(["pg_ctlcluster", ver, name, "start"])
        if res.returncode != 0:
            raise RuntimeError(f"could not start PostgreSQL {ver}/{name}: {res.stderr.strip()}")
    for _ in range(100):
        if _run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0:
            break
        time.sleep(0.1)
    _as_postgres(
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_ROLE}') THEN "
        f"CREATE ROLE {PG_ROLE} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'; END IF; END$$;"
    )
    return f"postgresql://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{port}/postgres"


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    db = f"ovt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{db}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every ledger test runs on both back ends, through the same code path."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger" / "overnight.db")
    return request.getfixturevalue("pg_url")


def make_project(folder: Path, scenario_code: str, config: str = "", name: str = "scenario") -> Path:
    """Write ``<name>.py`` and an ``overnight.toml`` pointing at ``<name>:cycle``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(scenario_code))
    toml = f'scenario = "{name}:cycle"\n' + textwrap.dedent(config)
    (folder / "overnight.toml").write_text(toml)
    return folder


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m overnight ARGS`` as a real subprocess, no terminal."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "overnight", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
