"""The states a component's monitor moves through.

Their values are what the ledger records (``component_state`` events: ``from``, ``to``)
and what the report reads back (the health timeline and its colours), so a value never
changes; a StrEnum compares equal to its value and is recorded as it.
"""

from __future__ import annotations

from enum import StrEnum


class MonitorState(StrEnum):
    HEALTHY = "healthy"  # probed healthy (or not probed yet: a night starts trusting)
    SUSPECT = "suspect"  # a probe failed, fewer times in a row than failure_threshold
    UNHEALTHY = "unhealthy"  # an incident is open and not being repaired this moment
    REPAIRING = "repairing"  # a repair strategy is running
    FALLBACK = "fallback"  # the declared fallback serves cycles while the primary is down
    FAILED = "failed"  # escalated: repairs did not restore it, or its monitor keeps crashing
