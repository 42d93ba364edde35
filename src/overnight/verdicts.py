"""Verdicts of cycles and attempts, and how an exception maps onto one."""

from __future__ import annotations

import asyncio
from enum import StrEnum

from .errors import InfraError


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INFRA_ERROR = "infra_error"
    TIMEOUT = "timeout"
    HARNESS_ERROR = "harness_error"
    # Cycle-only: the cycle's attempt failed its product check while a declared fallback
    # was active, and no rerun on the primary gave a verdict (the primary did not return
    # before the night stopped, or the retry budget ran out). Not a product failure: the
    # night has no trustworthy product verdict for that cycle.
    FAILED_ON_FALLBACK = "failed_on_fallback"
    # A worker process or Ray actor died under the attempt (a segfault, os._exit, an OOM
    # kill). Tried once more on a fresh worker; the same input crashing again is final:
    # the scenario's or the product's, never the infrastructure's.
    CRASHED = "crashed"
    # Attempt-only: the process stopped (signal or crash) before the attempt ended.
    # An interrupted attempt does not end its cycle; the cycle reruns on resume.
    INTERRUPTED = "interrupted"


CYCLE_VERDICTS: tuple[Verdict, ...] = (
    Verdict.PASSED,
    Verdict.FAILED,
    Verdict.INFRA_ERROR,
    Verdict.TIMEOUT,
    Verdict.HARNESS_ERROR,
    Verdict.FAILED_ON_FALLBACK,
    Verdict.CRASHED,
)

# Only dependency trouble earns another attempt. A product failure is final (promise 1),
# and so is our own bug: retrying a harness error would hide it.
RETRYABLE: frozenset[Verdict] = frozenset({Verdict.INFRA_ERROR, Verdict.TIMEOUT})


def error_type_name(exc: BaseException) -> str:
    """How an error's type is recorded: bare for builtins and our own, dotted otherwise."""
    t = type(exc)
    # Bare for every module of ours, so moving a class between modules changes nothing.
    if t.__module__ == "builtins" or t.__module__.startswith("overnight."):
        return t.__name__
    return f"{t.__module__}.{t.__qualname__}"


def classify(exc: BaseException) -> Verdict:
    """Map an exception that ended an attempt onto its verdict."""
    if isinstance(exc, InfraError):
        return Verdict.INFRA_ERROR
    if isinstance(exc, AssertionError):
        return Verdict.FAILED
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Verdict.TIMEOUT
    return Verdict.HARNESS_ERROR
