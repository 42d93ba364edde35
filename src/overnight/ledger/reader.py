"""A ledger opened for reading only: what ``overnight serve`` reads, on this machine or on
another one (a PostgreSQL ledger).

``Ledger`` creates and upgrades the schema and starts the writer thread; this does none of
it. A SQLite file is opened with ``mode=ro`` and ``query_only`` (SQLite refuses any
write, and a missing file is not created); a PostgreSQL session runs with
``default_transaction_read_only``, so the server refuses any write. A database that holds
no ledger, or a ledger of another schema version, is refused with one line: upgrading it
is a writing command's job.
"""

from __future__ import annotations

import sqlite3
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.exc import DBAPIError

from ..errors import LedgerUnreadable, UsageError
from . import schema
from .store import _first_line, parse_ledger_url

# A read waits this long for a writer's lock (SQLite), or to connect (PostgreSQL): a page
# answers in seconds, or says the ledger is busy or unreachable.
READ_WAIT_S = 5


class Readable(Protocol):
    """What the read side needs of a ledger: connections for reads, and a name to show.
    ``Ledger`` and ``ReadOnlyLedger`` both are."""

    display_url: str

    def read(self) -> AbstractContextManager[Connection]: ...


class ReadOnlyLedger:
    """An existing ledger, opened read-only. Safe from any thread; ``close()`` when done."""

    def __init__(self, url: str) -> None:
        self.url, self.display_url, parsed = parse_ledger_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise UsageError("--ledger: an in-memory SQLite database holds no ledger")
            path = Path(parsed.database)
            self.display_url = str(path)
            if not path.exists():
                raise UsageError(f"no ledger at {path} (run a night first, or pass --ledger / --night-dir)")
            if path.is_dir():
                raise UsageError(f"the ledger at {path} is not readable: it is a directory")
            self.engine = _sqlite_engine(path)
        else:
            self.engine = create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=2,
                max_overflow=6,
                connect_args={
                    "connect_timeout": READ_WAIT_S,
                    "application_name": "overnight-serve",
                    # The server refuses any write in this session's transactions.
                    "options": "-c default_transaction_read_only=on",
                },
            )
        try:
            with self.read() as conn:
                self._check_schema(conn)
        except BaseException:
            self.engine.dispose()
            raise

    def _check_schema(self, conn: Connection) -> None:
        tables = set(inspect(conn).get_table_names())
        if "meta" not in tables:
            what = "it holds other tables" if tables else "it is empty"
            raise UsageError(
                f"the ledger at {self.display_url} is not readable: {what}, not an overnight ledger"
            )
        row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).first()
        try:
            version = int(row[0]) if row is not None else None
        except ValueError:
            version = None
        if version is None:
            raise UsageError(f"the ledger at {self.display_url} is not readable: no schema version")
        if version > schema.SCHEMA_VERSION:
            raise UsageError(
                f"ledger {self.display_url} has schema version {version}; this overnight "
                f"knows up to {schema.SCHEMA_VERSION}: upgrade overnight"
            )
        if version < schema.SCHEMA_VERSION:
            raise UsageError(
                f"ledger {self.display_url} has schema version {version}, older than this "
                f"overnight's {schema.SCHEMA_VERSION}; a reader does not upgrade it: run "
                "'overnight nights' with it once (it upgrades the schema), then serve it"
            )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; sees everything committed. A store that cannot be read
        (unreachable, corrupted, gone) is one clear error."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise LedgerUnreadable(
                f"the ledger at {self.display_url} is not readable: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_engine(path: Path) -> Engine:
    # A URI with mode=ro: SQLite opens the file read-only and never creates it.
    uri = "file:" + urllib.request.pathname2url(str(path.resolve())) + "?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=READ_WAIT_S, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA query_only = 1")  # belt and braces: no statement may write
        cur.close()

    return engine
