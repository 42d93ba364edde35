"""Run the night's event loop to its end without waiting on abandoned threads.

``asyncio.run`` ends by joining the default executor, so one sync scenario stuck in a
call (a thread cannot be cancelled) would keep a stopped night from ever exiting. This
runner closes the loop without that join; ``exit_now`` then ends the process even if
such a thread is still alive, once everything of ours is flushed and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CANCEL_WAIT_S = 5.0
_THREAD_GRACE_S = 1.0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run(main)``, minus the unbounded wait for executor threads."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()  # shuts the default executor down without waiting for it


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait(tasks, timeout=_CANCEL_WAIT_S))


def stuck_threads() -> list[threading.Thread]:
    """Non-daemon threads other than the main one that are still alive after a grace
    period: the interpreter would wait for them forever at exit."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in others:
        thread.join(_THREAD_GRACE_S / max(len(others), 1))
    return [t for t in others if t.is_alive()]


def exit_now(code: int) -> None:
    """``sys.exit(code)``, or, when a thread we cannot stop would block the exit, flush
    and leave without waiting for it (everything of the night is committed by then)."""
    if stuck_threads():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)
