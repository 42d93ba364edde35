"""A scenario that does nothing: measures the engine's own cost per cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.context import CycleContext


async def cycle(ctx: CycleContext) -> None:
    return None


async def one_step(ctx: CycleContext) -> None:
    async with ctx.step("noop"):
        return None
