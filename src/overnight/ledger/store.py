"""The ledger: the durable record of every night (SQLite by default, PostgreSQL optional).

Writes go through a single writer thread. Callers submit small operations; the thread
runs whatever is queued in one transaction (group commit) and resolves each caller's
future only after COMMIT, so "written before shown" holds without blocking the event
loop and without paying one fsync per event. The same code path serves SQLite and
PostgreSQL: only the URL differs. Over 400 lines on purpose: the writer thread, its
queue, its failure handling and its bounded waits are one mechanism, read together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from ..errors import LedgerUnavailable, LedgerUnreadable, UsageError
from ..redaction import redact_url, register_secrets_in
from . import schema
from .ownership import NightClaim, claim_night, schema_lock

log = logging.getLogger("overnight.ledger")

Op = Callable[..., Any]


class _LoopWaiter:
    """An event loop's future for one write: the writer settles every such future of a
    batch with one wake-up of its loop (a wake-up per write cost a third of the writer's
    time), and a waiter cancelled meanwhile is left alone."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()


Waiter = concurrent.futures.Future[Any] | _LoopWaiter
Item = tuple[Op, tuple[Any, ...], Waiter]

# How long the writer keeps retrying a write whose connection failed before it gives
# up and hands the error to the caller. Long enough to ride out a restart of a local
# PostgreSQL, short enough that a dead ledger ends the night with a clear error.
WRITE_RETRY_S = 60.0
# The longest any caller waits for one write: the retry window, the batches queued
# before it, and a margin. Reached only if the writer itself misbehaves.
WAIT_BOUND_S = 2 * WRITE_RETRY_S + 30.0
# close() waits this long for the writer to commit what is queued.
CLOSE_TIMEOUT_S = 10.0
_BATCH_MAX = 512


def normalize_url(url_or_path: str) -> str:
    """Accept ``postgresql://…``, ``sqlite:///…`` or a plain file path."""
    text = url_or_path.strip()
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().resolve())
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def parse_ledger_url(url_or_path: str) -> tuple[str, str, URL]:
    """A ledger's URL (normalised), its redacted form for messages, and its parsed form;
    one clear line (exit 2) for what is no SQLite or PostgreSQL URL or path."""
    url = normalize_url(url_or_path)
    register_secrets_in(url)  # a driver's error may show the password decoded
    display = redact_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"--ledger: not a database URL or path: {display}") from exc
    dialect = parsed.get_backend_name()
    if dialect not in ("sqlite", "postgresql"):
        raise UsageError(f"--ledger: unsupported database {dialect!r} (use a SQLite path or postgresql://…)")
    return url, display, parsed


class Ledger:
    """Open (and create or upgrade) a ledger; write through the writer thread.

    ``create=False`` (the reading commands) refuses a database that holds no ledger
    instead of creating one in it.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url, self.display_url, parsed = parse_ledger_url(url)
        self.dialect = parsed.get_backend_name()
        self.path: Path | None = None
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            self.path = Path(parsed.database)
            self.display_url = str(self.path)
            if self.path.is_dir():
                raise UsageError(f"the ledger at {self.path} is not readable: it is a directory")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"ledger {self.path}: cannot create its folder: {_os_reason(exc)}") from None
        self.engine = _make_engine(self.url, self.dialect)
        try:
            with schema_lock(self):
                self._init_schema(create)
        except UsageError:
            self.engine.dispose()
            raise
        except (DBAPIError, OSError) as exc:
            self.engine.dispose()
            reason = _first_line(exc) if isinstance(exc, DBAPIError) else _os_reason(exc)
            raise LedgerUnreadable(f"the ledger at {self.display_url} is not readable: {reason}") from None
        self._broken: LedgerUnavailable | None = None
        self._closing = threading.Event()
        self._claims: list[NightClaim] = []
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._conn: Connection | None = None  # the writer thread's alone
        self._thread = threading.Thread(target=self._run, name="overnight-ledger", daemon=True)
        self._thread.start()
        self._closed = False

    # -- schema -----------------------------------------------------------------------

    def _init_schema(self, create: bool) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Transactional DDL under a lock: two first runs on a fresh database
                # create the schema once, and the second sees it.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            tables = set(inspect(conn).get_table_names())
            ours = set(schema.metadata.tables)
            if "meta" not in tables:
                foreign = sorted(tables & ours) if self.dialect == "postgresql" else sorted(tables)
                if foreign:
                    raise UsageError(
                        f"the ledger at {self.display_url} is not readable: it is not an overnight "
                        f"ledger (it holds other tables: {', '.join(foreign[:5])})"
                    )
                if not create:
                    raise UsageError(f"the ledger at {self.display_url} is not readable: it is empty")
            schema.metadata.create_all(conn)
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(
                    schema.meta.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION))
                )
                return
            try:
                version = int(row[0])
            except ValueError:
                raise UsageError(
                    f"the ledger at {self.display_url} is not readable: bad schema version {row[0]!r}"
                ) from None
            if version > schema.SCHEMA_VERSION:
                raise UsageError(
                    f"ledger {self.display_url} has schema version {version}; this overnight "
                    f"knows up to {schema.SCHEMA_VERSION}: upgrade overnight"
                )
            for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                migrate = schema.MIGRATIONS[target]
                migrate(conn)
            if version != schema.SCHEMA_VERSION:
                conn.execute(
                    schema.meta.update()
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )

    # -- ownership ----------------------------------------------------------------------

    def claim(self, night_id: str) -> NightClaim:
        """Own ``night_id`` for as long as this ledger is open (or until released).

        Raises NightOwned, naming the owner's pid and host, when a live process owns it.
        The OS releases the claim when its process dies, ``kill -9`` included.
        """
        claim = claim_night(self, night_id)
        self._claims.append(claim)
        return claim

    # -- writing ----------------------------------------------------------------------

    def submit(self, op: Op, *args: Any) -> concurrent.futures.Future[Any]:
        """Queue ``op(conn, *args)``; the future resolves after its transaction commits.

        A queued operation runs whether or not anyone still waits for it: cancelling a
        waiter (a cycle timeout, a signal) never removes a record, and never disturbs
        the writer.
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(op, args, fut)
        return fut

    async def write(self, op: Op, *args: Any) -> Any:
        """Run ``op`` in the writer and wait, without blocking the loop, for its commit.

        The wait is bounded: the writer answers every write within its retry window, and
        should it ever fail to, the caller gets LedgerUnavailable instead of a hang.
        Cancelling the wait leaves the write queued: it runs all the same.
        """
        waiter = _LoopWaiter(asyncio.get_running_loop())
        self._put(op, args, waiter)
        try:
            async with asyncio.timeout(WAIT_BOUND_S):
                return await waiter.future
        except TimeoutError:
            raise self._no_answer() from None

    def _put(self, op: Op, args: tuple[Any, ...], waiter: Waiter) -> None:
        if self._closed:
            raise RuntimeError("ledger is closed")
        if self._broken is not None:
            _settle([(op, args, waiter)], error=self._broken)
            return
        self._queue.put((op, args, waiter))

    def write_sync(self, op: Op, *args: Any) -> Any:
        """Run ``op`` in the writer and block the calling thread until it is committed."""
        try:
            return self.submit(op, *args).result(WAIT_BOUND_S)
        except concurrent.futures.TimeoutError:
            raise self._no_answer() from None

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed."""
        self.submit(_noop).result(WAIT_BOUND_S if timeout is None else timeout)

    @property
    def broken(self) -> BaseException | None:
        """Why the ledger takes no more writes, or None while it does."""
        return self._broken

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Commit what is queued, stop the writer and release the connections. Bounded:
        a writer still retrying an unreachable server gets ``timeout`` seconds."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("ledger writer still busy after %.0f s; leaving it", timeout)
        for claim in list(self._claims):
            claim.release()
        self.engine.dispose()

    def _no_answer(self) -> LedgerUnavailable:
        return LedgerUnavailable(
            f"ledger {self.display_url}: the writer gave no answer within {WAIT_BOUND_S:.0f} s"
        )

    def _run(self) -> None:
        """The writer thread. Nothing it meets may end it silently: an error it cannot
        hand to a caller breaks the ledger, and every later write fails at once."""
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
            if not batch:
                continue
            # From here on a waiter's cancel() is a no-op: the write is under way and
            # resolving it later cannot raise (a cancelled one stays cancelled).
            for _op, _args, fut in batch:
                if isinstance(fut, concurrent.futures.Future):
                    fut.set_running_or_notify_cancel()
            try:
                self._commit(batch)
            except BaseException as exc:  # a bug here must not leave waiters hanging
                log.exception("ledger writer failed")
                self._break(LedgerUnavailable(f"ledger {self.display_url}: writer failed: {_describe(exc)}"))
                _settle(batch, error=self._broken)
                self._drop_writer_connection()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()  # back to the pool, which close() disposes of
            self._conn = None

    def _commit(self, batch: list[Item]) -> None:
        if self._broken is not None:
            _settle(batch, error=self._broken)
            return
        results, error = self._transact(batch)
        if error is None:
            _settle(batch, results=results)
        elif isinstance(error, LedgerUnavailable) or len(batch) == 1:
            _settle(batch, error=error)
        else:
            # One bad operation must not take its neighbours down. The batch's
            # transaction rolled back whole, so running each alone repeats nothing.
            for item in batch:
                self._commit([item])

    def _transact(self, batch: list[Item]) -> tuple[list[Any] | None, BaseException | None]:
        """Run ``batch`` in one transaction: (results, None) once committed, or
        (None, error) with nothing of it committed. Connection trouble is retried
        within WRITE_RETRY_S; a full or broken store, or a retry window run out, breaks
        the ledger."""
        deadline = time.monotonic() + WRITE_RETRY_S
        delay = 0.1
        first_try = True
        while True:
            try:
                conn = self._writer_connection()
                with conn.begin():
                    results = [op(conn, *args) for op, args, _fut in batch]
                return results, None
            except DBAPIError as exc:
                if not isinstance(exc, OperationalError) and not _storage_failure(exc):
                    return None, exc  # this batch's own fault (a constraint, a bug)
                self._drop_writer_connection()
                if first_try and exc.connection_invalidated:
                    # The kept connection was found dead (a server restarted while the
                    # night was quiet): what a ping on checkout used to catch. Once, at once.
                    first_try = False
                    continue
                first_try = False
                if _storage_failure(exc):
                    return None, self._break(LedgerUnavailable(self._storage_message(exc)))
                if self._closing.is_set():
                    deadline = min(deadline, time.monotonic() + CLOSE_TIMEOUT_S / 2)
                if time.monotonic() >= deadline:
                    return None, self._break(
                        LedgerUnavailable(
                            f"ledger {self.display_url}: writes failed for {WRITE_RETRY_S:.0f} s: "
                            f"{_first_line(exc)}"
                        )
                    )
                log.warning("ledger write failed (%s); retrying", _first_line(exc))
                self._closing.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                self._drop_writer_connection()  # its state is unknown after our own bug
                return None, exc

    def _writer_connection(self) -> Connection:
        """The writer's own connection, kept between batches: a checkout per batch cost a
        pool round and, on PostgreSQL, a ping to the server."""
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _drop_writer_connection(self) -> None:
        """Forget the writer's connection after connection trouble: the next batch makes a
        new one instead of retrying on a broken one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()

    def _break(self, exc: LedgerUnavailable) -> LedgerUnavailable:
        if self._broken is None:
            self._broken = exc
            # To orchestrator.log; the console gets the one line the CLI ends with.
            log.error("%s", exc, extra={"console": False})
        return self._broken

    def _storage_message(self, exc: DBAPIError) -> str:
        text = _first_line(exc)
        if self.dialect == "sqlite" and self.path is not None and _is_full(exc):
            folder = self.path.parent
            try:
                free = shutil.disk_usage(folder).free
                where = f"the disk holding {folder} ({free / 1e6:.1f} MB free)"
            except OSError:
                where = f"the disk holding {folder}"
            return f"ledger {self.display_url}: no space left on {where}: {text}"
        return f"ledger {self.display_url}: cannot be written: {text}"

    # -- reading ----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads. Safe from any thread; sees everything committed.

        A store that cannot be read (corrupted, truncated, gone) is one clear error."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise LedgerUnreadable(
                f"the ledger at {self.display_url} is not readable: {_first_line(exc)}"
            ) from None


def _noop(conn: Connection) -> None:
    return None


_SCHEMA_LOCK_KEY = 0x6F766E745F736368  # "ovnt_sch": serialises schema creation on PostgreSQL

# A store that cannot take the write however often it is retried.
_STORAGE_FAILURES = (
    "database or disk is full",
    "disk i/o error",
    "no space left on device",
    "readonly database",
    "read-only",
    "file is not a database",
    "malformed",
    "unable to open database file",
    "could not extend file",
)


def _storage_failure(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate.startswith(("53100", "58")):  # disk full; system (I/O) errors
        return True
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(marker in text for marker in _STORAGE_FAILURES)


def _is_full(exc: DBAPIError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "full" in text or "no space" in text


def _settle(
    batch: list[Item], *, results: list[Any] | None = None, error: BaseException | None = None
) -> None:
    """Resolve each waiter: thread futures at once, each loop's futures in one wake-up of
    that loop. A waiter cancelled before its write began is left alone (its write ran all
    the same); nothing here can raise."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for i, (_op, _args, fut) in enumerate(batch):
        result = results[i] if results is not None and error is None else None
        if isinstance(fut, _LoopWaiter):
            by_loop.setdefault(fut.loop, []).append((fut.future, result, error))
            continue
        if fut.done():
            continue
        try:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits on it
            loop.call_soon_threadsafe(_deliver, settled)


def _deliver(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the waiters' loop: set each future not cancelled meanwhile."""
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _describe(exc: BaseException) -> str:
    return redact_url(f"{type(exc).__name__}: {exc}".splitlines()[0])


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


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
