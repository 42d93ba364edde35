"""The fault driver: injects a night's planned faults on time and always undoes them.

The orchestrator calls ``before_cycle`` as a cycle starts (faults ``@cycle=N`` go in
before its first attempt, so the cycle meets them) and runs timed faults (``after``,
``every``) as tasks measured from the night's start, so a resumed night keeps its
schedule. Every injection and every end is a ledger event (``fault_injected``,
``fault_cleared``, ``fault_skipped``) committed before the fault takes effect or is
reported gone. A fault ends when its duration has passed, when the agent verified the
component healthy again (``until = "repaired"``, capped by ``max_duration``), or when the
night stops; ``stop`` runs in the orchestrator's ``finally``. What a killed session left
injected is undone when the night is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chaos.http_proxy import HttpFaultProxy
from ..chaos.proxy import FaultProxy
from ..components import Component
from ..errors import ConfigError
from ..ledger import Ledger, ops, queries
from ..redaction import redact
from .injectors import (
    FaultsSettings,
    InjectEnv,
    Injector,
    default_duration,
    has_tcp_endpoint,
    injector_class,
    make,
    proxy_mode,
)
from .plan import FaultSpec
from .timeline import event_data

log = logging.getLogger("overnight.faults")

_UNDO_TIMEOUT_S = 150.0


@dataclass
class Active:
    spec: FaultSpec
    occurrence: int
    injector: Injector
    injected_at: float
    timer: asyncio.Task[None] | None = None


class FaultDriver:
    def __init__(
        self,
        specs: list[FaultSpec],
        mechanisms: Mapping[str, str],
        components: Mapping[str, Component],
        ledger: Ledger,
        night_id: str,
        night_path: Path,
        seed: int,
        settings: FaultsSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.specs = specs
        self.mechanisms = dict(mechanisms)
        self.components = components
        self.ledger = ledger
        self.night_id = night_id
        self.seed = seed
        self.clock = clock
        self.env = InjectEnv(night_path, settings, {})
        self.active: dict[tuple[str, int], Active] = {}
        self._fired: set[tuple[str, int]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._stopping = False
        self._clearing: set[asyncio.Task[None]] = set()
        self.night_started_at = clock()

    # -- before the components connect ------------------------------------------------

    async def prepare(self) -> None:
        """Let each planned fault's injector prepare its component (the HTTP fault layer
        goes into the client it is about to build); start a TCP proxy in front of every
        component with ``fault_proxy = true`` and point the component at it. All before
        the components connect."""
        for spec in self.specs:
            injector_class(self.mechanisms[spec.id]).prepare(spec, self.components[spec.target])
        for name, comp in self.components.items():
            mode = proxy_mode(comp)
            if mode is None:
                continue
            if not has_tcp_endpoint(comp):
                raise ConfigError(
                    f"components.{name}: fault_proxy: a {comp.type_name} component has no tcp_endpoint() "
                    "and route_via() (README: Your own component type)"
                )
            host, port = comp.tcp_endpoint()
            kind = HttpFaultProxy if mode == "http" else FaultProxy
            proxy = kind(target_host=host, target_port=port, allowed_hosts=self.env.settings.allowed_hosts)
            await proxy.start()
            comp.route_via("127.0.0.1", proxy.port)
            comp.routed_via = ("127.0.0.1", proxy.port)  # workers route their own clients too
            self.env.proxies[name] = proxy
            log.info(
                "component %s goes through the fault proxy (%s mode) on 127.0.0.1:%d", name, mode, proxy.port
            )

    # -- the night ----------------------------------------------------------------------

    async def start(self, night_started_at: float, resumed: bool) -> None:
        self.night_started_at = night_started_at
        if resumed:
            await self._recover_leftovers()
        for ev in await self._events("fault_injected", "fault_skipped"):
            data = event_data(ev["data"])
            if "fault" in data:
                self._fired.add((data["fault"], int(data.get("occurrence", 1))))
        for spec in self.specs:
            if spec.cycle is None:
                self._tasks.append(asyncio.create_task(self._timed(spec), name=f"fault-{spec.id}"))

    async def before_cycle(self, cycle: int) -> None:
        """Inject the faults planned for ``cycle`` (its first attempt only)."""
        for spec in self.specs:
            if spec.cycle == cycle and (spec.id, 1) not in self._fired:
                await self._fire(spec, 1, cycle)

    async def stop(self, reason: str = "the night ended") -> None:
        """Cancel what is scheduled and undo every active fault. Idempotent."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for key in list(self.active):
            await self._clear(key, reason)
        for proxy in self.env.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.stop()
        self.env.proxies.clear()

    def incident_closed(self, component: str, state: str, detected_at: float) -> None:
        """The agent verified ``component`` again: end its until=repaired faults."""
        for key, act in list(self.active.items()):
            if act.spec.target == component and act.spec.until_repaired and detected_at >= act.injected_at:
                task = asyncio.get_running_loop().create_task(
                    self._clear(key, f"component verified ({state})")
                )
                self._clearing.add(task)  # keep a reference until it is done
                task.add_done_callback(self._clearing.discard)

    # -- scheduling -----------------------------------------------------------------------

    async def _timed(self, spec: FaultSpec) -> None:
        occurrence = 0
        while True:
            occurrence += 1
            if spec.every_s is None:
                if occurrence > 1:
                    return
                offset = spec.after_s or 0.0
            else:
                offset = (spec.after_s if spec.after_s is not None else spec.every_s) + (
                    occurrence - 1
                ) * spec.every_s
            when = self.night_started_at + offset
            if (spec.id, occurrence) in self._fired:
                continue
            now = self.clock()
            if when < now - 1.0 and spec.every_s is not None:
                # Missed while the night was not running: the schedule moves on.
                await self._skip(spec, occurrence, "missed while the night was not running")
                continue
            if when > now:
                await asyncio.sleep(when - now)
            if spec.every_s is not None and any(k[0] == spec.id for k in self.active):
                await self._skip(spec, occurrence, "its previous occurrence is still active")
                continue
            await self._fire(spec, occurrence, None)

    async def _skip(self, spec: FaultSpec, occurrence: int, why: str) -> None:
        self._fired.add((spec.id, occurrence))
        await self._event(
            "fault_skipped",
            f"{spec.id} occurrence {occurrence}: {why}",
            {"fault": spec.id, "occurrence": occurrence, "reason": why},
            spec.target,
        )

    async def _fire(self, spec: FaultSpec, occurrence: int, cycle: int | None) -> None:
        if self._stopping:
            return
        if not spec.fires(self.seed, occurrence):
            await self._skip(spec, occurrence, f"not drawn (probability {spec.probability:g}, seeded)")
            return
        async with self._lock:
            self._fired.add((spec.id, occurrence))
            comp = self.components[spec.target]
            mechanism = self.mechanisms[spec.id]
            injector = make(spec, comp, mechanism, self.env)
            base = {
                "fault": spec.id,
                "occurrence": occurrence,
                "target": spec.target,
                "kind": spec.kind,
                "spec": spec.label(),
                "mechanism": mechanism,
                "method": injector.method,
                "params": {k: v for k, v in spec.params.items() if not k.endswith("_command")},
                "cycle": cycle,
                "instant": injector.instant,
            }
            injected_at = self.clock()
            try:
                detail = await injector.inject()
            except Exception as exc:
                # A fault that could not be injected is recorded as such: never as injected.
                why = redact(f"{type(exc).__name__}: {exc}")
                log.warning("fault %s could not be injected: %s", spec.id, why)
                with contextlib.suppress(Exception):
                    await injector.undo()
                await self._event(
                    "fault_failed", f"{spec.label()}: {why}", {**base, "error": why}, spec.target
                )
                return
            # Stamped with the moment the action began (it may take effect before it
            # returns): the time to detect counts from here, so it is never negative.
            await self._event(
                "fault_injected",
                f"{spec.label()} via {mechanism}" + (f" at cycle {cycle}" if cycle else ""),
                {**base, "injected_at": injected_at, "detail": detail},
                spec.target,
                ts=injected_at,
            )
            log.warning("fault injected: %s via %s", spec.label(), mechanism)
            if injector.instant:
                await self._event(
                    "fault_cleared",
                    f"{spec.id}: single action, nothing left to undo",
                    {"fault": spec.id, "occurrence": occurrence, "reason": "single action"},
                    spec.target,
                    ts=injected_at,
                )
                return
            act = Active(spec, occurrence, injector, injected_at)
            self.active[(spec.id, occurrence)] = act
            duration = default_duration(spec)
            if duration is not None:
                act.timer = asyncio.create_task(self._expire(spec, occurrence, duration, spec.until_repaired))

    async def _expire(self, spec: FaultSpec, occurrence: int, seconds: float, capped: bool) -> None:
        await asyncio.sleep(seconds)
        why = f"max_duration {seconds:g}s reached before a verified repair" if capped else "duration elapsed"
        await self._clear((spec.id, occurrence), why)

    async def _clear(self, key: tuple[str, int], reason: str) -> None:
        act = self.active.pop(key, None)
        if act is None:
            return
        if act.timer is not None and act.timer is not asyncio.current_task():
            act.timer.cancel()
        try:
            async with asyncio.timeout(_UNDO_TIMEOUT_S):
                detail = await act.injector.undo()
            ok = True
        except Exception as exc:
            detail, ok = {"error": redact(f"{type(exc).__name__}: {exc}")}, False
        await self._event(
            "fault_cleared" if ok else "fault_undo_failed",
            f"{act.spec.id}: {reason}" + ("" if ok else f"; undo failed: {detail['error']}"),
            {"fault": act.spec.id, "occurrence": act.occurrence, "reason": reason, "detail": detail},
            act.spec.target,
        )
        if ok:
            log.info("fault cleared: %s (%s)", act.spec.id, reason)
        else:
            log.error("fault %s could not be undone: %s", act.spec.id, detail["error"])

    async def _recover_leftovers(self) -> None:
        """Undo faults a killed session injected and never cleared."""
        events = await self._events("fault_injected", "fault_cleared", "fault_undo_failed")
        open_: dict[tuple[str, int], dict[str, Any]] = {}
        for ev in events:
            data = event_data(ev["data"])
            key = (data.get("fault", ""), int(data.get("occurrence", 1)))
            if ev["kind"] == "fault_injected" and not data.get("instant"):
                open_[key] = data
            elif ev["kind"] == "fault_cleared":
                open_.pop(key, None)
        specs = {spec.id: spec for spec in self.specs}
        for key, data in open_.items():
            if key[0] in specs:  # the plan's own params (commands are not written to events)
                data = {**data, "params": specs[key[0]].params}
            try:
                what = await self._recover_one(data)
                kind, ok = "fault_cleared", True
            except Exception as exc:
                what, kind, ok = redact(f"{type(exc).__name__}: {exc}"), "fault_undo_failed", False
            await self._event(
                kind,
                f"{key[0]}: left by a session that stopped; {what}",
                {"fault": key[0], "occurrence": key[1], "reason": "undone at resume", "detail": what},
                data.get("target"),
            )
            (log.info if ok else log.error)("fault %s left by the previous session: %s", key[0], what)

    async def _recover_one(self, data: dict[str, Any]) -> str:
        mechanism = str(data.get("mechanism", ""))
        try:
            injector = injector_class(mechanism)
        except KeyError:
            # A user's injector whose module this session has not imported: say so, never
            # claim the fault ended with the process.
            raise RuntimeError(f"no injector is registered as {mechanism!r} to undo it") from None
        return await injector.recover(data, self.components.get(data.get("target", "")), self.env)

    async def _events(self, *kinds: str) -> list[dict[str, Any]]:
        """This night's fault events, read off the event loop."""

        def read() -> list[dict[str, Any]]:
            with self.ledger.read() as conn:
                return queries.events_of(conn, self.night_id, kinds=kinds)

        return await asyncio.to_thread(read)

    async def _event(
        self, kind: str, message: str, data: dict[str, Any], component: str | None, ts: float | None = None
    ) -> None:
        await self.ledger.write(
            ops.add_event,
            self.night_id,
            ts if ts is not None else self.clock(),
            kind,
            message,
            data,
            None,
            None,
            component,
        )
