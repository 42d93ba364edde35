"""The attempt loop: a cycle's attempts, each one call of the scenario, until one is final.

Only infrastructure failures earn another attempt (promise 1), within the retry budget
and after a backoff; a product failure while a fallback served the cycle reruns on the
primary once it is back (promise 2). Every attempt is recorded before it is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..components import Component
from ..errors import LedgerUnavailable
from ..ledger import Ledger, ops
from ..redaction import redact
from ..verdicts import RETRYABLE, Verdict
from .context import CycleInput
from .cycles import CycleSource
from .executors import AttemptOutcome, AttemptRequest, AttemptSlot
from .gate import Gate
from .plan import Plan
from .progress import ProgressSink
from .services import NightService
from .stopping import Stopping

if TYPE_CHECKING:
    from ..agent import RepairAgent

log = logging.getLogger("overnight")
ERROR_IN_LINE = 300  # characters of an error in its log line; the ledger keeps it whole
CRASHES_FINAL = 2  # a cycle's crashes on fresh workers that make the crash its verdict


class CycleRunner:
    """Runs the cycles of one session of a night, within the night's bounds (``stopping``)."""

    def __init__(
        self,
        *,
        plan: Plan,
        ledger: Ledger,
        night_id: str,
        session: int,
        fingerprint: str,
        components: Mapping[str, Component],
        gate: Gate,
        stopping: Stopping,
        progress: ProgressSink,
        clock: Callable[[], float],
        agent: RepairAgent | None,
        services: Sequence[NightService],
        attempts_used: Mapping[int, tuple[int, int, int]],
        fail: Callable[[BaseException, str], None],
    ) -> None:
        self.plan = plan
        self.ledger = ledger
        self.night_id = night_id
        self.session = session
        # The night's, from its start: stored with every cycle and attempt.
        self.fingerprint = fingerprint
        self.components = components
        self.gate = gate
        self.stopping = stopping
        self.progress = progress
        self.clock = clock
        self.agent = agent
        self.services = list(services)
        # cycle -> (last attempt number, attempts that counted, crashes) from earlier sessions.
        self.attempts_used = attempts_used
        # Told of our own failure (most likely the ledger is unreachable): ends the night.
        self.fail = fail
        # Names InfraErrors gave that the config does not declare (said once each).
        self._undeclared: set[str] = set()

    async def work(self, source: CycleSource, slot: AttemptSlot) -> None:
        """One parallel slot: run the source's cycles one by one on ``slot`` (the
        executor's) until none is left or the night stops starting work."""
        while not self.stopping.stop_starting:
            cycle = source.next()
            if cycle is None:
                return
            try:
                await self.run_cycle(cycle, slot)
            except Exception as exc:
                # Our own failure (most likely the ledger is unreachable). Stop cleanly:
                # running cycles are cancelled and stay pending, so resume reruns them.
                if isinstance(exc, LedgerUnavailable):
                    log.debug("cycle %d: %s", cycle, exc)
                else:
                    log.exception("internal error while running cycle %d", cycle)
                self.fail(exc, f"internal error: {type(exc).__name__}: {redact(str(exc))}")
                return

    async def run_cycle(self, cycle: int, slot: AttemptSlot) -> None:
        """Run ``cycle``'s attempts until one is final, the night stops, or its fallback
        outlives the night. Raises only on our own failure (the ledger)."""
        plan = self.plan
        cycle_input = CycleInput.derive(plan.seed, cycle)
        last_no, counted, crashes = self.attempts_used.get(cycle, (0, 0, 0))
        budget = 1 + plan.retry_attempts
        while True:
            await self._wait_gate()
            if self.stopping.stop_starting:
                # Nothing new starts once the night is stopping; a cycle held at the gate
                # stays pending (resume runs it) rather than failing for want of time. Its
                # first attempt writes the cycle's row, so a cycle that never began
                # leaves none, and one whose start was written runs that attempt.
                return
            for service in self.services:
                await service.before_cycle(cycle)  # once per cycle: it meets its faults
            if not slot.is_ready() and not await self._slot_ready(slot):
                return  # the night was interrupted while a worker started: still pending
            attempt = last_no = last_no + 1
            verdict, result, error, meta, fallbacks, open_steps, outcome = await self._run_attempt(
                slot, cycle, attempt, cycle_input
            )
            rerun_others = outcome.rerun_others
            if verdict is Verdict.INTERRUPTED:
                await self.ledger.write(
                    ops.attempt_finished, self.night_id, cycle, attempt, result, False, None, open_steps
                )
                self._attempt_line(cycle, attempt, verdict.value, False, result, "", error)
                if outcome.worker is not None and not self.stopping.stop_starting:
                    continue  # its worker or node was lost: the cycle runs again elsewhere
                return
            if verdict is Verdict.CRASHED:
                # A worker died under the attempt. Once may be the machine's; the same
                # input crashing on a fresh worker is the scenario's or the product's:
                # final. Apart from the retry budget, which is for the infrastructure.
                crashes += 1
                final = crashes >= CRASHES_FINAL or self.stopping.stop_starting
                fields = {"protected_fingerprint": self.fingerprint, **meta, "verdict": verdict.value}
                await self.ledger.write(
                    ops.attempt_finished, self.night_id, cycle, attempt, result, final, fields, open_steps
                )
                why = "" if final else " (once more, on a fresh worker)"
                self._attempt_line(cycle, attempt, verdict.value, final, result, why, error)
                if final:
                    return
                continue
            counted += 1
            # A product check that failed while a declared fallback served the cycle says
            # nothing trustworthy about the product: rerun on the primary (promise 2).
            # Only a failure on primaries is a product failure, final (promise 1).
            on_fallback = verdict is Verdict.FAILED and bool(fallbacks)
            # A product failure stays final; with rerun_others, the checks of this attempt
            # that met the infrastructure get another attempt (the verdict stays failed).
            rerun = verdict in RETRYABLE or on_fallback or (verdict is Verdict.FAILED and rerun_others)
            final = not rerun or counted >= budget or self.stopping.stop_starting
            cycle_verdict = Verdict.FAILED_ON_FALLBACK if on_fallback and final else verdict
            fields = {"protected_fingerprint": self.fingerprint, **meta, "verdict": cycle_verdict.value}
            await self.ledger.write(
                ops.attempt_finished, self.night_id, cycle, attempt, result, final, fields, open_steps
            )
            why = "" if final else " (retrying)"
            if rerun_others and not final and not on_fallback:
                why = " (the failure is final; the tests that met the infrastructure run again)"
            if on_fallback:
                then = "cycle failed_on_fallback" if final else "rerun on the primary once it is back"
                why = f" on the {', '.join(fallbacks)} fallback: {then}"
            self._attempt_line(cycle, attempt, cycle_verdict.value, final, result, why, error)
            if final:
                return
            if on_fallback:
                if not await self._wait_primary(fallbacks):
                    # The night stopped before the primary was back: no product verdict.
                    await self.ledger.write(
                        ops.finish_cycle,
                        self.night_id,
                        cycle,
                        result,
                        fields | {"verdict": Verdict.FAILED_ON_FALLBACK.value},
                    )
                    why = (
                        f" — {', '.join(fallbacks)} not back on its primary before the night "
                        f"stopped ({self.stopping.reason})"
                    )
                    self._attempt_line(
                        cycle, attempt, Verdict.FAILED_ON_FALLBACK.value, True, result, why, error
                    )
                    return
                continue
            await self._backoff(counted)

    def _attempt_line(
        self,
        cycle: int,
        attempt: int,
        verdict: str,
        final: bool,
        result: dict[str, Any],
        why: str,
        error: str | None,
    ) -> None:
        """The one log line of a finished attempt (after its commit): orchestrator.log, and
        the console with the progress sink's counts."""
        progress = self.progress.attempt_finished(cycle, attempt, verdict, final, result["duration_s"], error)
        log.info(
            "cycle %d attempt %d: %s in %.3fs%s%s",
            cycle,
            attempt,
            verdict,
            result["duration_s"],
            why,
            f" — {error[:ERROR_IN_LINE]}" if error else "",
            extra={"progress": progress},
        )

    async def _run_attempt(
        self, slot: AttemptSlot, cycle: int, attempt: int, cycle_input: CycleInput
    ) -> tuple[Verdict, dict[str, Any], str | None, dict[str, Any], list[str], bool, AttemptOutcome]:
        """Run one attempt on ``slot``. Returns its verdict, its attempt row, its error
        message, the cycle's fields should it be final, the components whose fallback
        touched it, whether a step of it may still be recorded as running, and the
        outcome itself (``rerun_others``: its product failure asks for its other checks to
        run again; ``worker``: where a crash happened)."""
        started = self.clock()
        # The knob values this attempt ran with, and whether any fallback touched it.
        knobs = {name: comp.knobs.values() for name, comp in self.components.items() if comp.knobs.values()}
        fallbacks: set[str] = set()
        knobs_off: dict[str, dict[str, list[Any]]] = {}
        await self.ledger.write(
            ops.attempt_begin,
            self.night_id,
            cycle,
            attempt,
            self.session,
            started,
            str(cycle_input.seed),
            self.fingerprint,
        )
        self.progress.attempt_started(cycle, attempt)
        t0 = time.perf_counter()
        request = AttemptRequest(cycle, attempt, self.plan.seed, started)
        task = asyncio.create_task(slot.run(request), name=f"run-cycle-{cycle}-attempt-{attempt}")
        with self.stopping.cancellable(task):
            await asyncio.wait({task})
        if task.cancelled():
            outcome = AttemptOutcome(Verdict.INTERRUPTED, time.perf_counter() - t0, open_steps=True)
        else:
            outcome = task.result()  # raises our own failure (the ledger)
        duration = outcome.duration
        if self.agent is not None:
            # Any fallback that was active, and any knob a repair had moved off its
            # configured value, at any moment of the attempt marks it (and the cycle).
            fallbacks |= set(self.agent.fallbacks_during(started, started + duration))
            knobs_off = self.agent.knobs_off_during(started, started + duration)
        meta: dict[str, Any] = {"knobs": knobs, "fallback": bool(fallbacks), "knobs_off": knobs_off}
        verdict = outcome.verdict
        result: dict[str, Any] = {
            "ended_at": started + duration,
            "duration_s": duration,
            "verdict": verdict.value,
            "step": outcome.step,
            "fallback": bool(fallbacks),
            "knobs_off": knobs_off,
            "calls": outcome.calls,
        }
        message = None
        if verdict is Verdict.INTERRUPTED:
            result["error_message"] = outcome.message or f"stopped: {self.stopping.reason or 'interrupted'}"
        elif outcome.error:
            message = outcome.message
            result.update(outcome.error)
            self._check_declared(cycle, outcome.error.get("fault_component"))
        return verdict, result, message, meta, sorted(fallbacks), outcome.open_steps, outcome

    def _check_declared(self, cycle: int, component: object) -> None:
        """Say once per name when an InfraError names a component the config does not declare."""
        if not isinstance(component, str) or component in self.components or component in self._undeclared:
            return
        self._undeclared.add(component)
        log.warning(
            "cycle %d: InfraError names %r, which the config does not declare: no probe "
            "watches it and no repair can run; its retries only wait (declared: %s)",
            cycle,
            component,
            ", ".join(self.components) or "none",
        )

    async def _slot_ready(self, slot: AttemptSlot) -> bool:
        """Let the slot's worker start outside the attempt's time; False when the night
        was interrupted meanwhile."""
        task = asyncio.create_task(slot.ready(), name="slot-ready")
        with self.stopping.cancellable(task):
            await asyncio.wait({task})
        return not task.cancelled() and not self.stopping.interrupted

    async def _wait_gate(self) -> None:
        if not self.gate.is_open:
            log.info("gate closed (%s); holding new attempts", "; ".join(self.gate.reasons.values()))
            waiter = asyncio.create_task(self.gate.wait())
            stopper = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    async def _wait_primary(self, components: list[str]) -> bool:
        """Wait until each component's fallback has ended on a healthy probe of its
        primary, or the night stops (its time bound, a signal, an abort: ``stopping``).
        True when the cycle may rerun on the primary."""
        if self.agent is None:
            return not self.stopping.stop_starting
        log.info("waiting for %s to be back on the primary", ", ".join(components))
        waiter = asyncio.create_task(self.agent.primary_back(components))
        stopper = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        return not self.stopping.stop_starting

    async def _backoff(self, counted: int) -> None:
        delay = min(self.plan.retry_backoff * (2 ** (counted - 1)), 60.0)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
