"""``Component.call`` with a plain, blocking function: it runs in a worker thread, so the
event loop goes on meanwhile; it is bounded by the deadline around the call (a cycle's
timeout, a probe's) like an async call; and a thread that outlives that deadline, which
Python cannot kill, is left to finish on its own while the call ends on time. Real
blocking ``requests`` calls against a loopback server that answers only when told."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from overnight.components import Component, ComponentSpec
from overnight.components.base import is_async_callable
from overnight.runtime import CallScope, current_call

from .helpers import run_and_read
from .support.loopback import Loopback


class _Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, Any, str | None]] = []

    def event(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        self.events.append((kind, message, data, component))


@pytest.fixture
def slow() -> Iterator[Loopback]:
    """A server that reads the request, says so (``received``), and answers 200 only once
    ``release`` is set."""
    server = Loopback("slow", body=b'{"answer": 42}')
    try:
        yield server
    finally:
        server.close()


def _component(tmp_path: Path) -> tuple[Component, _Recorded]:
    comp = Component(ComponentSpec("api", {}, tmp_path))
    recorder = _Recorded()
    comp.bind(recorder)
    return comp, recorder


async def test_a_sync_call_runs_in_a_thread_while_the_loop_goes_on(tmp_path: Path, slow: Loopback) -> None:
    comp, _ = _component(tmp_path)
    call = asyncio.create_task(comp.call("get", requests.get, slow.url(), timeout=10))
    # The server has the request and holds its answer: the call is blocked in requests,
    # and this coroutine (on the same loop) still runs.
    assert await asyncio.to_thread(slow.received.wait, 10)
    assert not call.done()
    slow.release.set()
    response = await asyncio.wait_for(call, 10)
    assert response.json() == {"answer": 42}


async def test_a_sync_call_ends_at_its_deadline_and_its_thread_is_left_to_finish(
    tmp_path: Path, slow: Loopback
) -> None:
    comp, recorder = _component(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # as a cycle's or a probe's timeout bounds a call
            await comp.call("get", requests.get, slow.url(), timeout=30)
    took = time.perf_counter() - t0
    assert took < 2.0, took  # on time, although requests would wait 30 s
    assert slow.received.is_set() and not slow.release.is_set()  # the thread is still in the call
    ((kind, message, data, component),) = recorder.events
    assert (kind, component, data["op"]) == ("call_abandoned", "api", "get")
    assert "still in the blocking call" in (message or "")
    slow.release.set()  # the abandoned thread now returns, and its result is dropped


async def test_abandoned_calls_never_starve_the_loops_own_threads(tmp_path: Path, slow: Loopback) -> None:
    """Sync calls have threads of their own: calls stuck past their deadline do not hold
    the default executor, which the night's own work (ledger reads, the ownership check,
    sync scenarios) runs on."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    comp, _ = _component(tmp_path)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await comp.call("get", requests.get, slow.url(), timeout=30)
    async with asyncio.timeout(5):
        assert await asyncio.to_thread(lambda: "the loop's own thread is free") == (
            "the loop's own thread is free"
        )
    slow.release.set()


async def test_the_call_scope_reaches_the_thread_and_awaitables_are_awaited(tmp_path: Path) -> None:
    comp, _ = _component(tmp_path)
    scope = CallScope("n1", cycle=7, attempt=2, steps=["ask"])
    current_call.set(scope)

    def which_cycle() -> int | None:
        seen = current_call.get()
        return seen.cycle if seen else None

    async def answer() -> str:
        return "async"

    class AsyncCallable:
        async def __call__(self) -> str:
            return "async object"

    assert await comp.call("sync", which_cycle) == 7
    assert await comp.call("async", answer) == "async"
    assert await comp.call("lambda", lambda: answer()) == "async"  # a plain function returning a coroutine
    assert await comp.call("object", AsyncCallable()) == "async object"
    assert scope.calls == {"ask": {"api": 4}}
    assert is_async_callable(answer) and is_async_callable(AsyncCallable())
    assert not is_async_callable(which_cycle) and not is_async_callable(requests.get)


async def test_a_sync_call_past_the_cycle_timeout_ends_the_attempt_on_time(
    tmp_path: Path, slow: Loopback
) -> None:
    """A night: the scenario's component calls requests (sync, no timeout of its own worth
    the name) against a server that does not answer. The attempt ends at the cycle's
    timeout with the ``timeout`` verdict; the thread is abandoned, and recorded so."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "api_component.py").write_text(
        "import requests\n"
        "import overnight\n"
        "class Api(overnight.Component):\n"
        "    async def get(self, url):\n"
        "        return await self.call('get', requests.get, url, timeout=60)\n"
    )
    code = f"""
    async def cycle(ctx):
        async with ctx.step("fetch"):
            await ctx.components["api"].get("{slow.url()}")
    """
    config = '[components.api]\ntype = "api_component:Api"\n'
    t0 = time.perf_counter()
    try:
        night = await run_and_read(tmp_path, code, config, cycles=1, retry_attempts=0, cycle_timeout=1.0)
    finally:
        slow.release.set()
    assert time.perf_counter() - t0 < 30
    ((attempt,),) = night.attempts.values()
    assert attempt["verdict"] == "timeout" and attempt["step"] == "fetch"
    assert attempt["duration_s"] < 3.0, attempt["duration_s"]
    assert "timeout of 1 s" in attempt["error_message"]
    (abandoned,) = night.events("call_abandoned")
    assert abandoned["component"] == "api" and (abandoned["cycle"], abandoned["attempt"]) == (1, 1)
    assert json.loads(abandoned["data"]) == {"op": "get", "step": "fetch"}
    assert not night.events("component_fault")  # a deadline of ours, not a fault of the service
