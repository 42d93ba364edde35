"""How a night stops: its time bound, signals, an abort, a lost claim, our own error.

Two degrees. ``stop`` (the time bound) lets what runs finish and starts nothing new.
``interrupt`` (a signal, an abort, a lost claim, an internal error) also cancels what
runs: the startup (connecting, the setup hook) and every running attempt. Both wake
whatever waits on the night (a cycle held at the gate, in backoff, or waiting for its
primary). A signal is handled from the very start; a second one exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from ..ledger.ownership import NightClaim
from .progress import ProgressSink

log = logging.getLogger("overnight")

TIME_BOUND_REACHED = "time bound reached (--max-hours / --until)"
# How often the night checks that it still owns itself (a PostgreSQL lock connection).
CLAIM_CHECK_S = 15.0


class Stopping:
    """The night's stop state. The orchestrator owns one; cycles read it."""

    def __init__(self, progress: ProgressSink, clock: Callable[[], float], handle_signals: bool) -> None:
        self.progress = progress
        self.clock = clock
        self.handle_signals = handle_signals
        self.stop_starting = False  # no new cycle or attempt starts
        self.interrupted = False  # ... and what ran was cancelled
        self.signal: int | None = None
        self.reason = ""
        self.abort_reason: str | None = None
        # Set when the night stops starting work: wakes cycles held at the gate or in backoff.
        self._stopped = asyncio.Event()
        # What an interrupt cancels: the startup, the running attempts (insertion order).
        self._cancellable: dict[asyncio.Task[Any], None] = {}

    async def wait(self) -> None:
        """Return once the night stops starting work."""
        await self._stopped.wait()

    @contextlib.contextmanager
    def cancellable(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """While inside, an interrupt cancels ``task``, also one that came before: an
        interrupt during the awaits that prepared the task must not let it run on."""
        self._cancellable[task] = None
        if self.interrupted:
            task.cancel()
        try:
            yield
        finally:
            self._cancellable.pop(task, None)

    def stop(self, reason: str) -> None:
        """Start nothing new; what runs finishes (the time bound)."""
        if not self.stop_starting:
            self.stop_starting = True
            self.reason = reason
            self._stopped.set()  # wakes cycles held at the gate or waiting to retry
            log.info("no new cycles will start: %s", reason)

    def fail_start(self, reason: str) -> None:
        """The night cannot start (its setup hook failed): nothing starts, for ``reason``.
        Nothing runs or waits yet, so nothing is woken or cancelled."""
        self.stop_starting = True
        self.reason = reason

    def abort(self, reason: str) -> None:
        """End the night now with a clear reason (the agent's ``abort`` escalation)."""
        if self.abort_reason is None:
            self.abort_reason = reason
            log.error("night aborted: %s", reason)
            self.interrupt(reason)

    def interrupt(self, reason: str, signum: int | None = None) -> None:
        """Stop starting cycles and cancel the running ones (Ctrl-C, SIGTERM)."""
        if self.interrupted:
            return
        self.stop_starting = True
        self.interrupted = True
        self.signal = signum
        self.reason = reason
        self._stopped.set()
        for task in list(self._cancellable):
            task.cancel()

    def arm_deadline(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> asyncio.TimerHandle | None:
        """Stop the night at ``deadline`` (clock time); the caller cancels the handle."""
        if deadline is None:
            return None
        delay = max(deadline - self.clock(), 0.0)
        return loop.call_later(delay, self.stop, TIME_BOUND_REACHED)

    async def watch_claim(self, claim: NightClaim, on_lost: Callable[[str], None]) -> None:
        """A night that lost its ownership (its PostgreSQL lock connection dropped and
        another process took the lock) stops at once rather than run beside the other:
        ``on_lost`` is told why. Runs until cancelled or the claim is lost."""
        while True:
            await asyncio.sleep(CLAIM_CHECK_S)
            try:
                async with asyncio.timeout(CLAIM_CHECK_S):
                    lost = await asyncio.to_thread(claim.check)
            except TimeoutError:
                continue  # the server is slow; the ledger's own writes will say more
            if lost:
                log.error("%s", lost)
                on_lost(lost)
                return

    def install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.handle_signals:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)

    def remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.handle_signals:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.interrupted:
            # Second signal: the user means it. Everything committed is safe; resume
            # closes what was left open.
            self.progress.close()
            os._exit(128 + signum)
        self.progress.message(
            f"{name} received: stopping — cancelling running cycles, writing the report "
            "(send it again to quit at once; 'overnight run --resume' continues this night)"
        )
        self.interrupt(f"{name} received", signum)
