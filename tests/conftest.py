"""Shared fixtures: real ledgers (SQLite files, PostgreSQL databases) and scenario folders.

PostgreSQL: the session makes its own throwaway cluster with Debian's cluster tools
(``pg_createcluster`` on a free loopback port, password auth), and drops it at the end; no
test ever starts, stops or changes a cluster it did not create. Each test gets a database
of its own. OVERNIGHT_TEST_PG_URL (a superuser URL of an existing server) is used instead
for the tests that leave the server running; a test that stops or restarts a server always
gets the throwaway cluster (``pg_cluster``, ``pg_cluster_url``).
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from .support import zygote
from .support.projects import make_project as make_project  # tests import it from here

PG_ROLE = "overnight_test"
REPO = Path(__file__).resolve().parent.parent
_PG_BIN_ROOT = Path("/usr/lib/postgresql")
_CLUSTER_TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "psql")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_version() -> str | None:
    """The newest installed PostgreSQL server (what ``pg_virtualenv`` picks too)."""
    found = [p.parent.parent.name for p in _PG_BIN_ROOT.glob("*/bin/pg_ctl")]
    keyed = [(tuple(int(x) for x in v.split(".")), v) for v in found if v.replace(".", "").isdigit()]
    return max(keyed)[1] if keyed else None


def cluster_tools_missing() -> str | None:
    """Why this machine cannot make a throwaway cluster, or None if it can."""
    missing = [tool for tool in _CLUSTER_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"PostgreSQL's cluster tools are not installed ({', '.join(missing)} not found)"
    if _server_version() is None:
        return f"no PostgreSQL server is installed (no {_PG_BIN_ROOT}/*/bin/pg_ctl)"
    return None


@dataclass
class PgCluster:
    """A PostgreSQL cluster this test session created, and the only one it may stop or start."""

    version: str
    name: str
    port: int
    admin_url: str = field(repr=False)
    # Extra environment the cluster tools need: as a non-root user the cluster lives in a
    # private config root (as pg_virtualenv does it), which every command must name.
    env: dict[str, str] = field(default_factory=dict)

    def command(self, action: str) -> str:
        """A shell command that runs ``pg_ctlcluster ... ACTION`` on this cluster only."""
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items())
        return f"{prefix}pg_ctlcluster {self.version} {self.name} {action}"

    def ctl(self, action: str) -> subprocess.CompletedProcess[str]:
        return _run(
            ["pg_ctlcluster", self.version, self.name, action], env={**os.environ, **self.env}, cwd="/"
        )


class _ThrowawayCluster:
    """Creates a cluster on a free port, and drops it once: at session end, or at exit if
    the session dies before its finalizers run."""

    def __init__(self) -> None:
        version = _server_version()
        assert version is not None
        self.version = version
        self.name = f"ovt_{os.getpid()}_{secrets.token_hex(3)}"
        self.root = os.geteuid() == 0
        self.work: Path | None = None
        self.env: dict[str, str] = {}
        self.created = False

    def _tool(self, cmd: list[str], what: str, stdin: str | None = None) -> None:
        res = _run(cmd, env={**os.environ, **self.env}, cwd="/", input=stdin)
        if res.returncode != 0:
            raise RuntimeError(f"{what} failed for cluster {self.version}/{self.name}: {res.stderr.strip()}")

    def create(self) -> PgCluster:
        port = _free_port()
        extra: list[str] = []
        if not self.root:
            self.work = Path(tempfile.mkdtemp(prefix="ovt-pg-"))
            self.env = {"PG_CLUSTER_CONF_ROOT": str(self.work / "etc")}
            extra = ["-d", str(self.work / "data"), "-l", str(self.work / "server.log")]
            extra += ["-s", str(self.work / "socket")]
        initdb = ["--auth-local=peer", "--auth-host=scram-sha-256", "--nosync"]
        # Marked created first: a pg_createcluster that fails half-way is dropped as well.
        self.created = True
        atexit.register(self._drop_at_exit)
        self._tool(
            ["pg_createcluster", "--quiet", "-p", str(port), *extra, self.version, self.name, "--", *initdb],
            "pg_createcluster",
        )
        conf_root = Path(self.env.get("PG_CLUSTER_CONF_ROOT", "/etc/postgresql"))
        # Appended to the cluster's own postgresql.conf (pg_dropcluster removes it; a file in
        # conf.d would be left behind). The last setting wins.
        with open(conf_root / self.version / self.name / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# overnight's test session: loopback only; no fsync (a throwaway cluster)\n"
                "listen_addresses = '127.0.0.1'\nfsync = off\n"
            )
        self._tool(["pg_ctlcluster", self.version, self.name, "start"], "pg_ctlcluster start")
        password = secrets.token_hex(16)
        # The SQL goes through stdin, so the password is never in a process's arguments.
        sql = f"CREATE ROLE {PG_ROLE} LOGIN SUPERUSER PASSWORD '{password}';"
        psql = f"psql -X -q -v ON_ERROR_STOP=1 -p {port} -d postgres"
        if self.root:  # the cluster's owner is postgres, who is peer-authenticated on the socket
            self._tool(["su", "postgres", "-c", psql], "creating the test role", stdin=sql)
        else:
            assert self.work is not None
            socket_dir = str(self.work / "socket")
            self._tool([*shlex.split(psql), "-h", socket_dir], "creating the test role", stdin=sql)
        url = f"postgresql://{PG_ROLE}:{password}@127.0.0.1:{port}/postgres"
        return PgCluster(self.version, self.name, port, url, dict(self.env))

    def drop(self) -> None:
        try:
            if self.created:
                self.created = False
                self._tool(["pg_dropcluster", "--stop", self.version, self.name], "pg_dropcluster")
        finally:
            atexit.unregister(self._drop_at_exit)
            if self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)
                self.work = None

    def _drop_at_exit(self) -> None:
        try:
            self.drop()
        except Exception as exc:  # at exit there is no test to fail: say what was left behind
            print(f"overnight tests: {exc}", file=sys.stderr)


_ORPHAN = re.compile(r"ovt_(\d+)_[0-9a-f]{6}")


def _name_orphans(version: str) -> None:
    """Say which clusters look left behind by an earlier test session that was SIGKILLed
    (named ``ovt_<its pid>_<hex>``, that pid gone), with the command that drops each. The
    session does not drop them itself: it never touches a cluster it did not create."""
    res = _run(["pg_lsclusters", "--no-header"], env=dict(os.environ), cwd="/")
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != version:
            continue
        m = _ORPHAN.fullmatch(fields[1])
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its session still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        # A warning, so pytest shows it in its summary (a print here would be captured).
        warnings.warn(
            f"cluster {version}/{fields[1]} looks left behind by a killed test session; "
            f"drop it with: pg_dropcluster --stop {version} {fields[1]}",
            stacklevel=1,
        )


def _no_postgres(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must have PostgreSQL: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This session's own PostgreSQL cluster, made on first use and dropped at the end."""
    reason = cluster_tools_missing()
    if reason is not None:
        _no_postgres(reason)
    throwaway = _ThrowawayCluster()
    if throwaway.root:
        _name_orphans(throwaway.version)
    # SIGTERM (a CI job cancelled, a terminal closed) would end the process without
    # finalizers or atexit; as an interrupt it ends the session through its teardown.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield throwaway.create()
    finally:
        if signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, previous)
        throwaway.drop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> str:
    """A superuser URL: OVERNIGHT_TEST_PG_URL if set, else this session's throwaway cluster."""
    url = os.environ.get("OVERNIGHT_TEST_PG_URL")
    if url:
        return url
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.admin_url


@contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    db = f"ovt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield make_url(admin_url).set(database=db).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    with _fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def pg_cluster_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database on the throwaway cluster, for a test that stops or restarts its
    server (never on OVERNIGHT_TEST_PG_URL's server). The server is running again after."""
    with _fresh_database(pg_cluster.admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every ledger test runs on both back ends, through the same code path."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger" / "overnight.db")
    return request.getfixturevalue("pg_url")


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m overnight ARGS`` as a real process, no terminal: forked from a warm
    parent that has imported overnight already (tests/support/zygote.py), or a fresh
    interpreter with ``OVERNIGHT_TEST_EXEC=1``."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("COLUMNS", None)
    warm = zygote.zygote()
    if warm is not None:
        return warm.run(args, cwd, full_env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "overnight", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# The postgres mark follows the fixtures, so no test has to remember it (a label: it skips
# nothing). Fixtures that pick PostgreSQL by parameter mark that parameter instead.
_PG_FIXTURES = frozenset({"pg_cluster", "pg_admin_url", "pg_url", "pg_cluster_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def pytest_unconfigure(config: pytest.Config) -> None:
    zygote.close()
