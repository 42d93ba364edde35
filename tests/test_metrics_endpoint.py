"""``overnight run --metrics-port``: a real night's /metrics, scraped over loopback while
it runs, through an incident of a component whose probe the test breaks and mends; the
counts of a resumed night; the port free after the night whatever ended it; bad values
of the options as one line and exit 2, before any night starts."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overnight.engine.metrics import MetricsEndpoint
from overnight.engine.orchestrator import NightOutcome, Orchestrator
from overnight.engine.progress import LogProgress
from overnight.engine.resume import find_resumable
from overnight.ledger import Ledger

from .conftest import make_project, run_cli
from .helpers import make_plan, write_project
from .test_bad_input import one_line_exit_2

# (metric sample name, labels other than night) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Cycles wait on files the test writes, so each scrape sees a known moment of the night.
SCENARIO = """
import asyncio, pathlib

FOLDER = pathlib.Path({folder!r})

async def _wait_for(name):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (FOLDER / name).exists():
        if loop.time() > deadline:
            raise RuntimeError(f"the test never wrote {{name}}")
        await asyncio.sleep(0.02)

async def cycle(ctx):
    if ctx.cycle == 3:
        await _wait_for("release")
    if ctx.cycle == 5:
        await _wait_for("finish")
"""

# A dependency that is down while the file "broken" exists; its one repair waits for the
# test to mend it (bounded by the agent's repair_timeout), then a probe verifies it.
DEPENDENCY = """
import asyncio, pathlib
import overnight
from overnight.agent import Strategy
from overnight.components import ProbeResult

BROKEN = pathlib.Path({folder!r}) / "broken"

class Dep(overnight.Component):
    async def probe(self):
        if BROKEN.exists():
            return ProbeResult(False, 0.0, "unavailable", "the test broke it")
        return ProbeResult(True, 0.0, None, "fine")

class WaitForFix(Strategy):
    name = "wait_for_fix"

    async def run(self, ctx):
        while BROKEN.exists():
            await asyncio.sleep(0.02)
        return "the test mended it"
"""


def _config(dep: str) -> str:
    return f"""
[agent]
probe_period = 0.1
probe_timeout = 3
cooldown = 0.05
max_backoff = 0.2
repair_timeout = 30

[components.dep]
type = "{dep}:Dep"
repairs = {{ unavailable = ["{dep}:WaitForFix"] }}
"""


def _samples(text: str, night: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            assert labels.pop("night") == night, s
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def _scrape_until(
    client: httpx.AsyncClient, url: str, night: str, what: str, cond: Callable[[Samples], bool]
) -> Samples:
    """Scrape until ``cond`` holds, within a bound (the night runs on this same loop)."""
    deadline = time.monotonic() + 20
    while True:
        response = await client.get(url)
        assert response.status_code == 200
        samples = _samples(response.text, night)
        if cond(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}; last scrape: {samples}")
        await asyncio.sleep(0.05)


def _port_is_free(port: int) -> bool:
    """Nobody listens on it: the next night can listen there (with SO_REUSEADDR, as every
    server does, since the scrapes' closed connections linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


async def _finish(night: asyncio.Task[NightOutcome], folder: Path) -> NightOutcome:
    """Let every held cycle go and wait for the night's end, within a bound."""
    for name in ("release", "finish"):
        (folder / name).touch()
    (folder / "broken").unlink(missing_ok=True)
    async with asyncio.timeout(30):
        return await night


async def test_a_night_and_its_incident_on_the_metrics_endpoint(tmp_path: Path) -> None:
    folder = tmp_path / "switches"
    folder.mkdir()
    dep = f"dep_{uuid.uuid4().hex[:10]}"
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{dep}.py").write_text(DEPENDENCY.format(folder=str(folder)))
    cfg, _ = write_project(project, SCENARIO.format(folder=str(folder)), _config(dep))
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    endpoint = MetricsEndpoint("127.0.0.1", 0)
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics" and endpoint.port > 0
    orch = Orchestrator(
        make_plan(cfg, tmp_path / "nights", cycles=5),
        ledger,
        progress=LogProgress(),
        handle_signals=False,
        metrics=endpoint,
    )
    night = asyncio.create_task(orch.run())
    nid, url = orch.night_id, endpoint.url
    passed = key("overnight_cycles_total", verdict="passed")
    healthy = key("overnight_component_healthy", component="dep")
    incident = key("overnight_incidents_open", component="dep")
    verified = key("overnight_repairs_total", component="dep", strategy="wait_for_fix", result="verified")
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            # Two cycles passed, the third runs; the dependency was probed healthy.
            s = await _scrape_until(
                client, url, nid, "2 passed, 1 in flight, dep probed healthy",
                lambda s: s.get(passed) == 2 and s.get(healthy) == 1
                and s.get(key("overnight_attempts_in_flight")) == 1,
            )  # fmt: skip
            assert s[key("overnight_cycles_planned")] == 5
            assert all(s[key("overnight_cycles_total", verdict=v)] == 0 for v in ("failed", "infra_error"))
            assert s[key("overnight_component_probed", component="dep")] == 1
            assert s[incident] == 0 and s[key("overnight_gate_open")] == 1
            assert s[key("overnight_gate_hold_reasons")] == 0
            assert 0 <= s[key("overnight_loop_lag_seconds")] < 1.0
            assert 0 <= s[key("overnight_seconds_since_last_passed_cycle")] < 10
            assert not [k for k in s if k[0] == "overnight_repairs_total"]

            # The dependency goes down: health 0, its incident open, the gate holding.
            (folder / "broken").touch()
            s = await _scrape_until(
                client, url, nid, "dep down, incident open, gate holding",
                lambda s: s.get(healthy) == 0 and s.get(incident) == 1
                and s.get(key("overnight_gate_open")) == 0,
            )  # fmt: skip
            assert s[key("overnight_gate_hold_reasons")] == 1
            assert s[key("overnight_attempts_in_flight")] == 1  # cycle 3 was already running
            assert s[passed] == 2

            # Mended: the repair is counted verified, the incident closed, the gate open.
            (folder / "broken").unlink()
            s = await _scrape_until(
                client, url, nid, "the verified repair",
                lambda s: s.get(verified) == 1 and s.get(incident) == 0 and s.get(healthy) == 1
                and s.get(key("overnight_gate_open")) == 1,
            )  # fmt: skip
            assert [k for k in s if k[0] == "overnight_repairs_total"] == [verified]

            # Cycles 3 and 4 pass; 5 waits. The time since the last pass starts again.
            (folder / "release").touch()
            s = await _scrape_until(
                client, url, nid, "4 passed",
                lambda s: s.get(passed) == 4 and s.get(key("overnight_attempts_in_flight")) == 1,
            )  # fmt: skip
            assert s[key("overnight_seconds_since_last_passed_cycle")] < 5
            assert s[key("overnight_cycles_total", verdict="failed")] == 0

        outcome = await _finish(night, folder)
    finally:
        if not night.done():
            await _finish(night, folder)
        ledger.close()
    assert outcome.status == "completed"
    # The night closed its endpoint: the port is free and nobody answers.
    assert _port_is_free(endpoint.port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


RESUMED = """
import asyncio, pathlib

GO = pathlib.Path({go!r})

async def cycle(ctx):
    while ctx.cycle == 3 and not GO.exists():
        await asyncio.sleep(0.02)
"""


async def test_a_resumed_night_counts_from_its_ledger(tmp_path: Path) -> None:
    go = tmp_path / "go"
    cfg, _ = write_project(tmp_path / "project", RESUMED.format(go=str(go)))
    nights = tmp_path / "nights"
    ledger = Ledger(str(nights / "overnight.db"))
    try:
        # Session 1: two cycles pass, the third holds; interrupted there (as by Ctrl-C).
        first = MetricsEndpoint("127.0.0.1", 0)
        orch = Orchestrator(
            make_plan(cfg, nights, cycles=4),
            ledger,
            progress=LogProgress(),
            handle_signals=False,
            metrics=first,
        )
        night = asyncio.create_task(orch.run())
        async with httpx.AsyncClient(timeout=5) as client:
            await _scrape_until(
                client, first.url, orch.night_id, "2 passed",
                lambda s: s.get(key("overnight_cycles_total", verdict="passed")) == 2,
            )  # fmt: skip
        orch.interrupt("the test stops the night")
        async with asyncio.timeout(30):
            assert (await night).status == "interrupted"
        assert _port_is_free(first.port)  # closed on an interrupted night too
        ended = time.time()

        # Session 2: the counter goes on from the ledger's 2, never from 0; the time since
        # the last pass counts from session 1's last passed cycle, the gap included.
        second = MetricsEndpoint("127.0.0.1", 0)
        resumed = Orchestrator(
            make_plan(cfg, nights, cycles=4),
            ledger,
            progress=LogProgress(),
            handle_signals=False,
            resume=find_resumable(ledger, orch.night_id),
            metrics=second,
        )
        night = asyncio.create_task(resumed.run())
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                s = await _scrape_until(
                    client, second.url, orch.night_id, "the cycles counter",
                    lambda s: key("overnight_cycles_total", verdict="passed") in s,
                )  # fmt: skip
                assert s[key("overnight_cycles_total", verdict="passed")] == 2
                since = s[key("overnight_seconds_since_last_passed_cycle")]
                assert since >= time.time() - ended
        finally:
            go.touch()
            async with asyncio.timeout(30):
                assert (await night).status == "completed"
    finally:
        ledger.close()
    assert _port_is_free(second.port)


BLOCKING = """
import pathlib, time

FOLDER = pathlib.Path({folder!r})

async def cycle(ctx):
    if ctx.cycle == 2:
        # A blocking call in async code: the whole loop stops until the test has seen it.
        (FOLDER / "blocking").touch()
        deadline = time.monotonic() + 10
        while not (FOLDER / "seen").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""


async def test_a_blocked_loop_shows_as_growing_lag(tmp_path: Path) -> None:
    """A loop that cannot run cannot refresh anything: the scrape (in the server's thread)
    still shows the stall growing, and the time since the last pass growing with it."""
    folder = tmp_path / "switches"
    folder.mkdir()
    cfg, _ = write_project(tmp_path / "project", BLOCKING.format(folder=str(folder)))
    ledger = Ledger(str(tmp_path / "nights" / "overnight.db"))
    endpoint = MetricsEndpoint("127.0.0.1", 0)
    orch = Orchestrator(
        make_plan(cfg, tmp_path / "nights", cycles=2),
        ledger,
        progress=LogProgress(),
        handle_signals=False,
        metrics=endpoint,
    )
    seen: list[Samples] = []

    def watch() -> None:
        # A thread of its own: the loop it would otherwise run on is the one blocked.
        deadline = time.monotonic() + 20
        try:
            while not (folder / "blocking").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            while time.monotonic() < deadline:
                s = _samples(httpx.get(endpoint.url, timeout=5).text, orch.night_id)
                seen.append(s)
                if s[key("overnight_loop_lag_seconds")] >= 0.5:
                    return
                time.sleep(0.05)
        finally:
            (folder / "seen").touch()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        async with asyncio.timeout(30):
            outcome = await orch.run()
    finally:
        (folder / "seen").touch()
        watcher.join(30)
        ledger.close()
    assert outcome.status == "completed"
    assert seen and seen[-1][key("overnight_loop_lag_seconds")] >= 0.5, seen[-1:]
    since = [s[key("overnight_seconds_since_last_passed_cycle")] for s in seen]
    assert since == sorted(since) and since[-1] - since[0] >= 0.3, since


NOOP = "async def cycle(ctx):\n    pass\n"


def _nights_in(ledger: Path) -> list[str]:
    if not ledger.exists():
        return []
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT id FROM nights")]
        except sqlite3.OperationalError:
            return []  # no table yet: no night either


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--metrics-port", "-1"], "--metrics-port: expected a port from 0 to 65535"),
        (["--metrics-port", "70000"], "--metrics-port: expected a port from 0 to 65535"),
        (["--metrics-port", "abc"], "'--metrics-port'"),
        (["--metrics-host", "127.0.0.1"], "--metrics-host: only with --metrics-port"),
        (
            ["--metrics-port", "0", "--metrics-host", "192.0.2.1"],
            "--metrics-host: cannot listen on '192.0.2.1'",
        ),
        (["--metrics-port", "IN_USE"], "--metrics-port: 127.0.0.1:IN_USE is already in use"),
    ],
)
def test_bad_metrics_options_are_one_line_before_the_night(
    tmp_path: Path, args: list[str], expect: str
) -> None:
    proj = make_project(tmp_path / "p", NOOP, name="s")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [a.replace("IN_USE", port) for a in args]
        line = one_line_exit_2(run_cli(["run", "--cycles", "1", *args], cwd=proj))
    assert expect.replace("IN_USE", port) in line, line
    assert _nights_in(proj / "night_tests" / "overnight.db") == []


def test_an_ephemeral_port_is_said_and_freed_by_the_cli(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", NOOP, name="s")
    res = run_cli(["run", "--cycles", "2", "--metrics-port", "0"], cwd=proj)
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("overnight: metrics at ")]
    assert len(said) == 1, res.stderr
    url = said[0].removeprefix("overnight: metrics at ")
    port = int(url.removeprefix("http://127.0.0.1:").removesuffix("/metrics"))
    assert url == f"http://127.0.0.1:{port}/metrics"
    assert _port_is_free(port)
