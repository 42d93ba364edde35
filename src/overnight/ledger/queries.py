"""Read side of the ledger: plain dicts out, for the engine's resume and the reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, islice
from operator import eq, itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, case, func, select

from . import schema as s

RESUMABLE = ("running", "interrupted", "aborted")


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


def get_night(conn: Connection, night_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(s.nights).where(s.nights.c.id == night_id)).first()
    return dict(row._mapping) if row else None


def find_nights(conn: Connection, prefix: str) -> list[str]:
    """Night ids starting with ``prefix`` (so users can type a short id)."""
    return [
        r[0]
        for r in conn.execute(select(s.nights.c.id).where(s.nights.c.id.startswith(prefix, autoescape=True)))
    ]


def last_night(conn: Connection, resumable_only: bool = False) -> dict[str, Any] | None:
    q = select(s.nights).order_by(s.nights.c.started_at.desc(), s.nights.c.id.desc()).limit(1)
    if resumable_only:
        q = q.where(s.nights.c.status.in_(RESUMABLE))
    row = conn.execute(q).first()
    return dict(row._mapping) if row else None


def list_nights(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    c = s.cycles.c
    totals = (
        select(
            c.night_id,
            func.count().label("cycles_total"),
            func.sum(case((c.status == "done", 1), else_=0)).label("done"),
            func.sum(case((c.verdict == "passed", 1), else_=0)).label("passed"),
            func.sum(case((c.verdict == "failed", 1), else_=0)).label("failed"),
            func.sum(case((c.verdict == "infra_error", 1), else_=0)).label("infra_error"),
            func.sum(case((c.verdict == "timeout", 1), else_=0)).label("timeout"),
            func.sum(case((c.verdict == "harness_error", 1), else_=0)).label("harness_error"),
            func.sum(case((c.verdict == "failed_on_fallback", 1), else_=0)).label("failed_on_fallback"),
            func.sum(case((c.verdict == "crashed", 1), else_=0)).label("crashed"),
        )
        .group_by(c.night_id)
        .subquery()
    )
    q = (
        select(s.nights, totals)
        .select_from(s.nights.outerjoin(totals, totals.c.night_id == s.nights.c.id))
        .order_by(s.nights.c.started_at.desc(), s.nights.c.id.desc())
        .limit(limit)
    )
    return _rows(conn.execute(q))


def done_cycles(conn: Connection, night_id: str) -> set[int]:
    return {
        r[0]
        for r in conn.execute(
            select(s.cycles.c.cycle).where(and_(s.cycles.c.night_id == night_id, s.cycles.c.status == "done"))
        )
    }


def passed_cycles(conn: Connection, night_id: str) -> tuple[int, float | None]:
    """How many of the night's cycles passed, and when the last of them ended (its clock;
    None if none passed)."""
    c = s.cycles.c
    q = select(func.count(), func.max(c.ended_at)).where(
        c.night_id == night_id, c.status == "done", c.verdict == "passed"
    )
    row = conn.execute(q).one()
    return int(row[0]), (float(row[1]) if row[1] is not None else None)


def attempts_used(conn: Connection, night_id: str) -> dict[int, tuple[int, int, int]]:
    """cycle -> (highest attempt number, attempts that counted toward the retry budget,
    attempts that crashed their worker).

    Interrupted attempts are kept but do not count: the cycle did not fail, the process
    stopped under it. Crashes have a bound of their own (``attempts.CRASHES_FINAL``).
    """
    a = s.attempts.c
    q = (
        select(
            a.cycle,
            func.max(a.attempt),
            # NULL (an attempt still open) counts as neither
            func.sum(case((a.verdict.not_in(("interrupted", "crashed")), 1), else_=0)),
            func.sum(case((a.verdict == "crashed", 1), else_=0)),
        )
        .where(a.night_id == night_id)
        .group_by(a.cycle)
    )
    return {r[0]: (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in conn.execute(q)}


def cycle_steps(conn: Connection, night_id: str, cycle: int, before_attempt: int) -> list[dict[str, Any]]:
    """The steps of one cycle's attempts before ``before_attempt``, in order (attempt,
    seq): what a later attempt of a pytest-suite cycle runs again, and what it keeps."""
    t = s.steps.c
    q = (
        select(t.attempt, t.seq, t.name, t.outcome, t.error_type, t.error_message)
        .where(and_(t.night_id == night_id, t.cycle == cycle, t.attempt < before_attempt))
        .order_by(t.attempt, t.seq)
    )
    return _rows(conn.execute(q))


def sessions_of(conn: Connection, night_id: str) -> list[dict[str, Any]]:
    return _rows(
        conn.execute(select(s.sessions).where(s.sessions.c.night_id == night_id).order_by(s.sessions.c.seq))
    )


def cycles_of(conn: Connection, night_id: str) -> list[dict[str, Any]]:
    return _rows(
        conn.execute(select(s.cycles).where(s.cycles.c.night_id == night_id).order_by(s.cycles.c.cycle))
    )


def attempts_of(conn: Connection, night_id: str) -> list[dict[str, Any]]:
    a = s.attempts.c
    return _rows(conn.execute(select(s.attempts).where(a.night_id == night_id).order_by(a.cycle, a.attempt)))


def steps_of(conn: Connection, night_id: str) -> list[dict[str, Any]]:
    t = s.steps.c
    return _rows(
        conn.execute(select(s.steps).where(t.night_id == night_id).order_by(t.cycle, t.attempt, t.seq))
    )


def artifacts_of(conn: Connection, night_id: str) -> list[dict[str, Any]]:
    t = s.artifacts.c
    return _rows(
        conn.execute(select(s.artifacts).where(t.night_id == night_id).order_by(t.cycle, t.attempt, t.name))
    )


def events_of(conn: Connection, night_id: str, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    t = s.events.c
    q = select(s.events).where(t.night_id == night_id)
    if kinds:
        q = q.where(t.kind.in_(kinds))
    return _rows(conn.execute(q.order_by(t.ts, t.id)))


def unreported_nights(conn: Connection, ended_since: float, limit: int = 5) -> list[dict[str, Any]]:
    """Nights that ended (since ``ended_since``) without their ``night_reported`` event:
    the process stopped while writing the report or notifying. Newest first."""
    n, e = s.nights.c, s.events.c
    reported = select(e.id).where(and_(e.night_id == n.id, e.kind == "night_reported")).exists()
    q = (
        select(s.nights)
        .where(and_(n.status != "running", n.ended_at.is_not(None), n.ended_at >= ended_since, ~reported))
        .order_by(n.ended_at.desc())
        .limit(limit)
    )
    return _rows(conn.execute(q))


def has_event(conn: Connection, night_id: str, kinds: tuple[str, ...]) -> bool:
    t = s.events.c
    q = select(t.id).where(and_(t.night_id == night_id, t.kind.in_(kinds))).limit(1)
    return conn.execute(q).first() is not None


# Columns whose values repeat from row to row (a verdict, a step's name, a cycle's number
# in its attempts, steps and events, a metric's recorded JSON): read_night keeps one object
# per distinct value instead of one per row.
_REPEATED = {
    "sessions": ("hostname", "end_reason"),
    "cycles": ("cycle", "status", "verdict", "knobs_off"),
    "attempts": (
        "cycle",
        "verdict",
        "step",
        "error_type",
        "error_message",
        "traceback",
        "fault_component",
        "fault_kind",
        "knobs_off",
        "calls",
    ),
    "steps": ("cycle", "name", "outcome"),
    "artifacts": ("cycle", "name"),
    "events": ("cycle", "kind", "component", "message", "data"),
    "probes": ("component", "fault_kind", "trigger", "detail"),
}


class CycleRow(NamedTuple):
    """A cycle as the report reads it (the columns it reads; a night holds one a cycle)."""

    cycle: int
    status: str
    verdict: str | None
    attempts: int  # the number of its last attempt
    input_seed: str
    started_at: float
    ended_at: float | None
    duration_s: float | None  # its final attempt's
    fallback: bool
    knobs_off: str | None  # JSON


class AttemptRow(NamedTuple):
    """An attempt as the report reads it (a night holds one or more a cycle)."""

    cycle: int
    attempt: int
    session: int
    started_at: float
    ended_at: float | None
    duration_s: float | None
    verdict: str | None
    step: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    fault_component: str | None
    fault_kind: str | None
    fallback: bool | None
    knobs_off: str | None  # JSON
    calls: str | None  # JSON


class StepRow(NamedTuple):
    """A step as the report reads it (its timestamps and error are in its attempt's row):
    a night holds two or more a cycle."""

    cycle: int
    attempt: int
    name: str
    outcome: str
    duration_s: float | None


class CallEvent(NamedTuple):
    """An event of a kind recorded per call or per measurement (``PER_CALL_KINDS``): a
    long night holds one or more a cycle, so a tuple of what the report reads of them."""

    cycle: int | None
    attempt: int | None
    data: str | None


def column(row: type[CycleRow | AttemptRow | StepRow | CallEvent], name: str) -> itemgetter[Any]:
    """A function that reads a field of rows of this type by its position (C code, no
    lookup by name: for a pass over hundreds of thousands of rows)."""
    return itemgetter(row._fields.index(name))


def of_retried(attempts: list[AttemptRow]) -> list[AttemptRow]:
    """The attempts of the cycles that have more than one (``attempts`` in read_night's
    order), found without a Python step per attempt: most cycles have one."""
    numbers = list(map(_attempt_cycle, attempts))
    again = set(compress(numbers, map(eq, numbers, islice(numbers, 1, None))))
    return list(compress(attempts, map(again.__contains__, numbers))) if again else []


_attempt_cycle = column(AttemptRow, "cycle")

# Event kinds recorded per call or measurement, not per happening: read_night keeps them
# apart (``NightRows.metrics``, ``NightRows.usage``), as ``CallEvent`` tuples.
PER_CALL_KINDS = ("metric", "usage")


# The tables read_night reads as named tuples, of the columns those name (the others: as
# dicts of every column but ``night_id``, the same in every row).
_TUPLES: dict[str, type[CycleRow | AttemptRow | StepRow]] = {
    "cycles": CycleRow,
    "attempts": AttemptRow,
    "steps": StepRow,
}

# Rows fetched from the database cursor at a time.
_FETCH = 2000


def _compact_rows(
    conn: Connection,
    query: Any,
    repeated: tuple[str, ...] = (),
    seen: dict[str, dict[Any, Any]] | None = None,
    typed: type[tuple[Any, ...]] | None = None,
) -> list[Any]:
    """The query's rows as ``typed`` named tuples of its columns, or as dicts that share
    one key table (CPython's split dicts, the kind an object's ``__dict__`` is: 176 bytes
    for a 13-column row where ``dict(row)`` takes 464), each value of the ``repeated``
    columns one object however many rows hold it (``seen``: the values met so far, by
    column name, shared between the tables of a night). A 100,000-cycle night holds about
    600,000 rows while its report is written.

    Fetched from the DBAPI cursor in chunks, the chunk's columns passed through the
    column types' result processors (SQLite's 0/1 to bool) as SQLAlchemy's rows would
    be: building a ``Row`` per row, to take its values out again, took half the time."""
    dialect = conn.dialect
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    args = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
    selected = list(query.selected_columns)
    keys = tuple(str(c.key) for c in selected)  # plain str: a str subclass key unshares the table
    seen = {} if seen is None else seen
    memos = {i: seen.setdefault(k, {}) for i, k in enumerate(keys) if k in repeated}
    holder = type("LedgerRow", (), {})  # its instances' dicts share one key table
    # (tuple.__new__ as a named tuple's _make is, without a Python call per row)
    build = partial(tuple.__new__, typed) if typed is not None else None
    out: list[Any] = []
    append = out.append
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # (None only once the connection is closed)
    cursor = dbapi.cursor()
    try:
        cursor.execute(str(compiled), args)
        # Each column's processor for the type the database says it returned (PostgreSQL's
        # numeric processors depend on it), as SQLAlchemy picks them.
        convert = {
            i: proc
            for i, (c, described) in enumerate(zip(selected, cursor.description, strict=True))
            if (proc := c.type.dialect_impl(dialect).result_processor(dialect, described[1])) is not None
        }
        while chunk := cursor.fetchmany(_FETCH):
            rows: Iterable[Any] = chunk
            if memos or convert:
                columns = list(zip(*chunk, strict=True))
                for i, proc in convert.items():
                    columns[i] = tuple(map(proc, columns[i]))
                for i, memo in memos.items():
                    columns[i] = tuple(map(memo.setdefault, columns[i], columns[i]))
                rows = zip(*columns, strict=True)
            if build is not None:
                out.extend(map(build, rows))
                continue
            for values in rows:
                d = holder().__dict__
                d.update(zip(keys, values, strict=True))
                append(d)
    finally:
        cursor.close()
    return out


@dataclass(frozen=True)
class NightRows:
    """Every row of one night, each table read once, in one query: the one read the
    report, the fault timeline and the agent's figures are computed from. Each list is in
    its table's order: cycles by cycle; attempts by (cycle, attempt); steps by (cycle,
    attempt, seq); artifacts by (cycle, attempt, name); events, probes, incidents, repairs
    and fallbacks in time order. Cycles, attempts and steps as ``CycleRow``,
    ``AttemptRow`` and ``StepRow`` tuples, with what the report reads of them; the other
    tables as dicts of every column but ``night_id`` (the night's, in every row); the
    events of ``PER_CALL_KINDS`` not in ``events`` but in ``metrics`` and ``usage``, as
    ``CallEvent`` tuples, in time order."""

    night: dict[str, Any]
    sessions: list[dict[str, Any]]
    cycles: list[CycleRow]
    attempts: list[AttemptRow]
    steps: list[StepRow]
    artifacts: list[dict[str, Any]]
    events: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    repairs: list[dict[str, Any]]
    fallbacks: list[dict[str, Any]]
    metrics: list[CallEvent] = field(default_factory=list)  # the ``metric`` events
    usage: list[CallEvent] = field(default_factory=list)  # the ``usage`` events
    _by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for event in self.events:
            self._by_kind.setdefault(event["kind"], []).append(event)

    @property
    def id(self) -> str:
        return str(self.night["id"])

    @property
    def verified_repairs(self) -> set[int]:
        """Repairs the agent flagged verified *and* a healthy probe of their component
        followed: the one definition of "verified" every section uses (a flag without
        the probe that earned it is not evidence)."""
        healthy: dict[str, list[float]] = {}
        for p in self.probes:
            if p["healthy"]:
                healthy.setdefault(p["component"], []).append(p["ts"])
        return {
            r["id"]
            for r in self.repairs
            if r["verified"] and any(ts >= r["started_at"] for ts in healthy.get(r["component"], ()))
        }

    def events_of(self, *kinds: str) -> list[dict[str, Any]]:
        """Events of these kinds, in the order they happened (not of ``PER_CALL_KINDS``:
        ``metrics`` and ``usage`` hold those)."""
        if not set(kinds).isdisjoint(PER_CALL_KINDS):
            raise ValueError(f"{kinds}: metric and usage events are NightRows.metrics and .usage")
        if len(kinds) == 1:
            return self._by_kind.get(kinds[0], [])
        return [e for e in self.events if e["kind"] in kinds]


# The tables of a night read_night reads, each with its order.
_NIGHT_TABLES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "sessions": (s.sessions, (s.sessions.c.seq,)),
    "cycles": (s.cycles, (s.cycles.c.cycle,)),
    "attempts": (s.attempts, (s.attempts.c.cycle, s.attempts.c.attempt)),
    "steps": (s.steps, (s.steps.c.cycle, s.steps.c.attempt, s.steps.c.seq)),
    "artifacts": (s.artifacts, (s.artifacts.c.cycle, s.artifacts.c.attempt, s.artifacts.c.name)),
    "events": (s.events, (s.events.c.ts, s.events.c.id)),
    "probes": (s.probes, (s.probes.c.ts, s.probes.c.id)),
    "incidents": (s.incidents, (s.incidents.c.detected_at, s.incidents.c.id)),
    "repairs": (s.repairs, (s.repairs.c.started_at, s.repairs.c.id)),
    "fallbacks": (s.fallbacks, (s.fallbacks.c.started_at, s.fallbacks.c.id)),
}
NIGHT_TABLES = tuple(_NIGHT_TABLES)


def read_night(
    conn: Connection,
    night_id: str,
    tables: tuple[str, ...] = NIGHT_TABLES,
    event_kinds: tuple[str, ...] | None = None,
) -> NightRows | None:
    """The night's rows, one query per table. ``tables``: the tables to read (the others
    are left empty); ``event_kinds``: only the events of these kinds."""
    night = get_night(conn, night_id)
    if night is None:
        return None
    seen: dict[str, dict[Any, Any]] = {}

    def rows(name: str) -> list[Any]:
        if name not in tables:
            return []
        table, order = _NIGHT_TABLES[name]
        typed = _TUPLES.get(name)
        keys = typed._fields if typed else [c.key for c in table.c if c.key != "night_id"]
        columns = [table.c[k] for k in keys]
        q = select(*columns).where(table.c.night_id == night_id)
        if name == "events":
            q = q.where(table.c.kind.not_in(PER_CALL_KINDS))
            if event_kinds is not None:
                q = q.where(table.c.kind.in_(event_kinds))
        return _compact_rows(conn, q.order_by(*order), _REPEATED.get(name, ()), seen, typed)

    def per_call(kind: str) -> list[CallEvent]:
        if "events" not in tables or (event_kinds is not None and kind not in event_kinds):
            return []
        e = s.events.c
        q = select(e.cycle, e.attempt, e.data).where(e.night_id == night_id, e.kind == kind)
        return _compact_rows(conn, q.order_by(e.ts, e.id), ("cycle", "data"), seen, CallEvent)

    return NightRows(
        night=night,
        sessions=rows("sessions"),
        cycles=rows("cycles"),
        attempts=rows("attempts"),
        steps=rows("steps"),
        artifacts=rows("artifacts"),
        events=rows("events"),
        probes=rows("probes"),
        incidents=rows("incidents"),
        repairs=rows("repairs"),
        fallbacks=rows("fallbacks"),
        metrics=per_call("metric"),
        usage=per_call("usage"),
    )


def same_inputs(
    conn: Connection,
    night: dict[str, Any],
    nights: int = 5,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Finished cycles of up to ``nights`` earlier nights of the same scenario and the same
    protected settings that ran an input this night ran too (same input seed): the
    evidence that an outcome on one input is flaky across nights. ``keep``: only the rows
    it keeps (the rest are streamed past, not held: nights that run the same seed every
    night share every input)."""
    n, c = s.nights.c, s.cycles.c
    earlier = (
        select(n.id)
        .where(
            n.scenario == night["scenario"],
            n.protected_fingerprint == night["protected_fingerprint"],
            n.id != night["id"],
            n.started_at < night["started_at"],
        )
        .order_by(n.started_at.desc())
        .limit(nights)
    )
    ours = select(c.input_seed).where(c.night_id == night["id"])
    q = (
        select(c.night_id, c.cycle, c.input_seed, c.verdict, c.attempts)
        .where(c.night_id.in_(earlier), c.status == "done", c.input_seed.in_(ours))
        .order_by(c.night_id, c.cycle)
    )
    if keep is None:
        return _rows(conn.execute(q))
    return [row for row in _rows_streamed(conn.execute(q.execution_options(yield_per=_FETCH))) if keep(row)]


def _rows_streamed(result: Any) -> Iterator[dict[str, Any]]:
    keys = tuple(result.keys())
    for row in result:
        yield dict(zip(keys, row, strict=True))


def previous_ended_night(conn: Connection, night: dict[str, Any]) -> dict[str, Any] | None:
    """The previous ended night of ``night``'s scenario, by the trend's rule (same
    scenario, started before it, ended, not itself): ``{"id", "started_at",
    "night_started"}``, the last its ``night_started`` event's data (``{}`` when it has
    none). ``night`` needs ``id``, ``scenario`` and ``started_at``."""
    n, e = s.nights.c, s.events.c
    row = conn.execute(
        select(n.id, n.started_at)
        .where(
            n.scenario == night["scenario"],
            n.started_at < night["started_at"],
            n.ended_at.is_not(None),
            n.id != night["id"],
        )
        .order_by(n.started_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    raw = conn.execute(
        select(e.data).where(e.night_id == row.id, e.kind == "night_started").order_by(e.ts, e.id).limit(1)
    ).scalar()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    return {
        "id": row.id,
        "started_at": row.started_at,
        "night_started": data if isinstance(data, dict) else {},
    }


def final_verdicts(conn: Connection, night_id: str) -> Iterator[tuple[str, int, str]]:
    """(input seed, cycle, final verdict) of each finished cycle of the night, in cycle
    order, streamed from the database (a long night's rows are never all held): what
    ``overnight diff`` compares input by input. Exhaust it while ``conn`` is open."""
    c = s.cycles.c
    q = (
        select(c.input_seed, c.cycle, c.verdict)
        .where(c.night_id == night_id, c.status == "done")
        .order_by(c.cycle)
    )
    for row in conn.execute(q.execution_options(yield_per=_FETCH)):
        yield row[0], row[1], row[2]
