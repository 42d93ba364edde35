"""A running night's ended attempts, read from its ledger a little at a time.

The exporter reads the ledger, not the engine: whatever runs the cycles (this process,
worker processes), an attempt is exported once its row says it ended. Each read takes
the attempts that ended since the previous one (with a margin for rows committed late),
and with them what belongs to each: its steps, its calls' usage, its metrics and
faults, and the incidents, repairs and fallbacks whose time span overlaps it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from ..ledger import schema as s

# Rows are picked up by the time their attempt ended; one committed this much later than
# the latest end already read (a busy writer queue) is left to the final read at the
# night's end. Every read reads this much again: small, since a long night reads often.
LATE_COMMIT_S = 1.0
# An attempt an open incident overlaps waits for the incident's repairs this long at most.
HOLD_S = 60.0
# Events of an attempt that become spans or span events.
ATTEMPT_EVENT_KINDS = ("usage", "metric", "component_fault")
# Cycle numbers per ``IN (…)`` list (SQLite allows 32,766 parameters a statement).
_CHUNK = 500


@dataclass(frozen=True)
class Happening:
    """An incident, repair or fallback of the night, with the time span it covered
    (``end`` None: still going on when it was read)."""

    kind: str  # incident | repair | fallback
    start: float
    end: float | None
    row: dict[str, Any]

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and (self.end is None or self.end >= start)


@dataclass
class AttemptRecord:
    """One ended attempt: its row (with its cycle's input seed, status, verdict and
    attempt count as ``input_seed``, ``cycle_status``, ``cycle_verdict``,
    ``cycle_attempts``), its steps in order, its events of ``ATTEMPT_EVENT_KINDS`` in
    time order, and the happenings that overlap it."""

    row: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    happenings: list[Happening] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return int(self.row["cycle"]), int(self.row["attempt"])

    @property
    def incident_open(self) -> bool:
        """An incident it touched is still being worked (repairs may yet be recorded)."""
        return any(h.kind == "incident" and h.row["state"] == "open" for h in self.happenings)

    @property
    def final(self) -> bool:
        """The cycle's last attempt: the cycle is done, and with this attempt (the final
        attempt's row and its cycle's are committed together)."""
        return bool(self.row["cycle_status"] == "done" and self.row["attempt"] == self.row["cycle_attempts"])


def _key(cycle: int, attempt: int) -> int:
    return (cycle << 20) | attempt


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


class LedgerTail:
    """The attempts of one session of a night that ended and were not read yet. Not
    thread-safe: one reader at a time (the exporter holds a lock)."""

    def __init__(self, night_id: str, session: int) -> None:
        self.night_id = night_id
        self.session = session
        self._read: set[int] = set()  # attempts already handed out (one int each)
        self._since: float | None = None

    def read(
        self, conn: Connection, everything: bool = False, now: float | None = None
    ) -> list[AttemptRecord]:
        """The attempts that ended since the previous read, oldest end first.

        An attempt that an incident still open overlaps (its repairs are still to come)
        is held back until the incident is closed, at most ``HOLD_S`` after it ended
        (``now``: the wall clock). ``everything``: every ended attempt of the session not
        handed out yet, none held (the final read, which also catches rows committed
        late)."""
        now = time.time() if now is None else now
        a, c = s.attempts.c, s.cycles.c
        q = (
            select(
                a.cycle,
                a.attempt,
                a.started_at,
                a.ended_at,
                a.duration_s,
                a.verdict,
                a.step,
                a.error_type,
                a.error_message,
                a.fault_component,
                a.fault_kind,
                a.fallback,
                a.knobs_off,
                c.input_seed,
                c.status.label("cycle_status"),
                c.verdict.label("cycle_verdict"),
                c.attempts.label("cycle_attempts"),
            )
            .select_from(s.attempts.join(s.cycles, and_(c.night_id == a.night_id, c.cycle == a.cycle)))
            .where(
                a.night_id == self.night_id,
                a.session == self.session,
                a.verdict.is_not(None),
                a.ended_at.is_not(None),
            )
        )
        if not everything and self._since is not None:
            q = q.where(a.ended_at >= self._since)
        latest: float | None = None
        candidates: list[AttemptRecord] = []
        for row in conn.execute(q.order_by(a.ended_at, a.cycle, a.attempt)).all():  # one fetch, not one a row
            cycle, attempt, _, ended = row[:4]
            latest = ended if latest is None else max(latest, ended)
            if _key(cycle, attempt) not in self._read:  # a dict only for the new ones
                candidates.append(AttemptRecord(dict(row._mapping)))
        if candidates:
            self._attach(conn, candidates)
        records: list[AttemptRecord] = []
        held: float | None = None  # the earliest end of an attempt held back
        for record in candidates:
            ended = float(record.row["ended_at"])
            if not everything and record.incident_open and now - ended < HOLD_S:
                held = ended if held is None else min(held, ended)
                continue
            self._read.add(_key(*record.key))
            records.append(record)
        if latest is not None:  # the window only moves forward, and keeps what is held
            since = latest - LATE_COMMIT_S if held is None else min(latest - LATE_COMMIT_S, held)
            self._since = since if self._since is None else max(self._since, since)
        return records

    def _attach(self, conn: Connection, records: list[AttemptRecord]) -> None:
        by_key = {r.key: r for r in records}
        cycles = sorted({r.key[0] for r in records})
        start = min(float(r.row["started_at"]) for r in records)
        end = max(float(r.row["ended_at"]) for r in records)
        t, e = s.steps.c, s.events.c
        for chunk in _chunks(cycles):
            steps = select(s.steps).where(t.night_id == self.night_id, t.cycle.in_(chunk))
            for row in conn.execute(steps.order_by(t.cycle, t.attempt, t.seq)).all():
                record = by_key.get((row.cycle, row.attempt))
                if record is not None:
                    record.steps.append(dict(row._mapping))
            events = select(e.ts, e.kind, e.cycle, e.attempt, e.component, e.message, e.data).where(
                e.night_id == self.night_id,
                e.kind.in_(ATTEMPT_EVENT_KINDS),
                e.ts >= start - 1.0,  # the (night_id, ts) index; events carry the wall clock
                e.cycle.in_(chunk),
            )
            for row in conn.execute(events.order_by(e.ts, e.id)).all():
                record = by_key.get((row.cycle, row.attempt))
                if record is not None:
                    record.events.append(dict(row._mapping))
        incidents, others = self._happenings(conn, start, end)
        for record in records:
            lo, hi = float(record.row["started_at"]), float(record.row["ended_at"])
            touched = [h for h in incidents if h.overlaps(lo, hi)]
            ids = {h.row["id"] for h in touched}
            record.happenings = touched + [
                h for h in others if h.overlaps(lo, hi) or h.row["incident_id"] in ids
            ]

    def _happenings(
        self, conn: Connection, start: float, end: float
    ) -> tuple[list[Happening], list[Happening]]:
        """(incidents, repairs and fallbacks) of the night that an attempt within
        [start, end] touched: an incident from its detection to its verified recovery
        (open ones to now); a repair for its duration, a fallback from its start to its
        end, or either because its incident overlaps (the repairs that followed an
        attempt's failed call belong to that attempt's story)."""
        i, r, f = s.incidents.c, s.repairs.c, s.fallbacks.c
        q = select(s.incidents).where(
            i.night_id == self.night_id,
            i.detected_at <= end,
            or_(i.verified_at.is_(None), i.verified_at >= start),
        )
        incidents = [
            Happening("incident", m["detected_at"], m["verified_at"], m)
            for m in (dict(row._mapping) for row in conn.execute(q.order_by(i.detected_at, i.id)))
        ]
        ids = [h.row["id"] for h in incidents]
        repair_end = r.started_at + func.coalesce(r.duration_s, 0.0)
        own = and_(r.started_at <= end, or_(r.duration_s.is_(None), repair_end >= start))
        q = select(s.repairs).where(r.night_id == self.night_id, or_(own, r.incident_id.in_(ids)))
        others: list[Happening] = []
        for row in conn.execute(q.order_by(r.started_at, r.id)):
            m = dict(row._mapping)
            done = None if m["duration_s"] is None else m["started_at"] + m["duration_s"]
            others.append(Happening("repair", m["started_at"], done, m))
        own = and_(f.started_at <= end, or_(f.ended_at.is_(None), f.ended_at >= start))
        q = select(s.fallbacks).where(f.night_id == self.night_id, or_(own, f.incident_id.in_(ids)))
        for row in conn.execute(q.order_by(f.started_at, f.id)):
            m = dict(row._mapping)
            others.append(Happening("fallback", m["started_at"], m["ended_at"], m))
        return incidents, others
