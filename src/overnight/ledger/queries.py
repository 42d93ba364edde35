"""Read side of the ledger: plain dicts out, for the engine's resume and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def attempts_used(conn: Connection, night_id: str) -> dict[int, tuple[int, int]]:
    """cycle -> (highest attempt number, attempts that counted toward the retry budget).

    Interrupted attempts are kept but do not count: the cycle did not fail, the process
    stopped under it.
    """
    a = s.attempts.c
    q = (
        select(
            a.cycle,
            func.max(a.attempt),
            func.sum(case((a.verdict != "interrupted", 1), else_=0)),
        )
        .where(a.night_id == night_id)
        .group_by(a.cycle)
    )
    return {r[0]: (int(r[1]), int(r[2] or 0)) for r in conn.execute(q)}


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


@dataclass(frozen=True)
class NightRows:
    """Every row of one night, each table read once: the one read the report, the fault
    timeline and the agent's figures are computed from."""

    night: dict[str, Any]
    sessions: list[dict[str, Any]]
    cycles: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    events: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    repairs: list[dict[str, Any]]
    fallbacks: list[dict[str, Any]]
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
        """Events of these kinds, in the order they happened."""
        if len(kinds) == 1:
            return self._by_kind.get(kinds[0], [])
        return [e for e in self.events if e["kind"] in kinds]


def read_night(conn: Connection, night_id: str) -> NightRows | None:
    night = get_night(conn, night_id)
    if night is None:
        return None

    def rows(table: Any, *order: Any) -> list[dict[str, Any]]:
        return _rows(conn.execute(select(table).where(table.c.night_id == night_id).order_by(*order)))

    return NightRows(
        night=night,
        sessions=sessions_of(conn, night_id),
        cycles=cycles_of(conn, night_id),
        attempts=attempts_of(conn, night_id),
        steps=steps_of(conn, night_id),
        artifacts=artifacts_of(conn, night_id),
        events=events_of(conn, night_id),
        probes=rows(s.probes, s.probes.c.ts, s.probes.c.id),
        incidents=rows(s.incidents, s.incidents.c.detected_at, s.incidents.c.id),
        repairs=rows(s.repairs, s.repairs.c.started_at, s.repairs.c.id),
        fallbacks=rows(s.fallbacks, s.fallbacks.c.started_at, s.fallbacks.c.id),
    )


def same_inputs(conn: Connection, night: dict[str, Any], nights: int = 5) -> list[dict[str, Any]]:
    """Finished cycles of up to ``nights`` earlier nights of the same scenario and the same
    protected settings that ran an input this night ran too (same input seed): the
    evidence that an outcome on one input is flaky across nights."""
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
    return _rows(conn.execute(q))
