"""Which night a command means: the one to resume, or the one to read; and reopening it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..errors import UsageError
from ..ledger import Ledger, ops, queries
from .journal import Journal
from .plan import compute_deadline

log = logging.getLogger("overnight")


def find_resumable(led: Ledger, night_id: str | None) -> dict[str, Any]:
    """The named night (a unique prefix will do), or the last unfinished one. A night a
    live process still runs is refused when the orchestrator claims it (naming the owner)."""
    with led.read() as conn:
        if night_id is None:
            night = queries.last_night(conn, resumable_only=True)
            if night is None:
                raise UsageError(f"no unfinished night to resume in {led.display_url}")
        else:
            night = queries.get_night(conn, pick_night(led, night_id))
    assert night is not None
    # A night stopped by its time bound resumes only when named: a bare --resume must
    # not pick up last week's night.
    if night["status"] not in queries.RESUMABLE and night["status"] != "stopped":
        raise UsageError(
            f"night {night['id']} is {night['status']}; only running, interrupted or aborted "
            "nights resume (and stopped ones, by id)"
        )
    return night


def pick_night(led: Ledger, night_id: str | None) -> str:
    """The named night (a unique prefix will do), or the last one."""
    with led.read() as conn:
        if night_id is None:
            night = queries.last_night(conn)
            if night is None:
                raise UsageError(f"no nights in {led.display_url}")
            return str(night["id"])
        matches = queries.find_nights(conn, night_id)
    if not matches:
        raise UsageError(f"no night {night_id!r} in {led.display_url}")
    if len(matches) > 1:
        raise UsageError(f"night id {night_id!r} is ambiguous: {', '.join(matches[:5])}")
    return str(matches[0])


async def reopen(
    journal: Journal,
    fingerprint: str,
    deadline_override: tuple[float | None, str | None] | None,
    now: float,
) -> tuple[dict[str, Any], float | None]:
    """Reopen the night being resumed, once it is owned: its fresh row and its deadline
    (a new one when given, recorded). Attempts the previous session left running are
    closed, so their cycles run again."""
    night_id = journal.night_id
    # What we were asked to resume may have moved on before we owned it.
    fresh = await asyncio.to_thread(journal.read_night)
    if fresh is None or fresh["status"] not in (*queries.RESUMABLE, "stopped"):
        state = fresh["status"] if fresh else "gone"
        raise UsageError(f"night {night_id} is {state} now; there is nothing to resume")
    if fresh["protected_fingerprint"] != fingerprint:
        raise UsageError(
            f"night {night_id}: its protected settings differ from when it started "
            "(an environment variable changed?); refusing to resume a different night"
        )
    deadline: float | None = fresh["deadline"]
    if deadline_override is not None:
        deadline = compute_deadline(now, *deadline_override)
        await journal.ledger.write(ops.set_deadline, night_id, deadline)
    elif deadline is not None and deadline <= now:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(deadline))
        raise UsageError(
            f"night {night_id}: its time bound passed at {when}; "
            "give --max-hours or --until to resume it with a new one"
        )
    closed = await journal.ledger.write(ops.recover_interrupted, night_id)
    if closed:
        log.info("closed %d attempt(s) left running by the previous session", closed)
    return fresh, deadline
