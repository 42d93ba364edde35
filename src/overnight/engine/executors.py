"""Where an attempt runs: the executor's one job, the same whatever runs it.

``execute_attempt`` is one call of the scenario on one cycle's input, ended by its
verdict; the night's own process runs it (``inline``), or a worker process or Ray actor
does (``workers``), on the same code. The attempt loop (``attempts``) decides everything
around it: the attempt's records, retries, the gate, the marks of fallbacks and knobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import ProtectedSettings
from ..errors import InfraError, LedgerUnavailable, ProductFailure
from ..redaction import redact
from ..runtime import CallScope, current_call
from ..verdicts import Verdict, classify, error_type_name
from .context import CycleContext, CycleInput
from .journal import TRACEBACK_MAX

EXECUTORS = ("inline", "process", "ray")
_scenario_log = logging.getLogger("overnight.scenario")


class ScenarioExited(RuntimeError):
    """The scenario raised SystemExit or KeyboardInterrupt: a harness error of that
    attempt, never the end of the night (or of a worker)."""


class CycleTimeout(TimeoutError):
    """The cycle ran past its ``cycle_timeout`` and was cancelled."""


@dataclass(frozen=True)
class AttemptRequest:
    """One attempt to run: the cycle's input is derived from the night's seed."""

    cycle: int
    attempt: int
    seed: int
    started: float  # clock time the attempt's row says it started


@dataclass
class AttemptOutcome:
    """How an attempt ended, as the attempt loop records it (picklable: a worker sends it)."""

    verdict: Verdict
    duration: float
    step: str | None = None
    # error_type, error_message, traceback (and fault_component, fault_kind on infra errors)
    error: dict[str, Any] = field(default_factory=dict)
    open_steps: bool = False
    rerun_others: bool = False
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    # A worker's crash counts once more (``crashed``); a lost node or worker is the
    # infrastructure's (``interrupted``, not counted).
    worker: str | None = None

    @property
    def message(self) -> str | None:
        msg = self.error.get("error_message")
        return msg if isinstance(msg, str) else None


class Canceller(Protocol):
    """What may cancel a running attempt (the night's ``Stopping``, or a worker's own)."""

    def cancellable(self, task: asyncio.Task[Any]) -> contextlib.AbstractContextManager[None]: ...


class AttemptSlot(Protocol):
    """One parallel slot of an executor: runs one attempt at a time."""

    def is_ready(self) -> bool:
        """Whether ``run`` can start an attempt at once (no worker to start first)."""

    async def ready(self) -> None:
        """Be ready to run an attempt now (a worker started), before the attempt is
        recorded as started: a worker's start is not its attempt's time. Never raises
        for a worker that cannot start: the next ``run`` says so as its outcome."""

    async def run(self, request: AttemptRequest) -> AttemptOutcome:
        """Run the attempt; a cancellation (the night interrupted) ends it ``interrupted``.
        Raises only on our own failure (the ledger)."""


class Executor(Protocol):
    name: str

    async def start(self) -> None: ...

    def slot(self, index: int) -> AttemptSlot: ...

    async def stop(self, reason: str) -> None:
        """The night is ending: its workers leave (each within a bound)."""


@dataclass
class AttemptEnv:
    """What an attempt needs from where it runs: its night, its scenario, its handles and
    where its records go (the ledger, or a worker's channel to the night's ledger)."""

    night_id: str
    night_path: Path
    seed: int
    scenario: Callable[..., Any]
    settings: ProtectedSettings
    handles: Mapping[str, Any]
    ledger: Any  # Ledger, or anything with its submit / write / write_sync
    cycle_timeout: float
    on_step: Callable[[int, str | None], None] | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.scenario)


def cycle_logger(cycle: int) -> logging.Logger:
    """``ctx.log``: named for its cycle, a child of ``overnight.scenario``, and not kept in
    logging's registry (``getLogger`` would keep one logger per cycle for the whole
    night: 100,000 of them in a long one)."""
    logger = logging.Logger(f"{_scenario_log.name}.c{cycle}")
    logger.parent = _scenario_log
    return logger


async def execute_attempt(env: AttemptEnv, req: AttemptRequest, canceller: Canceller) -> AttemptOutcome:
    """Call the scenario once on the cycle's input and say how it ended. A cancellation
    through ``canceller`` ends it ``interrupted``; our own ledger failure is raised."""
    cycle_input = CycleInput.derive(env.seed, req.cycle)
    ctx = CycleContext(
        night_id=env.night_id,
        cycle=req.cycle,
        attempt=req.attempt,
        input=cycle_input,
        settings=env.settings,
        components=env.handles,
        cycle_dir=env.night_path / "cycles" / f"{req.cycle:03d}",
        ledger=env.ledger,
        logger=cycle_logger(req.cycle),
        on_step=env.on_step,
    )
    t0 = time.perf_counter()
    scope = CallScope(env.night_id, req.cycle, req.attempt, ctx._steps)
    task = asyncio.create_task(
        _call_scenario(env, ctx, scope), name=f"cycle-{req.cycle}-attempt-{req.attempt}"
    )
    try:
        with canceller.cancellable(task):
            await asyncio.wait({task})
    finally:
        ctx.close()
    duration = time.perf_counter() - t0
    if task.cancelled():
        return AttemptOutcome(
            Verdict.INTERRUPTED, duration, ctx._cancelled_step, open_steps=ctx.open_steps, calls=scope.calls
        )
    exc = task.exception()
    if isinstance(exc, LedgerUnavailable):
        # Our failure, not the scenario's: no verdict; the night ends (exit 3) and the
        # attempt stays open for resume to close and rerun.
        raise exc
    if exc is None:
        return AttemptOutcome(Verdict.PASSED, duration, open_steps=ctx.open_steps, calls=scope.calls)
    error: dict[str, Any] = {
        "error_type": error_type_name(exc),
        "error_message": redact(str(exc)) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc))[-TRACEBACK_MAX:],
    }
    if isinstance(exc, InfraError):
        error.update(fault_component=exc.component, fault_kind=exc.kind)
    return AttemptOutcome(
        classify(exc),
        duration,
        ctx._step_for(exc),
        error,
        open_steps=ctx.open_steps,
        rerun_others=isinstance(exc, ProductFailure) and exc.rerun_others,
        calls=scope.calls,
    )


async def _call_scenario(env: AttemptEnv, ctx: CycleContext, scope: CallScope) -> None:
    # Component handles read this to attribute usage and faults to cycle and step; the
    # list is ctx's own step stack, so it follows the scenario as it moves on.
    current_call.set(scope)
    timeout = env.cycle_timeout
    try:
        async with asyncio.timeout(timeout) as cm:
            if env.is_async:
                await env.scenario(ctx)
            else:
                # A thread cannot be cancelled: on timeout the attempt ends here and the
                # thread is abandoned; ctx is closed so it records nothing more.
                result = await asyncio.to_thread(env.scenario, ctx)
                if inspect.isawaitable(result):
                    await result
    except TimeoutError:
        if cm.expired():
            raise CycleTimeout(f"cycle exceeded its timeout of {timeout:g} s") from None
        raise
    except (SystemExit, KeyboardInterrupt) as exc:
        # Left alone, these would stop the event loop and the whole night: they are the
        # scenario's doing (our own signals arrive through the loop's handlers).
        what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
        raise ScenarioExited(f"the scenario raised {what}") from None


class InlineExecutor:
    """Every attempt in the night's own process (the default)."""

    name = "inline"

    def __init__(self, env: AttemptEnv, canceller: Canceller) -> None:
        self.env = env
        self.canceller = canceller

    async def start(self) -> None:
        return None

    def slot(self, index: int) -> AttemptSlot:
        return self

    def is_ready(self) -> bool:
        return True

    async def ready(self) -> None:
        return None

    async def run(self, request: AttemptRequest) -> AttemptOutcome:
        return await execute_attempt(self.env, request, self.canceller)

    async def stop(self, reason: str) -> None:
        return None


class LocalCanceller:
    """A canceller of one process's own (a worker's): ``interrupt`` cancels what runs."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.interrupted = False

    @contextlib.contextmanager
    def cancellable(self, task: asyncio.Task[Any]) -> Iterator[None]:
        self._tasks.add(task)
        if self.interrupted:
            task.cancel()
        try:
            yield
        finally:
            self._tasks.discard(task)

    def interrupt(self) -> None:
        self.interrupted = True
        for task in list(self._tasks):
            task.cancel()

    def reset(self) -> None:
        self.interrupted = False
