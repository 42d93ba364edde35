"""Repair strategies: small objects a playbook lists in order (the tenacity style).

A strategy acts on the real dependency and returns a short description of what it did;
it raises ``RepairFailed`` when it could not act. Whether the dependency is healthy is
never the strategy's word: the agent verifies with a probe afterwards.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..components import Component, KnobRefused, PoolRebuildable, Restartable, TokenRefreshable
from ..numbers import plural
from .guard import Guard


class RepairFailed(Exception):
    """The strategy could not act (nothing to rotate to, command failed, …)."""


class RepairSkipped(Exception):
    """The strategy had nothing to do here (a component with no client to reopen): it did
    not act, and the repair is recorded ``skipped`` with this reason, never as done."""


@dataclass
class RepairContext:
    component: Component
    incident_id: int
    fault_kind: str
    details: dict[str, Any]
    guard: Guard
    night_dir: Path
    current_night: str
    knobs_changed: dict[str, list[Any]] = field(default_factory=dict)

    def set_knob(self, name: str, value: Any, by: str) -> Any:
        old = self.guard.set_knob(self.component, name, value, by=by, incident_id=self.incident_id)
        self.knobs_changed[name] = [old, value]
        return old


class Strategy:
    """Base class. ``name`` is how configs and reports refer to it."""

    name = "strategy"
    # Waits the server asked for (Retry-After) are shown apart from repair time.
    is_wait = False

    def applicable(self, ctx: RepairContext) -> bool:
        return True

    async def run(self, ctx: RepairContext) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Reconnect(Strategy):
    name = "reconnect"

    async def run(self, ctx: RepairContext) -> str:
        comp = ctx.component
        if not comp.can_reconnect:
            raise RepairSkipped(
                f"{comp.name} ({comp.type_name}) has no connect() or close() of its own: no client to reopen"
            )
        await comp.reconnect()
        comp.note_client_repair("reconnect")
        return "closed and reopened the client"


class RebuildPool(Strategy):
    name = "rebuild_pool"

    def applicable(self, ctx: RepairContext) -> bool:
        return isinstance(ctx.component, PoolRebuildable)

    async def run(self, ctx: RepairContext) -> str:
        comp = ctx.component
        if not isinstance(comp, PoolRebuildable):
            raise RepairFailed(f"{comp.name} has no connection pool")
        await comp.rebuild_pool()
        comp.note_client_repair("rebuild_pool")
        return "disposed of every pooled connection and built a fresh pool"


class RestartCommand(Strategy):
    """Run the component's configured ``restart_command`` (a local server only)."""

    name = "restart_command"

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s

    def applicable(self, ctx: RepairContext) -> bool:
        return isinstance(ctx.component, Restartable) and bool(ctx.component.restart_command)

    async def run(self, ctx: RepairContext) -> str:
        comp = ctx.component
        command = comp.restart_command if isinstance(comp, Restartable) else None
        if not command:
            raise RepairFailed(f"{comp.name} has no restart_command")
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            raise RepairFailed(f"restart command ran past {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            tail = (out or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RepairFailed(f"restart command exited {proc.returncode}: {tail[0]}")
        if isinstance(comp, PoolRebuildable):
            await comp.rebuild_pool()
            comp.note_client_repair("rebuild_pool")
            return f"ran restart command ({command.split()[0]}…) and rebuilt the pool"
        return f"ran restart command ({command.split()[0]}…)"


class RefreshToken(Strategy):
    name = "refresh_token"

    def applicable(self, ctx: RepairContext) -> bool:
        return isinstance(ctx.component, TokenRefreshable)

    async def run(self, ctx: RepairContext) -> str:
        comp = ctx.component
        if not isinstance(comp, TokenRefreshable):
            raise RepairFailed(f"{comp.name} has no access token to refresh")
        await comp.refresh_token()
        comp.note_client_repair("refresh_token")
        return "dropped the access token and authenticated again"


class WaitRetryAfter(Strategy):
    """Honour the server's Retry-After (bounded): waiting is the repair a 429 asks for."""

    name = "wait_retry_after"
    is_wait = True

    def __init__(self, max_wait_s: float = 300.0, default_s: float = 5.0) -> None:
        self.max_wait_s = max_wait_s
        self.default_s = default_s

    async def run(self, ctx: RepairContext) -> str:
        asked = ctx.details.get("retry_after_s")
        wait = min(float(asked) if asked is not None else self.default_s, self.max_wait_s)
        await asyncio.sleep(max(wait, 0.0))
        source = "as the server asked (Retry-After)" if asked is not None else "no Retry-After given"
        return f"waited {wait:g} s, {source}"


class _NextChoice(Strategy):
    knob = ""

    def applicable(self, ctx: RepairContext) -> bool:
        knobs = ctx.component.knobs
        return self.knob in knobs and len(knobs[self.knob].choices or ()) > 1

    async def run(self, ctx: RepairContext) -> str:
        knob = ctx.component.knobs[self.knob]
        choices = list(knob.choices or ())
        index = choices.index(knob.value) if knob.value in choices else -1
        if index + 1 >= len(choices):
            raise RepairFailed(f"no further allowed {self.knob} after {knob.value!r}")
        new = choices[index + 1]
        old = ctx.set_knob(self.knob, new, by=f"strategy {self.name}")
        return f"{self.knob}: {old} → {new}"


class RotateKey(_NextChoice):
    name = "rotate_key"
    knob = "api_key_env"


class SwitchModel(_NextChoice):
    name = "switch_model"
    knob = "model"


class RaiseTimeout(Strategy):
    """Raise the ``timeout`` knob one step (60 → 90 → 120 by default) within its bound."""

    name = "raise_timeout"

    def __init__(self, steps: tuple[float, ...] = (60.0, 90.0, 120.0)) -> None:
        self.steps = steps

    def applicable(self, ctx: RepairContext) -> bool:
        return "timeout" in ctx.component.knobs

    async def run(self, ctx: RepairContext) -> str:
        knob = ctx.component.knobs["timeout"]
        ceiling = knob.maximum if knob.maximum is not None else max(self.steps)
        higher = [s for s in self.steps if s > knob.value and s <= ceiling]
        if not higher:
            if knob.value < ceiling:
                higher = [ceiling]
            else:
                raise RepairFailed(f"timeout is already at its bound {ceiling:g} s")
        try:
            old = ctx.set_knob("timeout", higher[0], by=f"strategy {self.name}")
        except KnobRefused as exc:
            raise RepairFailed(str(exc)) from None
        return f"timeout: {old:g} s → {higher[0]:g} s"


_NIGHT_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


class FreeOwnSpace(Strategy):
    """Delete artifacts of old nights that overnight itself wrote (never user data).

    Only folders named like a night id, holding an ``orchestrator.log``, other than the
    current night, and beyond the newest ``keep_nights``; their ledger rows stay.
    """

    name = "free_own_space"

    def __init__(self, keep_nights: int = 7) -> None:
        self.keep_nights = keep_nights

    async def run(self, ctx: RepairContext) -> str:
        def sweep() -> tuple[int, int]:
            nights = sorted(
                (
                    p
                    for p in ctx.night_dir.iterdir()
                    if p.is_dir()
                    and _NIGHT_ID.match(p.name)
                    and (p / "orchestrator.log").is_file()
                    and p.name != ctx.current_night
                ),
                key=lambda p: p.name,
                reverse=True,
            )
            freed = removed = 0
            for old in nights[self.keep_nights :]:
                cycles = old / "cycles"
                if cycles.is_dir():
                    freed += sum(f.stat().st_size for f in cycles.rglob("*") if f.is_file())
                    shutil.rmtree(cycles, ignore_errors=True)
                    removed += 1
            return removed, freed

        if not ctx.night_dir.is_dir():
            raise RepairFailed(f"{ctx.night_dir} does not exist")
        removed, freed = await asyncio.to_thread(sweep)
        if removed == 0:
            raise RepairFailed(
                f"nothing of overnight's own to free (keeping the newest {self.keep_nights} nights)"
            )
        return f"removed artifacts of {plural(removed, 'old night')}, {freed / 1e6:.1f} MB"


BUILTIN_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Reconnect,
        RebuildPool,
        RestartCommand,
        RefreshToken,
        WaitRetryAfter,
        RotateKey,
        SwitchModel,
        RaiseTimeout,
        FreeOwnSpace,
    )
}

__all__ = [
    "BUILTIN_STRATEGIES",
    "FreeOwnSpace",
    "RaiseTimeout",
    "RebuildPool",
    "Reconnect",
    "RefreshToken",
    "RepairContext",
    "RepairFailed",
    "RepairSkipped",
    "RestartCommand",
    "RotateKey",
    "Strategy",
    "SwitchModel",
    "WaitRetryAfter",
]
