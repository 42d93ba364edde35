"""Repairs within bounds (promise 5): one round is a pass through the component's
playbook for the incident's fault kind; each attempt runs with a timeout, is recorded, and
counts as a repair only once probes verify the component healthy after it. Attempts are
spaced by cooldown plus exponential backoff with jitter and capped per hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import tenacity

from ..components import Component, KnobRefused, ProbeResult, describe_error
from ..errors import ProtectedSettingError
from ..ledger import ops
from .incidents import Incident, IncidentBook
from .loophold import LoopHold
from .playbooks import playbook_for
from .settings import MonitorSettings
from .states import MonitorState
from .strategies import RepairContext, RepairFailed, RepairSkipped, Strategy

if TYPE_CHECKING:
    from .agent import RepairAgent

log = logging.getLogger("overnight.agent")


class Watch(Protocol):
    """What a repair needs of its component's monitor."""

    def set_state(self, state: MonitorState, reason: str) -> None: ...

    def open_gate(self) -> None: ...

    async def probe(self, trigger: str) -> ProbeResult: ...

    def note_hold(self, hold: LoopHold[Any], by: str, wall: float, strategy: str | None = None) -> None: ...


class Repairs:
    """Repairs one component's incidents: rounds, attempts, their verification, the
    budget per hour and the backoff between attempts."""

    def __init__(
        self,
        agent: RepairAgent,
        comp: Component,
        settings: MonitorSettings,
        incidents: IncidentBook,
        watch: Watch,
    ) -> None:
        self.agent = agent
        self.comp = comp
        self.settings = settings
        self.incidents = incidents
        self.watch = watch
        self._times: deque[float] = deque()  # when each attempt of the last hour started

    async def round(self, incident: Incident) -> bool:
        """One pass through the playbook. True once a repair is verified."""
        strategies = list(playbook_for(self.comp.type_name, incident.kind, self.settings.repairs))
        tried: set[str] = set()
        attempt = 0
        while strategies:
            strategy = strategies.pop(0)
            if strategy.name in tried:
                continue
            tried.add(strategy.name)
            ctx = RepairContext(
                component=self.comp,
                incident_id=incident.id,
                fault_kind=incident.kind,
                details=incident.details,
                guard=self.agent.guard,
                night_dir=self.agent.night_dir,
                current_night=self.agent.night_id,
            )
            if not strategy.applicable(ctx):
                continue
            if not self.budget_left():
                await self.agent.event(
                    "repair_skipped",
                    f"{self.comp.name}: {self.settings.max_repairs_per_hour} repair attempts "
                    "in the last hour",
                    {"incident_id": incident.id, "strategy": strategy.name},
                )
                return False
            if attempt:
                await asyncio.sleep(self.backoff(attempt))
            kind = incident.kind
            outcome = await self._attempt(incident, strategy, ctx)
            if outcome == "verified":
                return True
            if outcome != "skipped":  # (nothing was done: nothing to back off from)
                attempt += 1
            if incident.kind != kind:
                # Re-diagnosed by the verifying probe: go on with the new kind's playbook.
                strategies = list(playbook_for(self.comp.type_name, incident.kind, self.settings.repairs))
        return False

    async def _attempt(self, incident: Incident, strategy: Strategy, ctx: RepairContext) -> str:
        """One strategy, recorded: ``verified`` (done, and a healthy probe followed),
        ``skipped`` (it had nothing to do: not a repair, not verified), or ``unverified``."""
        self.watch.set_state(MonitorState.REPAIRING, strategy.name)
        self._times.append(time.time())
        started = time.time()
        repair_id = await self.agent.write(
            ops.start_repair, self.agent.night_id, incident.id, self.comp.name, strategy.name, started
        )
        t0 = time.perf_counter()
        # "done" says the action ran to its end, nothing more: only a healthy probe after
        # it (``verified``) says it restored the component.
        result, detail = "done", ""
        hold: LoopHold[str] | None = None
        try:
            async with asyncio.timeout(self.settings.repair_timeout):
                hold = LoopHold(strategy.run(ctx))
                detail = await hold
        except RepairFailed as exc:
            result, detail = "failed", str(exc)
        except RepairSkipped as exc:
            result, detail = "skipped", str(exc)
        except (KnobRefused, ProtectedSettingError) as exc:
            result, detail = "refused", str(exc)
        except TimeoutError:
            result, detail = "failed", f"ran past {self.settings.repair_timeout:g} s"
        except Exception as exc:
            result, detail = "failed", describe_error(exc)
        except BaseException as exc:
            # A stray CancelledError (or SystemExit) from the strategy crashes the monitor,
            # which restarts; the repair's row is closed first, never left half-written.
            self._count(strategy, "failed")
            with contextlib.suppress(Exception):
                self.agent.ledger.submit(
                    ops.finish_repair,
                    repair_id,
                    time.perf_counter() - t0,
                    "failed",
                    ctx.knobs_changed,
                    "stopped: the night is ending"
                    if self.agent.stopping
                    else f"the strategy raised {type(exc).__name__}",
                )
            raise
        finally:
            if hold is not None:
                self.watch.note_hold(hold, "repair", time.perf_counter() - t0, strategy.name)
        duration = time.perf_counter() - t0
        await self.agent.write(ops.finish_repair, repair_id, duration, result, ctx.knobs_changed, detail)
        if result == "skipped":
            # Nothing was done: no repair to count, to verify or to charge to the budget.
            self._times.pop()
            self._count(strategy, "skipped")
            log.info("repair %s of %s: skipped, nothing done (%s)", strategy.name, self.comp.name, detail)
            return "skipped"
        incident.repairs += 1
        self.agent.repairs_done += 1
        if result != "done":
            self._count(strategy, result)
            log.info("repair %s of %s: %s (%s)", strategy.name, self.comp.name, result, detail)
            return "unverified"
        if await self._verify(incident):
            await self.agent.write(ops.verify_repair, repair_id)
            self.agent.repairs_verified += 1
            self._count(strategy, "verified")
            log.info("repair %s of %s: done, verified healthy (%s)", strategy.name, self.comp.name, detail)
            incident.verified_repair = True
            await self.incidents.close(incident, "repaired", f"{strategy.name}: {detail}")
            self.watch.set_state(MonitorState.HEALTHY, f"verified after {strategy.name}")
            self.watch.open_gate()
            return "verified"
        self._count(strategy, "not_verified")
        log.info(
            "repair %s of %s: done, not verified: the component is still unhealthy (%s)",
            strategy.name,
            self.comp.name,
            detail,
        )
        return "unverified"

    def _count(self, strategy: Strategy, result: str) -> None:
        self.agent.repair_counts[(self.comp.name, strategy.name, result)] += 1

    async def _verify(self, incident: Incident) -> bool:
        for _ in range(self.settings.success_threshold):
            result = await self.watch.probe("verify")
            if not result.healthy:
                # The next strategy in the round works from what the server says now.
                incident.details.update(result.details)
                await self._rediagnose(incident, result)
                return False
        return True

    async def _rediagnose(self, incident: Incident, result: ProbeResult) -> None:
        """The first diagnosis is what the first failure looked like (a server being
        stopped first drops connections, then refuses them): a probe that now sees
        another kind of fault corrects it, on the record."""
        if result.fault_kind is None or result.fault_kind == incident.kind:
            return
        old, incident.kind = incident.kind, result.fault_kind
        await self.agent.write(ops.update_incident, incident.id, {"fault_kind": incident.kind})
        await self.agent.event(
            "rediagnosed",
            f"{self.comp.name}: {old} → {incident.kind} (verifying probe: {result.detail})",
            {"incident_id": incident.id, "from": old, "to": incident.kind},
            component=self.comp.name,
        )
        log.info("incident %d: %s re-diagnosed %s → %s", incident.id, self.comp.name, old, incident.kind)

    def budget_left(self) -> bool:
        horizon = time.time() - 3600
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        return len(self._times) < self.settings.max_repairs_per_hour

    def backoff(self, attempt: int) -> float:
        """Cooldown plus exponential backoff with full jitter (tenacity's strategy)."""
        wait = tenacity.wait_fixed(self.settings.cooldown) + tenacity.wait_random_exponential(
            multiplier=self.settings.cooldown, max=self.settings.max_backoff
        )
        # The wait strategies read only attempt_number; the Retrying is there for the type.
        state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(wait(state))
