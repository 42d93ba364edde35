"""The ledger's schema: one set of tables for SQLite and PostgreSQL.

Times are seconds since the epoch (UTC) as doubles, so that durations are plain
subtractions on both back ends. The schema is versioned in ``meta``; ``MIGRATIONS``
brings an older ledger forward, one version at a time.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 5

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

nights = Table(
    "nights",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("scenario", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    # running | completed | stopped | interrupted | aborted
    Column("status", String(16), nullable=False),
    Column("end_reason", Text),
    Column("seed", BigInteger, nullable=False),  # 64-bit: any --seed up to 2**63 - 1
    Column("planned_cycles", Integer, nullable=False),
    Column("parallel", Integer, nullable=False),
    Column("deadline", Float),
    # The plan as JSON: bounds, options, and the config as written (secrets stay as
    # ${VAR} references, so the plan can be stored and re-read without leaking them).
    Column("plan", Text, nullable=False),
    Column("config_path", Text),
    Column("config_fingerprint", String(64), nullable=False),
    Column("protected_fingerprint", String(64), nullable=False),
    Column("protected_fingerprint_end", String(64)),
    Column("night_dir", Text, nullable=False),
    Column("hostname", Text),
    Column("dry_run", Boolean, nullable=False, default=False),
)

# One row per process that worked on a night: the first run and every resume.
sessions = Table(
    "sessions",
    metadata,
    Column("night_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("pid", Integer, nullable=False),
    Column("hostname", Text),
    Column("end_reason", Text),
    ForeignKeyConstraint(["night_id"], ["nights.id"]),
)

cycles = Table(
    "cycles",
    metadata,
    Column("night_id", String(64), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    # pending (started, not final) | done
    Column("status", String(16), nullable=False),
    Column("verdict", String(32)),  # 32 since v4: failed_on_fallback
    Column("attempts", Integer, nullable=False, default=0),
    Column("input_seed", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    # Duration of the final attempt, so that retries do not inflate the cycle's time.
    Column("duration_s", Float),
    Column("protected_fingerprint", String(64)),
    Column("fallback", Boolean, nullable=False, default=False),
    Column("knobs", Text),
    # v4, of the final attempt: JSON {component: {knob: [configured, actual]}} of the knobs
    # a repair had moved off their configured values while it ran; NULL when none were.
    Column("knobs_off", Text),
    ForeignKeyConstraint(["night_id"], ["nights.id"]),
)

attempts = Table(
    "attempts",
    metadata,
    Column("night_id", String(64), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("session", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("duration_s", Float),
    # NULL while running; interrupted when the process stopped under it.
    Column("verdict", String(32)),
    Column("step", Text),
    Column("error_type", Text),
    Column("error_message", Text),
    Column("traceback", Text),
    Column("fault_component", Text),
    Column("fault_kind", Text),
    # v4: the attempt's own marks (the cycle's are its final attempt's). ``fallback``: a
    # declared fallback was active at some moment of it (NULL: recorded before v4).
    Column("fallback", Boolean),
    Column("knobs_off", Text),
    Column("calls", Text),  # JSON {step: {component: calls}} (v5)
    ForeignKeyConstraint(["night_id", "cycle"], ["cycles.night_id", "cycles.cycle"]),
)

steps = Table(
    "steps",
    metadata,
    Column("night_id", String(64), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("duration_s", Float),
    # running | passed | failed | infra_error | timeout | harness_error | interrupted
    Column("outcome", String(16), nullable=False),
    Column("error_type", Text),
    Column("error_message", Text),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("night_id", String(64), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("night_id", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("cycle", Integer),
    Column("attempt", Integer),
    Column("component", Text),
    Column("message", Text),
    Column("data", Text),
)

# -- version 2: the repair agent ---------------------------------------------------------

probes = Table(
    "probes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("night_id", String(64), nullable=False),
    Column("component", String(128), nullable=False),
    Column("ts", Float, nullable=False),
    Column("healthy", Boolean, nullable=False),
    Column("latency_s", Float, nullable=False),
    Column("fault_kind", String(32)),
    Column("detail", Text),
    # periodic | signal (a cycle hit a fault) | verify (after a repair)
    Column("trigger", String(16), nullable=False),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("night_id", String(64), nullable=False),
    Column("component", String(128), nullable=False),
    Column("fault_kind", String(32), nullable=False),  # the diagnosis
    Column("trigger", String(16), nullable=False),  # signal | probe
    Column("detected_at", Float, nullable=False),
    Column("diagnosed_at", Float),
    Column("verified_at", Float),  # set only when a probe said healthy again
    # open | repaired (verified after repairs) | transient (verified, no repair needed)
    # | fallback | escalated
    Column("state", String(16), nullable=False),
    Column("detail", Text),
    Column("escalation", Text),
    # The degrading shortcut that was available and not taken (JSON), when one existed.
    Column("degradation_avoided", Text),
)

repairs = Table(
    "repairs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("night_id", String(64), nullable=False),
    Column("incident_id", Integer, nullable=False),
    Column("component", String(128), nullable=False),
    Column("strategy", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_s", Float),
    # done (the action ran to its end; ``verified`` says whether it restored the
    # component; "ok" in older ledgers) | failed | refused (by the guard) | skipped (it had
    # nothing to do, e.g. reconnect on a component with no client: not a repair)
    Column("result", String(16)),
    Column("verified", Boolean, nullable=False, default=False),
    Column("knobs_changed", Text),  # JSON {knob: [from, to]}
    Column("detail", Text),
)

fallbacks = Table(
    "fallbacks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("night_id", String(64), nullable=False),
    Column("component", String(128), nullable=False),
    Column("incident_id", Integer),
    Column("kind", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
)

Index("ix_events_night_ts", events.c.night_id, events.c.ts)
Index("ix_probes_night_comp", probes.c.night_id, probes.c.component, probes.c.ts)
Index("ix_incidents_night", incidents.c.night_id)
Index("ix_nights_started", nights.c.started_at)


def _v2(conn: Connection) -> None:
    """v1 → v2 only adds tables (probes, incidents, repairs, fallbacks), which
    ``create_all`` has already made; nothing to move."""


def _v3(conn: Connection) -> None:
    """v2 → v3: night seeds are 64-bit (SQLite's INTEGER always was)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE nights ALTER COLUMN seed TYPE BIGINT"))


def _v4(conn: Connection) -> None:
    """v3 → v4: per-attempt fallback and knobs-off marks, knobs off on cycles, and room
    for the ``failed_on_fallback`` verdict (PostgreSQL enforces VARCHAR lengths)."""
    have = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("cycles", "attempts")}
    added = (
        ("attempts", "fallback", "BOOLEAN"),
        ("attempts", "knobs_off", "TEXT"),
        ("cycles", "knobs_off", "TEXT"),
    )
    for table, column, kind in added:
        if column not in have[table]:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    if conn.dialect.name == "postgresql":
        for table in ("cycles", "attempts"):
            conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN verdict TYPE VARCHAR(32)"))


def _v5(conn: Connection) -> None:
    """v4 → v5: each attempt records which components it called, per step."""
    if "calls" not in {c["name"] for c in inspect(conn).get_columns("attempts")}:
        conn.execute(text("ALTER TABLE attempts ADD COLUMN calls TEXT"))


# version -> callable(connection) that upgrades from version-1 to version.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _v2, 3: _v3, 4: _v4, 5: _v5}
