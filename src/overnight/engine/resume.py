"""Which night a command means: the one to resume, or the one to read."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..ledger import Ledger, queries


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
