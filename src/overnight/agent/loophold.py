"""How long an awaitable held the event loop without yielding.

A user's ``async def probe()`` that calls ``time.sleep(2)`` (or a sync client) freezes
every cycle, probe and timer of the night for those two seconds. Loop-lag samples show
that it happened, not who did it; this wrapper times each synchronous stretch of one
coroutine (every ``send``/``throw`` into it), so the report can name the probe or repair.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Generator
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

# What a person notices as a stall. asyncio's debug threshold (0.1 s) also flags one-off
# client construction in SDKs (an SSL context takes ~0.1 s), which would put a warning in
# every morning's report; a real blocking call (time.sleep, a sync driver) is well above.
BLOCKING_S = 0.25


class LoopHold(Generic[T]):
    """``await LoopHold(coro)`` is ``await coro``, and afterwards ``longest`` is the
    longest time the coroutine ran without yielding to the loop, ``held`` the sum."""

    __slots__ = ("_awaitable", "held", "longest")

    def __init__(self, awaitable: Awaitable[T]) -> None:
        self._awaitable = awaitable
        self.longest = 0.0
        self.held = 0.0

    def _note(self, t0: float) -> None:
        stretch = time.perf_counter() - t0
        self.held += stretch
        self.longest = max(self.longest, stretch)

    def __await__(self) -> Generator[Any, Any, T]:
        inner = self._awaitable.__await__()
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    out = inner.send(send) if throw is None else inner.throw(throw)
                except StopIteration as stop:
                    self._note(t0)
                    return cast(T, stop.value)  # what the wrapped awaitable returned
                except BaseException:
                    self._note(t0)
                    raise
                self._note(t0)
                try:
                    send, throw = (yield out), None
                except GeneratorExit:
                    raise
                except BaseException as exc:  # a cancellation or timeout: pass it in, as `await` would
                    send, throw = None, exc
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
