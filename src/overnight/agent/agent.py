"""The repair agent: watches every component beside the cycles and restores what breaks.

One monitor per component (``monitor``) probes it, is woken at once when a cycle's call
fails, and works its incidents (``incidents``): repairs within bounds (``repairs``), then
the declared fallback or escalation (``escalation``). While a critical component is
unhealthy the orchestrator's gate is closed. The agent runs the monitors, records, tells
people, and answers the orchestrator (fallbacks and knobs off during an attempt).

The agent itself is supervised: a crash inside a monitor (whatever a probe, repair or
strategy raised, a stray CancelledError included) is recorded and the monitor restarts
with backoff; one that keeps crashing escalates like a component that cannot be repaired.
A pause is bounded too (``max_pause``): then the night ends aborted, naming the component.
Just over 400 lines: the supervision and the orchestrator's questions (fallbacks and knobs
during an attempt) read the same monitor state and stay together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from array import array
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..components import Component, describe_error
from ..config import AgentConfig
from ..ledger import Ledger, ops
from ..numbers import plural, span
from ..redaction import redact
from .guard import Guard
from .monitor import ComponentMonitor
from .settings import MonitorSettings
from .states import MonitorState

log = logging.getLogger("overnight.agent")

# A monitor that crashed this many times within the window has a deterministic bug (each
# restart probes the same component the same way, after 1, 2, 4, 8 × the base delay):
# restarting it again only leaves the component unwatched, so it escalates instead. Five
# lets a rare race survive; the window is the default flap window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
_RESTART_DELAY_MAX_S = 60.0


class _MonitorExit(Exception):
    """A BaseException raised inside a monitor by code that was not asked to stop (a
    stray CancelledError; SystemExit or KeyboardInterrupt, which asyncio would let out of
    the loop): carried out as a crash of that monitor, with its traceback, never the
    night's end."""


async def _guarded(run: Any) -> None:
    try:
        await run
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real request to cancel this run: the supervisor decides what it means
        raise _MonitorExit(describe_error(exc)) from exc
    except (SystemExit, GeneratorExit, KeyboardInterrupt) as exc:
        # Our own Ctrl-C arrives through the loop's signal handler, never as this.
        raise _MonitorExit(describe_error(exc)) from exc


class RepairAgent:
    """Runs the monitors; the orchestrator starts it with the night and stops it after."""

    def __init__(
        self,
        components: Mapping[str, Component],
        ledger: Ledger,
        night_id: str,
        night_dir: Path,
        gate: Any,
        config: AgentConfig,
        *,
        on_abort: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        shortcuts: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.ledger = ledger
        # component name -> the scenario's own {shortcut, harm}; else the type's default
        self.shortcuts = {name: dict(s) for name, s in (shortcuts or {}).items()}
        self.night_id = night_id
        self.night_dir = night_dir
        self.gate = gate
        self.config = config
        self.on_abort = on_abort
        self.clock = clock
        self.components = dict(components)
        self.guard = Guard(self.event_nowait, on_knob=self._knob_moved)
        # (component, knob) -> [(agent clock, value set)]: which values were in force
        # when, so every attempt can be marked with the knobs off their configured value.
        self._knob_history: dict[tuple[str, str], list[tuple[float, Any]]] = {}
        self.repairs_done = 0
        self.repairs_verified = 0
        # (component, strategy, result) -> repair attempts this session, for the metrics
        # endpoint: the ledger's result, with "done" told apart as verified / not_verified.
        self.repair_counts: Counter[tuple[str, str, str]] = Counter()
        # Without a probe nothing can be verified, so nothing is monitored or repaired:
        # such components are listed as unmonitored, never shown as healthy.
        self.monitors = {
            name: ComponentMonitor(self, comp, MonitorSettings.for_component(comp, config))
            for name, comp in components.items()
            if comp.has_probe
        }
        self.unmonitored = [name for name, comp in components.items() if not comp.has_probe]
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarts = 0
        # Set by stop(): from then on a CancelledError is the agent's own, not a bug.
        self.stopping = False
        # 8 bytes a sample (10 a second): about 2 MB over an 8-hour night, not 9 MB of floats.
        self.lag_samples: array[float] = array("d")
        # Called with (component, state, detected_at) when an incident is closed verified.
        self.incident_listeners: list[Callable[[str, str, float], None]] = []
        for comp in components.values():
            comp.on_error(self._from_component)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, started_at: float, resumed: bool) -> None:
        self._loop = asyncio.get_running_loop()
        watched = ", ".join(
            f"{name} (probe every {span(m.settings.probe_period)}{', critical' if m.comp.critical else ''})"
            for name, m in self.monitors.items()
        )
        log.info(
            "repair agent started: monitoring %s; not monitored (no probe): %s",
            watched or "nothing",
            ", ".join(self.unmonitored) or "none",
        )
        for name in self.unmonitored:
            self.event_nowait(
                "unmonitored", f"{name} has no probe: not monitored, not repaired", component=name
            )
        for monitor in self.monitors.values():
            self._tasks.append(
                asyncio.create_task(self._supervise(monitor), name=f"monitor-{monitor.comp.name}")
            )
        self._tasks.append(asyncio.create_task(self._measure_lag(), name="agent-lag"))

    async def before_cycle(self, cycle: int) -> None:
        """Nothing to do per cycle: the monitors keep their own periods."""

    async def stop(self, reason: str = "the night ended") -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for monitor in self.monitors.values():
            if monitor.fallback_id is not None:
                await self.write(ops.end_fallback, monitor.fallback_id, self.clock())
                monitor.fallback_id = None
        still_open = [f"{m.comp.name} #{m.incident.id}" for m in self.monitors.values() if m.incident]
        knobs_off = [f"{m.comp.name}.{k}" for m in self.monitors.values() for k in m.comp.knobs.off()]
        log.info(
            "repair agent stopped: %s%s, %s (%d verified), %s",
            plural(len(still_open), "incident") + " open",
            f" ({', '.join(still_open)})" if still_open else "",
            plural(self.repairs_done, "repair") + " done",
            self.repairs_verified,
            f"knobs still off their configured values: {', '.join(knobs_off)}"
            if knobs_off
            else "every knob at its configured value",
        )
        if self.lag_samples:
            data = sorted(self.lag_samples)
            p99 = data[min(len(data) - 1, int(len(data) * 0.99))]
            await self.event(
                "loop_lag",
                f"event loop lag p99 {p99 * 1000:.1f} ms, max {data[-1] * 1000:.1f} ms",
                {"p99_s": p99, "max_s": data[-1], "samples": len(data)},
            )

    async def _supervise(self, monitor: ComponentMonitor) -> None:
        """Run the monitor; restart it whenever it ends, whatever it raised.

        Each run is a task of its own, so whatever user code does inside it (raise
        CancelledError, cancel its own task) cannot reach this one: here a cancellation
        only ever comes from stop(), and it ends the monitor.
        """
        name = monitor.comp.name
        crashes: deque[float] = deque()
        gave_up = False
        # Restarting is probing again: the first restart comes within one probe period.
        base = min(1.0, monitor.settings.probe_period)
        restarted = False
        while True:
            run = asyncio.create_task(_guarded(monitor.run(restarted)), name=f"monitor-run-{name}")
            try:
                await asyncio.wait({run})
            except asyncio.CancelledError:
                run.cancel()
                # A run whose user code swallows its cancellation is left behind, not awaited.
                await asyncio.wait({run}, timeout=1.0)
                raise
            if self.stopping:
                return
            if run.cancelled():
                exc: BaseException = asyncio.CancelledError("the monitor's task was cancelled from within")
            else:
                exc = run.exception() or RuntimeError("the monitor returned")
            restarted = True
            now = time.monotonic()
            crashes.append(now)
            while crashes and crashes[0] < now - RESTART_WINDOW_S:
                crashes.popleft()
            if len(crashes) < MAX_RESTARTS:
                gave_up = False
            delay = min(base * 2 ** (len(crashes) - 1), _RESTART_DELAY_MAX_S)
            self.restarts += 1
            cause = exc.__cause__ if isinstance(exc, _MonitorExit) and exc.__cause__ is not None else exc
            tb = "".join(traceback.format_exception(cause))[-8000:]
            log.error("monitor of %s crashed (%s); restarting in %.1f s", name, describe_error(cause), delay)
            with contextlib.suppress(Exception):
                await self.event(
                    "agent_restarted",
                    f"monitor of {name} crashed: {describe_error(cause)}",
                    {"traceback": tb, "backoff_s": delay, "crashes_in_window": len(crashes)},
                    component=name,
                )
            if len(crashes) >= MAX_RESTARTS and not gave_up:
                gave_up = True
                if not await self._monitor_lost(monitor, len(crashes), cause):
                    return  # abort: the night is ending
            left = monitor.pause_left()
            if left is not None:
                if left <= 0:
                    bound = f"max_pause {span(monitor.settings.max_pause)}"
                    with contextlib.suppress(Exception):
                        await self.event(
                            "escalated",
                            f"{name}: still not watched after a pause of {bound} → abort",
                            {"mode": "abort", "monitor": True, "max_pause_s": monitor.settings.max_pause},
                            component=name,
                        )
                    held = span(monitor.settings.max_pause - left)
                    self.abort(
                        f"{name} not watched for {held}: its monitor kept crashing "
                        f"({describe_error(cause)}); cycles were held until {bound}"
                    )
                    return
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def _monitor_lost(self, monitor: ComponentMonitor, crashes: int, exc: BaseException) -> bool:
        """A monitor that keeps crashing escalates as its component is configured. With
        'abort' the night ends (False); with 'pause' a critical component holds the gate,
        bounded by max_pause, while the monitor is restarted less and less often (True)."""
        name = monitor.comp.name
        mode = monitor.settings.escalation
        why = (
            f"its monitor crashed {crashes} times within {span(RESTART_WINDOW_S)} "
            f"({describe_error(exc)}): the component cannot be watched"
        )
        monitor.set_state(MonitorState.FAILED, why)
        if monitor.incident is not None:
            monitor.incident.escalated = True
            with contextlib.suppress(Exception):
                await self.write(
                    ops.update_incident,
                    monitor.incident.id,
                    {"state": "escalated", "escalation": f"{mode}: {why}"},
                )
        with contextlib.suppress(Exception):
            await self.event(
                "escalated", f"{name}: {why} → {mode}", {"mode": mode, "monitor": True}, component=name
            )
        await self.notify(
            {
                "event": "escalated",
                "component": name,
                "fault_kind": monitor.incident.kind if monitor.incident else None,
                "escalation": mode,
                "reason": why,
                "night_id": self.night_id,
            }
        )
        if mode == "abort":
            self.abort(f"aborted by escalation: {name}: {why}")
            return False
        if monitor.comp.critical:
            # Unwatched, a critical component cannot be vouched for: hold the cycles, as a
            # pause does, until a restarted monitor probes it healthy or max_pause ends it.
            self.gate.close(name, f"{name}: its monitor keeps crashing")
            if monitor.pause_since is None:
                monitor.pause_since = time.monotonic()
        return True

    async def _measure_lag(self, interval: float = 0.1) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            self.lag_samples.append(max(time.perf_counter() - t0 - interval, 0.0))

    # -- signals ---------------------------------------------------------------------

    def _from_component(self, comp: Component, kind: str, exc: BaseException) -> None:
        """The component listener: may run in a scenario thread; hop onto the loop."""
        details = comp.details_of(exc)
        ts = self.clock()
        monitor = self.monitors.get(comp.name)
        if monitor is None or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            monitor.signal(kind, ts, details)
        else:
            self._loop.call_soon_threadsafe(monitor.signal, kind, ts, details)

    def remote_signal(self, component: str, kind: str, details: dict[str, Any], ts: float) -> None:
        """A worker's component met a classified fault (``ts``: when, by the worker's clock):
        the same signal as one of ours. Called on the loop."""
        monitor = self.monitors.get(component)
        if monitor is not None and self._loop is not None:
            monitor.signal(kind, min(ts, self.clock()), details)

    # -- recording ---------------------------------------------------------------------

    async def write(self, op: Any, *args: Any) -> Any:
        return await self.ledger.write(op, *args)

    async def event(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        await self.ledger.write(
            ops.add_event, self.night_id, self.clock(), kind, message, data, None, None, component
        )

    def event_nowait(
        self, kind: str, message: str | None = None, data: Any = None, *, component: str | None = None
    ) -> None:
        self.ledger.submit(
            ops.add_event, self.night_id, self.clock(), kind, message, data, None, None, component
        )

    def abort(self, reason: str) -> None:
        self.on_abort(reason)

    async def notify(self, payload: dict[str, Any]) -> None:
        """Tell people (hook command, webhook). A failure is recorded, never fatal."""
        body = json.dumps(payload, default=str)
        if self.config.notify_command:
            try:
                proc = await asyncio.create_subprocess_shell(
                    self.config.notify_command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                async with asyncio.timeout(30):
                    _, err = await proc.communicate(body.encode())
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"exit {proc.returncode}: {redact(err.decode(errors='replace').strip())[:200]}"
                    )
                await self.event("notified", "notify command ran", {"channel": "command"})
            except Exception as exc:
                await self.event(
                    "notify_failed", f"notify command: {describe_error(exc)}", {"channel": "command"}
                )
        if self.config.notify_webhook:
            try:
                import httpx

                # Building the client loads the CA bundle into a TLS context (0.05-0.25 s of
                # CPU, measured): off the event loop, which runs the night's cycles.
                client = await asyncio.to_thread(httpx.AsyncClient, timeout=10)
                async with client:
                    response = await client.post(
                        self.config.notify_webhook, content=body, headers={"Content-Type": "application/json"}
                    )
                    response.raise_for_status()
                await self.event(
                    "notified", "webhook answered", {"channel": "webhook", "status": response.status_code}
                )
            except Exception as exc:
                await self.event("notify_failed", f"webhook: {describe_error(exc)}", {"channel": "webhook"})

    # -- views ---------------------------------------------------------------------------

    def fallbacks_during(self, t0: float, t1: float) -> list[str]:
        """Components whose fallback was active at any moment between t0 and t1."""
        out = []
        for name, m in self.monitors.items():
            for start, end in m.fallback_periods:
                if start <= t1 and (end is None or end >= t0):
                    out.append(name)
                    break
        return out

    async def primary_back(self, names: list[str]) -> None:
        """Return once each named component runs on its primary again: its fallback ended,
        which the monitor does only after a healthy probe of the primary. Not bounded
        here: the caller waits on it together with the night's stop."""
        for name in names:
            monitor = self.monitors.get(name)
            if monitor is not None:
                await monitor.primary.wait()

    def knobs_off_during(self, t0: float, t1: float) -> dict[str, dict[str, list[Any]]]:
        """Knobs off their configured value at any moment between t0 and t1:
        ``{component: {knob: [configured, value]}}`` (the last off value in force)."""
        out: dict[str, dict[str, list[Any]]] = {}
        for (comp_name, knob), changes in self._knob_history.items():
            configured = self.components[comp_name].knobs.configured(knob)
            in_force = [configured]
            for ts, value in changes:
                if ts <= t0:
                    in_force = [value]
                elif ts <= t1:
                    in_force.append(value)
            off = [v for v in in_force if v != configured]
            if off:
                out.setdefault(comp_name, {})[knob] = [configured, off[-1]]
        return out

    def _knob_moved(
        self, comp: Component, knob: str, old: Any, new: Any, by: str, incident_id: int | None
    ) -> None:
        """The guard changed a knob (a repair, or its return): keep its history, log it."""
        self._knob_history.setdefault((comp.name, knob), []).append((self.clock(), new))
        configured = comp.knobs.configured(knob)
        monitor = self.monitors.get(comp.name)
        if new == configured:
            log.info(
                "knob returned: %s.%s %r → %r, its configured value (by %s; incident %s)",
                comp.name, knob, old, new, by, incident_id,
            )  # fmt: skip
            return
        if monitor is not None:
            monitor.knobs.incident_of[knob] = incident_id
        log.info(
            "knob changed: %s.%s %r → %r (configured %r; by %s; incident %s)",
            comp.name, knob, old, new, configured, by, incident_id,
        )  # fmt: skip

    def active_fallbacks(self) -> list[str]:
        return [name for name, m in self.monitors.items() if m.state == MonitorState.FALLBACK]

    def states(self) -> dict[str, str]:
        return {name: m.state for name, m in self.monitors.items()}
