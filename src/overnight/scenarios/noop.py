"""A scenario that does nothing: measures the engine's own cost per cycle."""

from __future__ import annotations

from typing import Any


async def cycle(ctx: Any) -> None:
    return None


async def one_step(ctx: Any) -> None:
    async with ctx.step("noop"):
        return None
