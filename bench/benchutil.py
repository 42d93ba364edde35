"""What every benchmark script shares: the machine it ran on, and how its results are saved
(JSON plus the same figures as a Markdown table next to it)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    """Cores, memory, system and Python, and the one-line summary BENCHMARKS.md quotes."""
    mem = psutil.virtual_memory().total / 1024**3
    system = f"{platform.system()} {platform.release()}"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "system": system,
        "python": platform.python_version(),
        "summary": f"{os.cpu_count()} cores, {mem:.0f} GiB, {system}, Python {platform.python_version()}",
    }


def save(out: Path, result: dict[str, Any], table: str) -> None:
    """``out`` (JSON) and ``out`` with ``.md`` (the table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(table.rstrip("\n") + "\n", encoding="utf-8")


# -- a throwaway PostgreSQL cluster -----------------------------------------------------
# Benchmarks never touch a cluster they did not create: a contributor's machine may run a
# real database next to them.


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _shq(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """``pg_createcluster`` on a free port, dropped by ``close`` (only if created here)."""

    ROLE = "ovtbench"

    def __init__(self, password: str) -> None:
        self.password = password
        self.version = ""
        self.name = ""
        self.port = 0
        self.created = False

    @staticmethod
    def unavailable() -> str | None:
        for tool in ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters", "su"):
            if not shutil.which(tool):
                return f"{tool} not found"
        if os.geteuid() != 0:
            return "not root (su postgres is needed)"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed"
        return None

    def _psql(self, sql: str, db: str = "postgres") -> str:
        res = run(
            ["su", "postgres", "-c", f"psql -p {self.port} -d {db} -v ON_ERROR_STOP=1 -qAtc {_shq(sql)}"]
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql on port {self.port}: {res.stderr.strip()}")
        return res.stdout

    def start(self) -> None:
        versions = sorted(
            (p.name for p in Path("/usr/lib/postgresql").glob("*") if (p / "bin" / "postgres").exists()),
            key=lambda v: [int(x) for x in v.split(".") if x.isdigit()],
        )
        if not versions:
            raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql")
        self.version = versions[-1]
        existing = {line.split()[1] for line in run(["pg_lsclusters", "--no-header"]).stdout.splitlines()}
        self.name = f"ovtbench_{os.getpid()}"
        if self.name in existing:
            raise RuntimeError(f"a cluster {self.version}/{self.name} already exists; not touching it")
        self.port = free_port()
        res = run(["pg_createcluster", self.version, self.name, "-p", str(self.port)])
        if res.returncode != 0:
            raise RuntimeError(f"pg_createcluster: {res.stderr.strip()}")
        self.created = True
        res = run(["pg_ctlcluster", self.version, self.name, "start"])
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctlcluster start: {res.stderr.strip()}")
        for _ in range(200):
            if run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"cluster {self.version}/{self.name} did not become ready")
        self._psql(f"CREATE ROLE {self.ROLE} LOGIN SUPERUSER PASSWORD '{self.password}'")
        log(f"PostgreSQL: created cluster {self.version}/{self.name} on port {self.port}")

    def url(self, db: str) -> str:
        return f"postgresql://{self.ROLE}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_db(self, db: str) -> str:
        self._psql(f'CREATE DATABASE "{db}"')
        return self.url(db)

    def drop_db(self, db: str) -> None:
        with contextlib.suppress(Exception):
            self._psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def dump(self, db: str) -> bytes:
        res = subprocess.run(
            ["su", "postgres", "-c", f"pg_dump -p {self.port} -d {db}"],
            capture_output=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"pg_dump {db}: {res.stderr.decode(errors='replace').strip()}")
        return res.stdout

    def close(self) -> None:
        if self.created:
            res = run(["pg_dropcluster", "--stop", self.version, self.name])
            if res.returncode != 0:
                log(f"PostgreSQL: pg_dropcluster {self.version} {self.name} failed: {res.stderr.strip()}")
            else:
                log(f"PostgreSQL: dropped cluster {self.version}/{self.name}")
            self.created = False


def throwaway_pg_admin_url() -> str:
    """A superuser URL of a cluster made for this run (``Cluster``), dropped at exit.
    Needs root (``su postgres``); exits with one line when it cannot."""
    import secrets

    why = Cluster.unavailable()
    if why:
        name = Path(sys.argv[0]).name
        sys.exit(f"{name}: cannot make a throwaway PostgreSQL cluster ({why}); give --pg-url")
    cluster = Cluster(password=f"ovb{secrets.token_hex(12)}")
    atexit.register(cluster.close)
    # SIGTERM (a timeout, a cancelled job) would skip atexit and leave the cluster behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.close()
        sys.exit(f"{Path(sys.argv[0]).name}: {exc}")
    return cluster.url("postgres")
