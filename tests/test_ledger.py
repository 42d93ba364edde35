"""The ledger itself: schema versioning, the writer's isolation and retry, and what a
night does when the ledger's connection is cut under it (real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, update

from overnight.errors import LedgerUnavailable, UsageError
from overnight.ledger import SCHEMA_VERSION, Ledger, ops, queries, store
from overnight.ledger import schema as s

from .helpers import run_night


def _night_row(night_dir: str) -> dict[str, Any]:
    """A running night "n1" of one planned cycle, as ``ops.create_night`` takes it."""
    return {
        "id": "n1",
        "scenario": "x:y",
        "started_at": 1.0,
        "status": "running",
        "seed": 1,
        "planned_cycles": 1,
        "parallel": 1,
        "plan": "{}",
        "config_fingerprint": "f",
        "protected_fingerprint": "p",
        "night_dir": night_dir,
        "dry_run": False,
    }


def test_schema_is_versioned_and_newer_ledgers_are_refused(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    with led.read() as conn:
        version = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()
    assert int(version) == SCHEMA_VERSION
    led.write_sync(lambda c: c.execute(update(s.meta).values(value=str(SCHEMA_VERSION + 1))))
    led.close()
    with pytest.raises(UsageError, match="upgrade overnight"):
        Ledger(ledger_url)


def test_a_v3_ledger_is_upgraded_to_the_current_version(ledger_url: str) -> None:
    """v4 adds the attempts' fallback and knobs-off marks and the cycles' knobs off (v5 the
    attempts' calls per step), and
    makes room for ``failed_on_fallback`` (PostgreSQL enforces VARCHAR(16))."""
    from sqlalchemy import inspect, text

    led = Ledger(ledger_url)
    pg = led.dialect == "postgresql"

    def back_to_v3(conn: Any) -> None:
        for table, column in (
            ("attempts", "fallback"),
            ("attempts", "knobs_off"),
            ("cycles", "knobs_off"),
            ("attempts", "calls"),
        ):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        if pg:
            for table in ("cycles", "attempts"):
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN verdict TYPE VARCHAR(16)"))
        conn.execute(update(s.meta).values(value="3"))

    led.write_sync(back_to_v3)
    led.close()
    led = Ledger(ledger_url)
    try:
        with led.read() as conn:
            version = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()
            columns = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("cycles", "attempts")}
        assert int(version) == SCHEMA_VERSION == 5
        assert {"fallback", "knobs_off", "calls"} <= columns["attempts"] and "knobs_off" in columns["cycles"]
        night = _night_row("/tmp")
        led.write_sync(ops.create_night, night)
        led.write_sync(ops.attempt_begin, "n1", 1, 1, 1, 1.0, "7", "p")
        result = {"ended_at": 2.0, "duration_s": 1.0, "verdict": "failed", "fallback": True, "knobs_off": {}}
        led.write_sync(
            ops.attempt_finished, "n1", 1, 1, result, True, {"verdict": "failed_on_fallback", "knobs_off": {}}
        )
        with led.read() as conn:
            cycle = queries.cycles_of(conn, "n1")[0]
            attempt = queries.attempts_of(conn, "n1")[0]
        assert (cycle["verdict"], cycle["knobs_off"]) == ("failed_on_fallback", None)
        assert (attempt["verdict"], attempt["fallback"], attempt["knobs_off"]) == ("failed", True, None)
    finally:
        led.close()


def test_one_bad_write_does_not_take_its_batch_down(tmp_path: Path) -> None:
    led = Ledger(str(tmp_path / "l.db"))
    try:
        row = _night_row(str(tmp_path))
        led.write_sync(ops.create_night, row)
        futures = [
            led.submit(ops.add_event, "n1", 2.0, "first"),
            led.submit(ops.create_night, row),  # duplicate primary key: fails alone
            led.submit(ops.add_event, "n1", 3.0, "second"),
        ]
        assert futures[0].result() is None and futures[2].result() is None
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            futures[1].result()
        with led.read() as conn:
            kinds = [e["kind"] for e in queries.events_of(conn, "n1")]
        assert kinds == ["first", "second"]
    finally:
        led.close()


def test_sqlite_ledger_is_in_wal_mode(tmp_path: Path) -> None:
    led = Ledger(str(tmp_path / "wal.db"))
    try:
        with led.read() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert mode == "wal"
    finally:
        led.close()


async def test_ledger_connection_cut_mid_night_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    """The night's PostgreSQL ledger backends are terminated during cycle 3: the writer
    reconnects and retries the batch, and every cycle is recorded exactly once."""
    code = f"""
    import asyncio, psycopg

    async def cycle(ctx):
        async with ctx.step("work"):
            if ctx.cycle == 3:
                def cut():
                    with psycopg.connect({pg_url!r}, autocommit=True) as conn:
                        return conn.execute(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        ).fetchone()[0]
                ctx.artifact("terminated.txt", str(await asyncio.to_thread(cut)))
    """
    outcome, report, ledger = await run_night(tmp_path, code, cycles=6, ledger_url=pg_url)
    ledger.close()
    assert int((outcome.night_path / "cycles" / "003" / "terminated.txt").read_text()) >= 1
    assert outcome.status == "completed"
    assert report["totals"]["passed"] == 6
    assert [c["cycle"] for c in report["cycles"]] == [1, 2, 3, 4, 5, 6]
    assert all(len(c["attempts"]) == 1 for c in report["cycles"])


async def test_dead_ledger_stops_the_night_and_resume_finishes_it(
    tmp_path: Path, pg_url: str, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger refuses connections from cycle 3 on: the night stops with an internal
    error instead of running blind; once the ledger is back, --resume completes it."""
    monkeypatch.setattr(store, "WRITE_RETRY_S", 1.0)
    db = pg_url.rsplit("/", 1)[1]
    code = f"""
    import asyncio, psycopg

    async def cycle(ctx):
        if ctx.cycle == 3 and ctx.attempt == 1:
            def block():
                with psycopg.connect({pg_admin_url!r}, autocommit=True) as conn:
                    conn.execute('ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        ("{db}",),
                    )
            await asyncio.to_thread(block)
    """
    from overnight.engine.orchestrator import Orchestrator
    from overnight.engine.progress import LogProgress

    from .helpers import make_plan, write_project

    cfg, _ = write_project(tmp_path / "project", code)
    plan = make_plan(cfg, tmp_path / "nights", cycles=5)
    ledger = Ledger(pg_url)
    orch = Orchestrator(plan, ledger, progress=LogProgress(), handle_signals=False)
    # The night stops at once with the ledger's own error (exit 3 in the CLI), no hang.
    outcome = await orch.run()
    assert isinstance(orch.fatal, LedgerUnavailable) and "writes failed" in str(orch.fatal)
    assert outcome.status == "aborted"
    ledger.close()

    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    ledger = Ledger(pg_url)
    try:
        with ledger.read() as conn:
            night = queries.get_night(conn, orch.night_id)
            assert night is not None and night["status"] == "running"
            done_before = queries.done_cycles(conn, orch.night_id)
        assert done_before == {1, 2}
        resumed = Orchestrator(plan, ledger, progress=LogProgress(), resume=night, handle_signals=False)
        outcome = await resumed.run()
        assert outcome.status == "completed"
        with ledger.read() as conn:
            cycles = queries.cycles_of(conn, orch.night_id)
        assert [(c["cycle"], c["status"], c["verdict"]) for c in cycles] == [
            (i, "done", "passed") for i in range(1, 6)
        ]
    finally:
        ledger.close()


@pytest.mark.parametrize("steps", [0, 1])
async def test_a_cycle_costs_two_round_trips_and_four_statements_plus_its_steps(
    tmp_path: Path, ledger_url: str, steps: int
) -> None:
    """The ledger's cost of a passing cycle, counted on the real engine: two awaited
    writes (its attempt begins, its attempt ends) and four statements on the cycle and
    attempt tables; a step adds its two writes and its two statements."""
    import threading

    from sqlalchemy import event

    from .helpers import make_orchestrator

    code = "async def cycle(ctx):\n" + (
        "    async with ctx.step('work'):\n        pass\n" if steps else "    pass\n"
    )
    orch, ledger = make_orchestrator(tmp_path, code, ledger_url=ledger_url, cycles=6, parallel=2)
    statements: list[str] = []
    writes: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if threading.current_thread().name == "overnight-ledger":  # writes, not the reads
            statements.append(" ".join(statement.split()).upper())

    real_write = ledger.write

    async def write(op: Any, *args: Any) -> Any:
        writes.append(op.__name__)
        return await real_write(op, *args)

    event.listen(ledger.engine, "before_cursor_execute", counted)
    ledger.write = write  # type: ignore[method-assign]  # counts the awaited round trips
    try:
        outcome = await orch.run()
    finally:
        event.remove(ledger.engine, "before_cursor_execute", counted)
        ledger.close()
    assert outcome.status == "completed"
    per_cycle = ("attempt_begin", "attempt_finished", "step_started", "step_finished")
    cycle_writes = [w for w in writes if w in per_cycle]
    assert len(cycle_writes) == 6 * (2 + 2 * steps), writes
    on_cycles = [
        s
        for s in statements
        if s.startswith(("INSERT", "UPDATE", "SELECT", "DELETE"))
        and any(f" {t} " in f" {s} " for t in ("CYCLES", "ATTEMPTS", "STEPS"))
    ]
    assert len(on_cycles) == 6 * (4 + 2 * steps), on_cycles
    assert not [s for s in on_cycles if s.startswith("SELECT")]  # an upsert, no read first
