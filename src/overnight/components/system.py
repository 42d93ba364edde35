"""The ``system`` component: free disk and available memory, via psutil.

Config::

    [components.system]
    type = "system"
    min_free_disk_gb = 5        # default 5
    min_available_memory_gb = 1 # default 1
    path = "."                  # whose disk to check; default the night dir
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil

from ..errors import ConfigError
from .base import Component, ComponentSpec, ProbeResult

GB = 1024**3


@dataclass
class SystemStatus:
    path: str
    free_disk_gb: float
    available_memory_gb: float
    min_free_disk_gb: float
    min_available_memory_gb: float

    @property
    def problems(self) -> list[str]:
        out = []
        if self.free_disk_gb < self.min_free_disk_gb:
            out.append(f"free disk {self.free_disk_gb:.2f} GB < {self.min_free_disk_gb:g} GB at {self.path}")
        if self.available_memory_gb < self.min_available_memory_gb:
            out.append(
                f"available memory {self.available_memory_gb:.2f} GB < {self.min_available_memory_gb:g} GB"
            )
        return out


class SystemHandle:
    def __init__(self, component: SystemComponent) -> None:
        self._c = component

    async def check(self) -> SystemStatus:
        return await asyncio.to_thread(self._c.measure)


class SystemComponent(Component):
    type_name = "system"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = dict(spec.options)
        try:
            self.min_free_disk_gb = float(opts.pop("min_free_disk_gb", 5))
            self.min_available_memory_gb = float(opts.pop("min_available_memory_gb", 1))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"thresholds must be numbers: {exc}") from None
        path = opts.pop("path", None)
        self.path = spec.resolve(path) if path is not None else spec.night_dir
        self.reject_unknown(opts)
        self._handle = SystemHandle(self)

    @property
    def handle(self) -> SystemHandle:
        return self._handle

    @property
    def target(self) -> str:
        return f"disk at {self.path}, memory"

    def measure(self) -> SystemStatus:
        path = self.path
        while not path.exists() and path != path.parent:
            path = path.parent  # the night dir may not exist yet; measure its volume
        disk = psutil.disk_usage(str(path))
        mem = psutil.virtual_memory()
        return SystemStatus(
            path=str(self.path),
            free_disk_gb=disk.free / GB,
            available_memory_gb=mem.available / GB,
            min_free_disk_gb=self.min_free_disk_gb,
            min_available_memory_gb=self.min_available_memory_gb,
        )

    async def probe(self) -> ProbeResult:
        t0 = time.perf_counter()
        status = await asyncio.to_thread(self.measure)
        problems = status.problems
        detail = "; ".join(problems) or (
            f"free disk {status.free_disk_gb:.1f} GB, available memory {status.available_memory_gb:.1f} GB"
        )
        kind = "resource_low" if problems else None
        return ProbeResult(not problems, time.perf_counter() - t0, kind, detail)
