"""The gate: while it is closed no new attempt starts. Open unless someone closes it.

The repair agent closes it while a critical component is unhealthy and reopens it when
the component is verified healthy again.
"""

from __future__ import annotations

import asyncio


class Gate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reasons: dict[str, str] = {}

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self, key: str, reason: str) -> None:
        """Hold new attempts because of ``key`` (e.g. a component name)."""
        self.reasons[key] = reason
        self._open.clear()

    def open(self, key: str) -> None:
        self.reasons.pop(key, None)
        if not self.reasons:
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()
