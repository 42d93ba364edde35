"""One live process per night (promise 4), and one schema creation per ledger.

A night is owned through a lock the operating system or the database server releases
when its holder dies, ``kill -9`` included, so a crashed night can always be resumed and
a live one never twice:

- SQLite ledger: an exclusive ``flock`` on ``.<ledger>.locks/<night-id>.lock`` beside the
  ledger file; the file holds the owner's pid and host so a refusal can name them.
- PostgreSQL ledger: a session-level advisory lock on a connection of its own, held
  while the night runs; the owner is named through ``pg_stat_activity``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NightOwned, UsageError

if TYPE_CHECKING:
    from .store import Ledger

log = logging.getLogger("overnight.ledger")

# Two first runs on a fresh SQLite ledger wait this long for each other's schema.
SCHEMA_WAIT_S = 30.0


def owner_label() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def locks_dir(db_path: Path) -> Path:
    """Hidden, beside the ledger file: ``.overnight.db.locks/``."""
    return db_path.with_name(f".{db_path.name}.locks")


@contextlib.contextmanager
def schema_lock(ledger: Ledger) -> Iterator[None]:
    """Serialise schema creation on a SQLite file (PostgreSQL uses a transaction lock)."""
    if ledger.path is None:
        yield
        return
    folder = locks_dir(ledger.path)
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / "schema.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(
            f"ledger {ledger.path}: cannot create its lock file: {exc.strerror or exc}"
        ) from None
    try:
        deadline = time.monotonic() + SCHEMA_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UsageError(
                        f"ledger {ledger.path}: another process kept it busy for {SCHEMA_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.05)  # polling a lock the OS gives no event for
        yield
    finally:
        os.close(fd)  # closing releases the lock


class NightClaim:
    """Held while a process owns a night; ``release()`` or the holder's death ends it."""

    def __init__(self, night_id: str, release: Any, check: Any = None) -> None:
        self.night_id = night_id
        self._release = release
        self._check = check
        self.released = False

    def check(self) -> str | None:
        """None while the claim holds; otherwise why it was lost (PostgreSQL only: a
        dropped lock connection that could not take the lock back)."""
        return self._check() if self._check is not None and not self.released else None

    def release(self) -> None:
        if not self.released:
            self.released = True
            with contextlib.suppress(Exception):
                self._release()


def claim_night(ledger: Ledger, night_id: str) -> NightClaim:
    if ledger.dialect == "postgresql":
        return _claim_postgresql(ledger, night_id)
    if ledger.path is None:  # an in-memory ledger lives and dies with this process
        return NightClaim(night_id, lambda: None)
    return _claim_file(ledger.path, night_id)


def _claim_file(db_path: Path, night_id: str) -> NightClaim:
    folder = locks_dir(db_path)
    path = folder / f"{night_id}.lock"
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(
            f"ledger {db_path}: cannot create the night's lock file: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UsageError(
                f"ledger {db_path}: cannot lock night {night_id}: {exc.strerror or exc}"
            ) from None
        raise NightOwned(_owned(night_id, holder or "another process")) from None
    label = owner_label().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, label, 0)

    def release() -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    return NightClaim(night_id, release)


def _owned(night_id: str, holder: str) -> str:
    return f"night {night_id} is still running ({holder}); not running it twice"


def _advisory_key(night_id: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"overnight-night:{night_id}".encode()).digest()[:8], "big", signed=True
    )


def _claim_postgresql(ledger: Ledger, night_id: str) -> NightClaim:
    import psycopg

    key = _advisory_key(night_id)
    conninfo = ledger.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    app = f"overnight {owner_label()}"[:63]

    def connect() -> Any:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=10, application_name=app)

    try:
        conn = connect()
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
    except psycopg.Error as exc:
        raise UsageError(
            f"ledger {ledger.display_url}: cannot lock night {night_id}: {_pg_reason(exc)}"
        ) from None
    if not got:
        holder = _pg_holder(conn, key)
        conn.close()
        raise NightOwned(_owned(night_id, holder))
    state = {"conn": conn}

    def release() -> None:
        state["conn"].close()  # the server drops a session's advisory locks with it

    def check() -> str | None:
        try:
            state["conn"].execute("SELECT 1")
            return None
        except psycopg.Error:
            pass
        with contextlib.suppress(Exception):
            state["conn"].close()
        try:
            state["conn"] = connect()
            if state["conn"].execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                log.warning("night %s: the ownership lock's connection dropped; taken again", night_id)
                return None
            return f"night {night_id} was taken over by {_pg_holder(state['conn'], key)}"
        except psycopg.Error as exc:
            return f"the ownership lock of night {night_id} was lost: {_pg_reason(exc)}"

    return NightClaim(night_id, release, check)


def _pg_holder(conn: Any, key: int) -> str:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(
            "SELECT a.application_name, a.client_addr::text, a.pid FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
            "AND l.objsubid = 1",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
    except Exception:
        row = None
    if row and row[0] and row[0].startswith("overnight pid "):
        return str(row[0]).removeprefix("overnight ")
    if row:
        return f"another process (server backend {row[2]}, client {row[1] or 'local'})"
    return "another process"


def _pg_reason(exc: BaseException) -> str:
    from ..redaction import redact

    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__) or type(exc).__name__
