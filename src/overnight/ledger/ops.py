"""Write operations run by the ledger's writer thread: ``op(conn, ...)``.

Each one is small and idempotent where a resume may repeat it. Free text goes through
``redact`` here, at the single door into the ledger, so no caller can forget it.
Over 400 lines on purpose: one short function per write, kept beside each other so every
write into the ledger (and its redaction) is read in one place.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, CursorResult, and_, func, select, update

from ..redaction import redact, redact_data
from . import schema as s
from . import sql


def _json(data: Any) -> str | None:
    if data is None:
        return None
    # Redacted value by value: masking the dumped text could leave invalid JSON.
    return json.dumps(redact_data(json.loads(json.dumps(data, default=str))), sort_keys=True)


def _new_id(result: CursorResult[Any]) -> int:
    """The id of the row a single-row insert made."""
    key = result.inserted_primary_key
    assert key is not None  # None only when no row was inserted
    return int(key[0])


def create_night(conn: Connection, row: dict[str, Any]) -> None:
    row = dict(row)
    # Literal secrets of the config masked; Plan.load_config reads them back from the file.
    row["plan"] = _json(json.loads(row["plan"]))
    conn.execute(s.nights.insert().values(**row))


def start_session(conn: Connection, night_id: str, started_at: float, pid: int, host: str) -> int:
    last = conn.execute(select(func.max(s.sessions.c.seq)).where(s.sessions.c.night_id == night_id)).scalar()
    seq = (last or 0) + 1
    conn.execute(
        s.sessions.insert().values(night_id=night_id, seq=seq, started_at=started_at, pid=pid, hostname=host)
    )
    conn.execute(
        update(s.nights)
        .where(s.nights.c.id == night_id)
        .values(status="running", ended_at=None, end_reason=None)
    )
    return seq


def end_session(conn: Connection, night_id: str, seq: int, ended_at: float, reason: str) -> None:
    conn.execute(
        update(s.sessions)
        .where(and_(s.sessions.c.night_id == night_id, s.sessions.c.seq == seq))
        .values(ended_at=ended_at, end_reason=reason)
    )


def recover_interrupted(conn: Connection, night_id: str) -> int:
    """Close what a dead process left open: its running attempts and steps.

    Their cycles stay ``pending`` and will run again on the same input.
    Returns how many attempts were closed.
    """
    n = conn.execute(
        update(s.attempts)
        .where(and_(s.attempts.c.night_id == night_id, s.attempts.c.verdict.is_(None)))
        .values(verdict="interrupted", error_message="the process stopped during this attempt")
    ).rowcount
    conn.execute(
        update(s.steps)
        .where(and_(s.steps.c.night_id == night_id, s.steps.c.outcome.in_(("running", "cancelled"))))
        .values(outcome="interrupted")
    )
    return n or 0


# -- a cycle's writes: two round trips for a cycle without steps -------------------------
# (attempt_begin, then attempt_finished), four statements, each run on the driver.

_BEGIN_CYCLE = sql.Statement(
    """
    INSERT INTO cycles (night_id, cycle, status, attempts, input_seed, started_at,
                        protected_fingerprint, fallback)
    VALUES (:night_id, :cycle, 'pending', 1, :input_seed, :started_at, :fingerprint, :fallback)
    ON CONFLICT (night_id, cycle) DO UPDATE SET attempts = cycles.attempts + 1
    WHERE cycles.status <> 'done'
    """
)
_BEGIN_ATTEMPT = sql.insert("attempts", ("night_id", "cycle", "attempt", "session", "started_at"))
_SETTLE_STEPS = sql.Statement(
    """
    UPDATE steps SET outcome = :outcome
    WHERE night_id = :night_id AND cycle = :cycle AND attempt = :attempt
      AND outcome IN ('cancelled', 'running')
    """
)
_ATTEMPT_KEY = ("night_id", "cycle", "attempt")
_CYCLE_KEY = ("night_id", "cycle")


def attempt_begin(
    conn: Connection,
    night_id: str,
    cycle: int,
    attempt: int,
    session: int,
    started_at: float,
    input_seed: str,
    fingerprint: str,
) -> None:
    """Record an attempt as started, and its cycle with it: the cycle's row is made by
    its first attempt (with the cycle's input and start) and counted up by each later
    one, in one transaction, so a cycle is never recorded as started with no attempt."""
    changed = _BEGIN_CYCLE.run(
        conn,
        {
            "night_id": night_id,
            "cycle": cycle,
            "input_seed": input_seed,
            "started_at": started_at,
            "fingerprint": fingerprint,
            "fallback": False,
        },
    )
    if changed == 0:
        # A completed cycle must never run again; the caller checked, so this is a bug.
        raise RuntimeError(f"cycle {cycle} of night {night_id} is already done")
    _BEGIN_ATTEMPT.run(
        conn,
        {
            "night_id": night_id,
            "cycle": cycle,
            "attempt": attempt,
            "session": session,
            "started_at": started_at,
        },
    )


def attempt_finished(
    conn: Connection,
    night_id: str,
    cycle: int,
    attempt: int,
    result: dict[str, Any],
    final: bool,
    cycle_fields: dict[str, Any] | None = None,
    open_steps: bool = True,
) -> None:
    """Close an attempt; when ``final``, close its cycle in the same transaction.

    One transaction for both is what makes resume exact: a cycle is either done with
    its final attempt recorded, or not done at all. ``open_steps`` says whether a step
    of the attempt may still read running or cancelled (the caller knows; when unsure,
    True): those learn their outcome from the attempt's verdict.
    """
    values = dict(result)
    for key in ("error_message", "traceback", "step"):
        if values.get(key) is not None:
            values[key] = redact(values[key])
    for key in ("knobs_off", "calls"):
        if key in values and not isinstance(values[key], str | None):
            values[key] = _json(values[key] or None)
    where: dict[str, Any] = {"night_id": night_id, "cycle": cycle, "attempt": attempt}
    sql.update("attempts", tuple(values), _ATTEMPT_KEY).run(conn, values | where)
    if open_steps:
        # Steps cut short by cancellation learn why now: the cycle timed out, or we stopped.
        _SETTLE_STEPS.run(conn, where | {"outcome": result["verdict"]})
    if final:
        finish_cycle(conn, night_id, cycle, result, cycle_fields)


def finish_cycle(
    conn: Connection,
    night_id: str,
    cycle: int,
    result: dict[str, Any],
    cycle_fields: dict[str, Any] | None = None,
) -> None:
    """Mark a cycle done with its final attempt's ``result``. ``cycle_fields`` may carry a
    ``verdict`` of the cycle's own (``failed_on_fallback``) besides the attempt's."""
    fields = dict(cycle_fields or {})
    verdict = fields.pop("verdict", None) or result["verdict"]
    if "knobs" in fields and not isinstance(fields["knobs"], str | None):
        fields["knobs"] = _json(fields["knobs"])
    if "knobs_off" in fields and not isinstance(fields["knobs_off"], str | None):
        fields["knobs_off"] = _json(fields["knobs_off"] or None)  # none off: NULL
    values = fields | {
        "status": "done",
        "verdict": verdict,
        "ended_at": result["ended_at"],
        "duration_s": result["duration_s"],
    }
    sql.update("cycles", tuple(values), _CYCLE_KEY).run(conn, values | {"night_id": night_id, "cycle": cycle})


_STEP_STARTED = sql.Statement(
    """
    INSERT INTO steps (night_id, cycle, attempt, seq, name, started_at, outcome)
    VALUES (:night_id, :cycle, :attempt, :seq, :name, :started_at, 'running')
    """
)
_STEP_FINISHED = sql.update(
    "steps",
    ("ended_at", "duration_s", "outcome", "error_type", "error_message"),
    ("night_id", "cycle", "attempt", "seq"),
)


def step_started(
    conn: Connection,
    night_id: str,
    cycle: int,
    attempt: int,
    seq: int,
    name: str,
    started_at: float,
) -> None:
    _STEP_STARTED.run(
        conn,
        {
            "night_id": night_id,
            "cycle": cycle,
            "attempt": attempt,
            "seq": seq,
            "name": name,
            "started_at": started_at,
        },
    )


def step_finished(
    conn: Connection,
    night_id: str,
    cycle: int,
    attempt: int,
    seq: int,
    ended_at: float,
    duration_s: float,
    outcome: str,
    error_type: str | None,
    error_message: str | None,
) -> None:
    _STEP_FINISHED.run(
        conn,
        {
            "night_id": night_id,
            "cycle": cycle,
            "attempt": attempt,
            "seq": seq,
            "ended_at": ended_at,
            "duration_s": duration_s,
            "outcome": outcome,
            "error_type": error_type,
            "error_message": redact(error_message),
        },
    )


_ARTIFACT_SAVED = sql.Statement(
    """
    INSERT INTO artifacts (night_id, cycle, attempt, name, path, size, created_at)
    VALUES (:night_id, :cycle, :attempt, :name, :path, :size, :created_at)
    ON CONFLICT (night_id, cycle, attempt, name)
    DO UPDATE SET path = excluded.path, size = excluded.size, created_at = excluded.created_at
    """
)


def artifact_saved(
    conn: Connection,
    night_id: str,
    cycle: int,
    attempt: int,
    name: str,
    path: str,
    size: int,
    created_at: float,
) -> None:
    _ARTIFACT_SAVED.run(
        conn,
        {
            "night_id": night_id,
            "cycle": cycle,
            "attempt": attempt,
            "name": name,
            "path": path,
            "size": size,
            "created_at": created_at,
        },
    )


_ADD_EVENT = sql.insert(
    "events", ("night_id", "ts", "kind", "cycle", "attempt", "component", "message", "data")
)


def add_event(
    conn: Connection,
    night_id: str,
    ts: float,
    kind: str,
    message: str | None = None,
    data: Any = None,
    cycle: int | None = None,
    attempt: int | None = None,
    component: str | None = None,
) -> None:
    _ADD_EVENT.run(
        conn,
        {
            "night_id": night_id,
            "ts": ts,
            "kind": kind,
            "cycle": cycle,
            "attempt": attempt,
            "component": component,
            "message": redact(message),
            "data": _json(data),
        },
    )


def finish_night(
    conn: Connection,
    night_id: str,
    ended_at: float,
    status: str,
    reason: str,
    fingerprint_end: str,
) -> None:
    conn.execute(
        update(s.nights)
        .where(s.nights.c.id == night_id)
        .values(
            ended_at=ended_at,
            status=status,
            end_reason=redact(reason),
            protected_fingerprint_end=fingerprint_end,
        )
    )


def set_deadline(conn: Connection, night_id: str, deadline: float | None) -> None:
    conn.execute(update(s.nights).where(s.nights.c.id == night_id).values(deadline=deadline))


# -- the repair agent (schema v2) ------------------------------------------------------


_RECORD_PROBE = sql.insert(
    "probes", ("night_id", "component", "ts", "healthy", "latency_s", "fault_kind", "detail", "trigger")
)


def record_probe(
    conn: Connection,
    night_id: str,
    component: str,
    ts: float,
    healthy: bool,
    latency_s: float,
    fault_kind: str | None,
    detail: str | None,
    trigger: str,
) -> None:
    _RECORD_PROBE.run(
        conn,
        {
            "night_id": night_id,
            "component": component,
            "ts": ts,
            "healthy": healthy,
            "latency_s": latency_s,
            "fault_kind": fault_kind,
            "detail": redact(detail),
            "trigger": trigger,
        },
    )


def open_incident(
    conn: Connection,
    night_id: str,
    component: str,
    fault_kind: str,
    trigger: str,
    detected_at: float,
    detail: str | None,
) -> int:
    result = conn.execute(
        s.incidents.insert().values(
            night_id=night_id,
            component=component,
            fault_kind=fault_kind,
            trigger=trigger,
            detected_at=detected_at,
            state="open",
            detail=redact(detail),
        )
    )
    return _new_id(result)


def update_incident(conn: Connection, incident_id: int, values: dict[str, Any]) -> None:
    values = dict(values)
    if "detail" in values:
        values["detail"] = redact(values["detail"])
    if "degradation_avoided" in values and not isinstance(values["degradation_avoided"], str | None):
        values["degradation_avoided"] = _json(values["degradation_avoided"])
    conn.execute(update(s.incidents).where(s.incidents.c.id == incident_id).values(**values))


def start_repair(
    conn: Connection, night_id: str, incident_id: int, component: str, strategy: str, started_at: float
) -> int:
    result = conn.execute(
        s.repairs.insert().values(
            night_id=night_id,
            incident_id=incident_id,
            component=component,
            strategy=strategy,
            started_at=started_at,
            verified=False,
        )
    )
    return _new_id(result)


def finish_repair(
    conn: Connection,
    repair_id: int,
    duration_s: float,
    result: str,
    knobs_changed: dict[str, Any] | None,
    detail: str | None,
) -> None:
    conn.execute(
        update(s.repairs)
        .where(s.repairs.c.id == repair_id)
        .values(
            duration_s=duration_s,
            result=result,
            knobs_changed=_json(knobs_changed) if knobs_changed else None,
            detail=redact(detail),
        )
    )


def verify_repair(conn: Connection, repair_id: int) -> None:
    conn.execute(update(s.repairs).where(s.repairs.c.id == repair_id).values(verified=True))


def start_fallback(
    conn: Connection, night_id: str, component: str, incident_id: int | None, kind: str, started_at: float
) -> int:
    result = conn.execute(
        s.fallbacks.insert().values(
            night_id=night_id, component=component, incident_id=incident_id, kind=kind, started_at=started_at
        )
    )
    return _new_id(result)


def end_fallback(conn: Connection, fallback_id: int, ended_at: float) -> None:
    conn.execute(update(s.fallbacks).where(s.fallbacks.c.id == fallback_id).values(ended_at=ended_at))
