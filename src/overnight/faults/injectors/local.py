"""The injectors that act on local things: Qdrant's local storage (``qdrant_local``) and
the free disk (``disk_fill``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...components import Component, DiskWatcher, LocalStore
from ..plan import FaultSpec
from .base import GB, FaultsSettings, InjectEnv, Injector

# -- Qdrant local mode ----------------------------------------------------------------------


def _local_path(comp: Component) -> Path | None:
    return comp.path if isinstance(comp, LocalStore) else None


class QdrantLocalFault(Injector):
    """Close the component's local storage; with ``lock``, hold it with another client."""

    mechanism = "qdrant_local"
    types = ("vectorstore",)  # a Qdrant local store: the lock is Qdrant's own
    capability = LocalStore
    kinds = ("unavailable",)
    methods = ("close", "lock")
    networked = False

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on the vector store not behind the TCP proxy

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if _local_path(comp) is None:
            return "a Qdrant server is broken through the TCP proxy: set fault_proxy = true"
        if spec.kind != "unavailable" or spec.params.get("method") not in (None, "close", "lock"):
            return "Qdrant local mode gets unavailable (method 'close' or 'lock')"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.method: str = spec.params.get("method") or (
            "lock" if spec.duration_s is not None or spec.until_repaired else "close"
        )
        self.instant = self.method == "close"
        self._holder: Any = None

    async def inject(self) -> dict[str, Any]:
        await self.comp.close()
        if self.method == "close":
            return {"storage": "closed"}
        from qdrant_client import QdrantClient

        path = _local_path(self.comp)
        if path is None:
            raise RuntimeError(f"{self.comp.name} has no local storage to lock")
        self._holder = await asyncio.to_thread(QdrantClient, path=str(path))
        return {"storage": "closed and locked by another client"}

    async def undo(self) -> dict[str, Any]:
        holder, self._holder = self._holder, None
        if holder is not None:
            await asyncio.to_thread(holder.close)
            return {"storage": "lock released"}
        return {}


# -- disk fill ------------------------------------------------------------------------------


def _threshold_gb(comp: Component) -> float:
    return comp.min_free_disk_gb if isinstance(comp, DiskWatcher) else 0.0


class DiskFill(Injector):
    """A scratch file in the night dir sized to push free disk under the threshold."""

    mechanism = "disk_fill"
    capability = DiskWatcher
    kinds = ("resource_low",)
    networked = False

    @classmethod
    def claims(cls, spec: FaultSpec, comp: Component) -> bool:
        return True  # every fault on a component that watches free disk

    @classmethod
    def refusal(cls, spec: FaultSpec, comp: Component, settings: FaultsSettings) -> str | None:
        if spec.kind != "resource_low":
            return f"the system component gets resource_low (a disk fill), not {spec.kind}"
        if _threshold_gb(comp) <= 0:
            return "the system component has no free-disk threshold to trip"
        return None

    def __init__(self, spec: FaultSpec, comp: Component, env: InjectEnv) -> None:
        super().__init__(spec, comp, env)
        self.path: Path | None = None

    def _fill(self, path: Path) -> int:
        threshold_gb = _threshold_gb(self.comp)
        threshold = threshold_gb * GB
        below = self.spec.params.get("below", 0.25) * GB
        free = shutil.disk_usage(path.parent).free
        size = int(free - threshold + below)
        if size <= 0:
            return 0
        if size > self.env.settings.max_fill_gb * GB:
            raise RuntimeError(
                f"filling the disk under {threshold_gb:g} GB free needs "
                f"{size / GB:.1f} GB, more than [faults] max_fill_gb = {self.env.settings.max_fill_gb:g}"
            )
        with open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)
        return size

    async def inject(self) -> dict[str, Any]:
        self.env.night_path.mkdir(parents=True, exist_ok=True)
        self.path = self.env.night_path / f".fault-fill-{os.getpid()}-{id(self):x}"
        try:
            size = await asyncio.to_thread(self._fill, self.path)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return {"path": str(self.path), "bytes": size}

    async def undo(self) -> dict[str, Any]:
        path, self.path = self.path, None
        if path is not None:
            await asyncio.to_thread(path.unlink, True)
            return {"removed": str(path)}
        return {}

    @classmethod
    async def recover(cls, record: Mapping[str, Any], comp: Component | None, env: InjectEnv) -> str:
        path = record.get("detail", {}).get("path")
        if not path:
            return "no file was left"
        Path(path).unlink(missing_ok=True)
        return f"removed {path}"
