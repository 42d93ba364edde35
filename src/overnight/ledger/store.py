"""The ledger: the durable record of every night (SQLite by default, PostgreSQL optional).

Writes go through a single writer thread. Callers submit small operations; the thread
runs whatever is queued in one transaction (group commit) and resolves each caller's
future only after COMMIT, so "written before shown" holds without blocking the event
loop and without paying one fsync per event. The same code path serves SQLite and
PostgreSQL: only the URL differs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from ..errors import UsageError
from ..redaction import redact_url
from . import schema

log = logging.getLogger("overnight.ledger")

Op = Callable[..., Any]

# How long the writer keeps retrying a write whose connection failed before it gives
# up and hands the error to the caller. Long enough to ride out a restart of a local
# PostgreSQL, short enough that a dead ledger ends the night with a clear error.
WRITE_RETRY_S = 60.0
_BATCH_MAX = 512


def normalize_url(url_or_path: str) -> str:
    """Accept ``postgresql://…``, ``sqlite:///…`` or a plain file path."""
    text = url_or_path.strip()
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().resolve())
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


class Ledger:
    """Open (and create or upgrade) a ledger; write through the writer thread."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.display_url = redact_url(self.url)
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise UsageError(f"--ledger: not a database URL or path: {self.display_url}") from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise UsageError(
                f"--ledger: unsupported database {self.dialect!r} (use a SQLite path or postgresql://…)"
            )
        if self.dialect == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = _make_engine(self.url, self.dialect)
        try:
            self._init_schema()
        except OperationalError as exc:
            self.engine.dispose()
            raise UsageError(f"ledger {self.display_url}: cannot open: {_first_line(exc)}") from exc
        self._queue: queue.SimpleQueue[tuple[Op, tuple[Any, ...], concurrent.futures.Future] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="overnight-ledger", daemon=True)
        self._thread.start()
        self._closed = False

    # -- schema -----------------------------------------------------------------------

    def _init_schema(self) -> None:
        with self.engine.begin() as conn:
            schema.metadata.create_all(conn)
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(
                    schema.meta.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION))
                )
                return
            version = int(row[0])
            if version > schema.SCHEMA_VERSION:
                raise UsageError(
                    f"ledger {self.display_url} has schema version {version}; this overnight "
                    f"knows up to {schema.SCHEMA_VERSION}: upgrade overnight"
                )
            for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                migrate = schema.MIGRATIONS[target]
                migrate(conn)  # type: ignore[operator]
            if version != schema.SCHEMA_VERSION:
                conn.execute(
                    schema.meta.update()
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )

    # -- writing ----------------------------------------------------------------------

    def submit(self, op: Op, *args: Any) -> concurrent.futures.Future:
        """Queue ``op(conn, *args)``; the future resolves after its transaction commits."""
        if self._closed:
            raise RuntimeError("ledger is closed")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((op, args, fut))
        return fut

    async def write(self, op: Op, *args: Any) -> Any:
        """Run ``op`` in the writer and wait, without blocking the loop, for its commit."""
        return await asyncio.wrap_future(self.submit(op, *args))

    def write_sync(self, op: Op, *args: Any) -> Any:
        """Run ``op`` in the writer and block the calling thread until it is committed."""
        return self.submit(op, *args).result()

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed."""
        self.submit(_noop).result(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch = []
            if item is None:
                stop = True
            else:
                batch.append(item)
            while len(batch) < _BATCH_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Op, tuple[Any, ...], concurrent.futures.Future]]) -> None:
        deadline = time.monotonic() + WRITE_RETRY_S
        delay = 0.1
        while True:
            try:
                results = []
                with self.engine.begin() as conn:
                    for op, args, _fut in batch:
                        results.append(op(conn, *args))
                for (_op, _args, fut), result in zip(batch, results, strict=True):
                    fut.set_result(result)
                return
            except OperationalError as exc:
                # Connection-level trouble (server restarting, SQLite busy): the whole
                # batch rolled back, so it is safe to run it again.
                if time.monotonic() >= deadline:
                    for _op, _args, fut in batch:
                        fut.set_exception(exc)
                    return
                log.warning("ledger write failed (%s); retrying", _first_line(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                if len(batch) == 1:
                    batch[0][2].set_exception(exc)
                    return
                # One bad operation must not take its neighbours down: run them alone.
                for item in batch:
                    self._commit([item])
                return

    # -- reading ----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads. Safe from any thread; sees everything committed."""
        with self.engine.connect() as conn:
            yield conn


def _noop(conn: Connection) -> None:
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    return redact_url(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)


def _make_engine(url: str, dialect: str) -> Engine:
    if dialect == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers (overnight nights/report) never block the writer. NORMAL
            # sync: a committed transaction survives kill -9 of this process; only an
            # OS crash could lose the last few, which the journal then rolls back whole.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=4,
        connect_args={"connect_timeout": 10, "application_name": "overnight-ledger"},
    )
