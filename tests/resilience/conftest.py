"""The resilience suite attacks the night itself; it shares test_resume's helpers."""

from ..test_resume import spawned  # noqa: F401 - the fixture: kills what a failed test left running
