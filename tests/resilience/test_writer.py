"""The ledger's writer thread under attack: cancelled waiters, failing operations, a
bug inside it, a store that fills up. It must never die silently, never run a committed
batch twice, and never leave a waiter hanging."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select, text

from overnight.errors import LedgerUnavailable
from overnight.ledger import Ledger, ops
from overnight.ledger import schema as s


def _night(led: Ledger, night_id: str = "n1") -> str:
    led.write_sync(
        ops.create_night,
        {
            "id": night_id, "scenario": "s:c", "started_at": 0.0, "status": "running", "seed": 1,
            "planned_cycles": 1, "parallel": 1, "deadline": None, "plan": "{}", "config_path": None,
            "config_fingerprint": "x", "protected_fingerprint": "x", "night_dir": "/tmp", "hostname": "h",
            "dry_run": False,
        },
    )  # fmt: skip
    return night_id


def _messages(led: Ledger, night_id: str) -> list[str]:
    with led.read() as conn:
        return [r[0] for r in conn.execute(select(s.events.c.message).where(s.events.c.night_id == night_id))]


@pytest.mark.parametrize("seed", range(5))
async def test_cancelled_waiters_never_disturb_the_writer(ledger_url: str, seed: int) -> None:
    """2,000 writes, about half of their waiters cancelled at random moments (before
    the write is taken, while it is in a batch, after it committed): every write lands
    exactly once and the writer answers the next one."""
    rng = random.Random(seed)
    led = Ledger(ledger_url)
    try:
        night = _night(led)
        submitted: set[int] = set()

        async def one(i: int) -> None:
            submitted.add(i)  # write() submits before its first await: this write is queued
            await led.write(ops.add_event, night, 0.0, "e", f"m{i}")

        tasks = [asyncio.create_task(one(i)) for i in range(2000)]
        for i, task in enumerate(tasks):
            if rng.random() < 0.5:
                task.cancel()
            if i % rng.randint(5, 50) == 0:
                await asyncio.sleep(0)  # let some batches commit between cancellations
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), {
            type(r) for r in results
        }
        async with asyncio.timeout(10):
            await led.write(ops.add_event, night, 0.0, "e", "after")
        messages = _messages(led, night)
        # A task cancelled before it ran submitted nothing; every other write landed once.
        assert sorted(messages) == sorted([f"m{i}" for i in submitted] + ["after"])
        assert len(submitted) > 1000
        assert led.broken is None
    finally:
        led.close()


def _boom(conn: Connection) -> None:
    raise ValueError("a bad operation")


async def test_a_bad_operation_fails_alone_and_its_neighbours_commit_once(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    try:
        night = _night(led)
        futures = []
        for i in range(300):
            futures.append(led.submit(ops.add_event, night, 0.0, "e", f"m{i}"))
            if i % 50 == 7:
                futures.append(led.submit(_boom))
                futures.append(led.submit(ops.create_night, {"id": night}))  # a constraint error
        for fut in futures:
            fut.exception(timeout=30)  # every waiter answered
        errors = [f.exception() for f in futures if f.exception() is not None]
        assert len(errors) == 12 and sum(isinstance(e, ValueError) for e in errors) == 6
        assert sorted(_messages(led, night)) == sorted(f"m{i}" for i in range(300))
        assert led.broken is None
    finally:
        led.close()


def _bug(conn: Connection) -> None:
    raise KeyboardInterrupt  # a BaseException inside the writer: our bug, not a caller's


async def test_a_bug_inside_the_writer_breaks_the_ledger_loudly_never_silently(tmp_path: Path) -> None:
    led = Ledger(str(tmp_path / "l.db"))
    try:
        night = _night(led)
        with pytest.raises(LedgerUnavailable, match="writer failed: KeyboardInterrupt"):
            async with asyncio.timeout(10):
                await led.write(_bug)
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await led.write(ops.add_event, night, 0.0, "e", "later")
        assert time.monotonic() - t0 < 1.0  # at once, no hang, no retry window
        assert isinstance(led.broken, LedgerUnavailable)
    finally:
        led.close()


async def test_a_full_store_breaks_the_ledger_at_once(tmp_path: Path) -> None:
    """SQLite's own 'database or disk is full' (a page cap stands in for the disk here;
    the night-level test fills a real filesystem): no 60 s of retries, one clear error,
    and what was committed before stays readable."""
    led = Ledger(str(tmp_path / "l.db"))
    try:
        night = _night(led)
        await led.write(ops.add_event, night, 0.0, "e", "kept")
        pages = await led.write(lambda c: c.execute(text("PRAGMA page_count")).scalar())
        await led.write(lambda c: c.execute(text(f"PRAGMA max_page_count = {pages + 2}")))
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="database or disk is full"):
            for i in range(10_000):
                await led.write(ops.add_event, night, 0.0, "e", "x" * 2000 + str(i))
        assert time.monotonic() - t0 < 10
        with led.read() as conn:
            assert conn.execute(select(func.count()).select_from(s.events)).scalar() >= 1
        assert "kept" in _messages(led, night)
    finally:
        led.close()
