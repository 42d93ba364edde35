"""Exceptions that carry meaning for the verdict of a cycle, and for the CLI."""

from __future__ import annotations


class OvernightError(Exception):
    """Base class for errors raised by overnight itself."""


class ConfigError(OvernightError):
    """Invalid configuration or plan. Rendered as one line; the CLI exits with 2."""


class UsageError(OvernightError):
    """Invalid use of the CLI (for example, nothing to resume). Exit code 2."""


class LedgerUnavailable(OvernightError):
    """The ledger cannot record any more (disk full, unreachable past its retry window,
    its writer failed). The night cannot keep promise 3, so it ends: exit code 3."""


class LedgerUnreadable(UsageError):
    """The ledger cannot be read (not a ledger, corrupted, truncated). Exit code 2."""


class NightOwned(UsageError):
    """Another live process owns this night (promise 4: one owner per night)."""


class ProductFailure(AssertionError):
    """The product under test is wrong. Final: never retried.

    Raised by ``ctx.fail(reason)``. Subclasses AssertionError so that a plain ``assert``
    in a scenario and ``ctx.fail`` end in the same verdict.

    ``rerun_others``: the attempt also left checks unanswered for an infrastructure reason
    (a pytest suite's tests that met an infra error or a timeout beside the one that
    failed): the cycle gets another attempt, after the gate opens, for those alone. The
    failure itself is not run again, and the cycle's verdict stays failed.
    """

    rerun_others: bool = False


class InfraError(OvernightError):
    """A dependency failed, as classified by the component that called it.

    ``component`` names the component (``database``, ``llm``…), ``kind`` the diagnosed
    fault kind (``connection_lost``, ``quota_exceeded``…). Cycles ending with this error
    get the ``infra_error`` verdict and may earn another attempt.
    """

    def __init__(self, component: str, kind: str, message: str = "") -> None:
        self.component = component
        self.kind = kind
        self.message = message
        super().__init__(f"{component}: {kind}: {message}" if message else f"{component}: {kind}")

    def __reduce__(self) -> tuple[type[InfraError], tuple[str, str, str]]:
        # keep pickling/copying working with the 3-arg constructor
        return (type(self), (self.component, self.kind, self.message))


class ProtectedSettingError(OvernightError, TypeError):
    """Someone tried to change a protected setting during a night."""
