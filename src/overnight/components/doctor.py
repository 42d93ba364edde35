"""``overnight doctor``'s check: connect each component, probe it once, close it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from ..redaction import redact
from .base import Component, describe_error


async def check_components(components: Mapping[str, Component], timeout: float) -> list[dict[str, Any]]:
    """One row per component: ``status`` healthy / unhealthy (from a real probe, never
    assumed) / unknown (no probe), the latency, the diagnosed fault kind, a detail. Each
    step is bounded by ``timeout`` and every component is closed again."""

    async def one(name: str, comp: Component) -> dict[str, Any]:
        row: dict[str, Any] = {"component": name, "type": comp.type_name, "sandbox": comp.sandbox}
        try:
            async with asyncio.timeout(timeout):
                await comp.connect()
            row["target"] = redact(comp.target)
            row["sandbox"] = comp.sandbox
            if not comp.has_probe:
                row.update(status="unknown", detail="this component has no probe")
                return row
            async with asyncio.timeout(timeout):
                result = await comp.probe()
            row.update(
                status="healthy" if result.healthy else "unhealthy",
                latency_ms=round(result.latency_s * 1000, 1),
                fault_kind=result.fault_kind,
                detail=redact(result.detail),
            )
        except Exception as exc:  # connect failed, or the probe itself overran
            row.update(
                target=redact(comp.target),
                status="unhealthy",
                fault_kind=comp.classify(exc) or ("timeout" if isinstance(exc, TimeoutError) else None),
                detail=describe_error(exc),
            )
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await comp.close()
        return row

    return list(await asyncio.gather(*(one(n, c) for n, c in components.items())))
