"""The night's Prometheus endpoint (``overnight run --metrics-port N``).

prometheus-client serves ``/metrics`` from its own thread, with a registry of our own
(never the process-wide one). Scrapes never touch the night's mutable state: a small
task on the event loop copies what it needs (verdict counts, the running attempts, the
gate, each monitor's last probe and open incident, the repair tally) into an immutable
snapshot every ``TICK_S`` and measures the loop's scheduling delay as it goes; a scrape
only reads the latest snapshot and the clock. Names, types and labels are listed in the
README ("Prometheus metrics"); every series carries the ``night`` label.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import UsageError
from ..ledger import Ledger, queries
from ..verdicts import CYCLE_VERDICTS
from .gate import Gate
from .progress import ProgressSink

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..agent import RepairAgent

log = logging.getLogger("overnight")

DEFAULT_HOST = "127.0.0.1"
# How often the snapshot is refreshed and the loop's lag sampled: ten small wake-ups a
# second (the repair agent samples its lag as often), so a stall of 0.1 s shows.
TICK_S = 0.1
# The lag gauge is the longest delay over this window: a scrape every 15 s still sees
# a one-second stall between two scrapes.
LAG_WINDOW_S = 15.0
# serve_forever polls its shutdown flag every 0.5 s: closing takes at most about that.
CLOSE_S = 5.0


@dataclass(frozen=True)
class NightView:
    """The live objects of the night process the endpoint reads (on the loop only)."""

    night_id: str
    planned: int
    gate: Gate
    progress: ProgressSink
    components: tuple[str, ...]
    agent: RepairAgent | None
    ledger: Ledger
    clock: Callable[[], float]


@dataclass(frozen=True)
class _Snapshot:
    """What a scrape reports; replaced whole (one reference assignment), never changed."""

    night_id: str
    planned: int = 0
    # Final verdicts so far; None until the night's cycles start (a resumed night's count
    # comes from the ledger then, so the counter never starts from 0 and jumps).
    counts: tuple[tuple[str, int], ...] | None = None
    in_flight: int = 0
    gate_open: bool = True
    gate_reasons: int = 0
    # component -> its last probe said healthy; None: never probed (no sample is given).
    health: tuple[tuple[str, bool | None], ...] = ()
    incidents: tuple[tuple[str, int], ...] = ()
    repairs: tuple[tuple[tuple[str, str, str], int], ...] = ()
    # The clock reading of the last passed cycle's end (or of the night's start); None
    # until the endpoint has started watching the night.
    passed_ref: float | None = None
    lag_max: float = 0.0
    tick_at: float = field(default_factory=time.monotonic)


class _Collector(Collector):
    """Builds the metric families from the latest snapshot, in the server's thread."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self._endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        ep = self._endpoint
        s = ep.snapshot
        night = s.night_id
        if not night:
            return
        yield _gauge("overnight_cycles_planned", "cycles planned for the night", night, s.planned)
        if s.counts is not None:
            cycles = CounterMetricFamily(
                "overnight_cycles",
                "cycles that ended, by final verdict (a resumed night counts its earlier sessions)",
                labels=["night", "verdict"],
            )
            for verdict, n in s.counts:
                cycles.add_metric([night, verdict], n)
            yield cycles
        yield _gauge("overnight_attempts_in_flight", "cycle attempts running now", night, s.in_flight)
        gate = "1 while new attempts may start, 0 while the gate holds them"
        yield _gauge("overnight_gate_open", gate, night, 1 if s.gate_open else 0)
        reasons = "reasons the gate holds new attempts for (one per component that closed it)"
        yield _gauge("overnight_gate_hold_reasons", reasons, night, s.gate_reasons)
        probed = GaugeMetricFamily(
            "overnight_component_probed",
            "1 once the component has been probed this session, 0 before (or without a probe)",
            labels=["night", "component"],
        )
        healthy = GaugeMetricFamily(
            "overnight_component_healthy",
            "1 if the component's last probe said healthy, 0 if it said unhealthy; "
            "no sample before its first probe",
            labels=["night", "component"],
        )
        for name, ok in s.health:
            probed.add_metric([night, name], 0 if ok is None else 1)
            if ok is not None:
                healthy.add_metric([night, name], 1 if ok else 0)
        yield probed
        yield healthy
        incidents = GaugeMetricFamily(
            "overnight_incidents_open",
            "incidents open now (0 or 1) per monitored component",
            labels=["night", "component"],
        )
        for name, n in s.incidents:
            incidents.add_metric([night, name], n)
        yield incidents
        repairs = CounterMetricFamily(
            "overnight_repairs",
            "repair attempts this session, by component, strategy and result "
            "(verified, not_verified, failed, refused, skipped)",
            labels=["night", "component", "strategy", "result"],
        )
        for (component, strategy, result), n in s.repairs:
            repairs.add_metric([night, component, strategy, result], n)
        yield repairs
        if s.passed_ref is not None:
            yield _gauge(
                "overnight_seconds_since_last_passed_cycle",
                "seconds since the last passed cycle ended (since the night's start if none passed)",
                night,
                max(ep.clock() - s.passed_ref, 0.0),
            )
            # A loop blocked right now cannot refresh the snapshot: the time since its
            # last tick beyond the tick period is a delay too, and it grows while it lasts.
            stalled = max(time.monotonic() - s.tick_at - TICK_S, 0.0)
            yield _gauge(
                "overnight_loop_lag_seconds",
                f"longest event-loop scheduling delay over the last {LAG_WINDOW_S:g} s, "
                "or the current stall if longer",
                night,
                max(s.lag_max, stalled),
            )


def _gauge(name: str, doc: str, night: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["night"])
    g.add_metric([night], value)
    return g


class MetricsEndpoint:
    """``/metrics`` of one night process; a ``NightService`` of the orchestrator.

    Bound at construction (so a port in use is said before the night starts), told what
    to read by ``watch``, refreshed from ``start`` on, and closed by ``stop`` (or
    ``close``) whatever ended the night: the port is free afterwards.
    """

    def __init__(self, host: str, port: int) -> None:
        # The night's clock once watching (read in the server's thread: a plain call).
        self.clock: Callable[[], float] = time.time
        self.snapshot = _Snapshot("")
        self._view: NightView | None = None
        self._task: asyncio.Task[None] | None = None
        self._lags: deque[tuple[float, float]] = deque()
        self._passed_seen = 0  # passed cycles already accounted for in _passed_ref
        self._passed_ref: float | None = None
        self._refresh_failed = False
        self._closed = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(_bind_error(host, port, exc)) from None
        self._server: WSGIServer | None = server
        self._thread = thread
        bound = server.server_address[1]
        self.port: int = int(bound)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    # -- what the night gives it -------------------------------------------------------

    def watch(self, view: NightView) -> None:
        """Read this night from now on (the orchestrator calls it once its parts exist)."""
        self._view = view
        self.clock = view.clock
        self.snapshot = _Snapshot(view.night_id, planned=view.planned, tick_at=time.monotonic())

    # -- NightService ------------------------------------------------------------------

    async def start(self, started_at: float, resumed: bool) -> None:
        view = self._view
        if view is None:
            return
        ref = started_at
        if resumed:
            # Time since the last passed cycle counts across sessions, the downtime included.
            self._passed_seen, last = await asyncio.to_thread(_passed_before, view.ledger, view.night_id)
            ref = last if last is not None else started_at
        self._passed_ref = ref
        self._refresh(0.0)
        # The CLI said the address already; the night's log keeps it too.
        log.info("metrics at %s", self.url, extra={"console": False})
        self._task = asyncio.create_task(self._run(), name="metrics")

    async def before_cycle(self, cycle: int) -> None:
        """Nothing per cycle: the snapshot keeps its own period."""

    async def stop(self, reason: str) -> None:
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        finally:
            # In a thread (shutdown waits for the server's poll); cancelled or not, the
            # thread closes the server to the end.
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop serving and free the port; idempotent, safe from any thread."""
        with self._closed:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()  # waits for serve_forever to return (its poll: 0.5 s)
            server.server_close()
        self._thread.join(CLOSE_S)

    # -- the snapshot (on the loop) ------------------------------------------------------

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(TICK_S)
            self._refresh(max(time.monotonic() - t0 - TICK_S, 0.0))

    def _refresh(self, lag: float) -> None:
        view = self._view
        if view is None:
            return
        now = time.monotonic()
        # The window's maximum, kept in O(1) a tick: a delay no larger than a later one
        # can never be the maximum again, so only decreasing delays are kept.
        while self._lags and self._lags[-1][1] <= lag:
            self._lags.pop()
        self._lags.append((now, lag))
        while self._lags[0][0] < now - LAG_WINDOW_S:
            self._lags.popleft()
        try:
            self.snapshot = self._take(view, now)
        except Exception:  # our bug: the endpoint shows stale values, the night goes on
            if not self._refresh_failed:
                self._refresh_failed = True
                log.exception("the metrics snapshot failed; /metrics keeps its last values")

    def _take(self, view: NightView, now: float) -> _Snapshot:
        state = view.progress.state
        counts: tuple[tuple[str, int], ...] | None = None
        # The sink is told the night started (with the ledger's counts) as cycles begin.
        if state.night_id == view.night_id:
            verdicts = [str(v) for v in CYCLE_VERDICTS]
            extra = sorted(set(state.counts) - set(verdicts))
            counts = tuple((v, int(state.counts.get(v, 0))) for v in verdicts + extra)
            # A pass of this session since the last tick: ended within TICK_S of now.
            passed = int(state.counts.get("passed", 0))
            if passed > self._passed_seen:
                self._passed_ref = view.clock()
                self._passed_seen = passed
        agent = view.agent
        health: dict[str, bool | None] = dict.fromkeys(view.components)
        incidents: list[tuple[str, int]] = []
        repairs: tuple[tuple[tuple[str, str, str], int], ...] = ()
        if agent is not None:
            for name, monitor in agent.monitors.items():
                probe = monitor.last_probe
                health[name] = None if probe is None else bool(probe.healthy)
                incidents.append((name, 0 if monitor.incident is None else 1))
            repairs = tuple(sorted(agent.repair_counts.items()))
        return _Snapshot(
            night_id=view.night_id,
            planned=view.planned,
            counts=counts,
            in_flight=len(state.running),
            gate_open=view.gate.is_open,
            gate_reasons=len(view.gate.reasons),
            health=tuple(health.items()),
            incidents=tuple(incidents),
            repairs=repairs,
            passed_ref=self._passed_ref,
            lag_max=self._lags[0][1],
            tick_at=now,
        )


def _passed_before(ledger: Ledger, night_id: str) -> tuple[int, float | None]:
    with ledger.read() as conn:
        return queries.passed_cycles(conn, night_id)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """One line naming the option at fault: the host (unknown, not this machine's) or
    the port (in use, not allowed)."""
    detail = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"--metrics-host: cannot listen on {host!r}: {detail}"
    if exc.errno == errno.EADDRINUSE:
        return f"--metrics-port: {host}:{port} is already in use"
    return f"--metrics-port: cannot listen on {host}:{port}: {detail}"
