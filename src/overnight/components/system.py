"""The ``system`` component: free disk and available memory, via psutil.

Config::

    [components.system]
    type = "system"
    min_free_disk_gb = 5        # default 5
    min_available_memory_gb = 1 # default 1
    path = "."                  # whose disk to check (relative to the config's folder); default the night dir
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil
from pydantic import Field

from .base import Component, ComponentSpec, NonEmptyStr, Options, ProbeResult

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


class SystemOptions(Options):
    # No upper bound: a threshold above what the machine has is a probe that always trips.
    min_free_disk_gb: float = Field(5.0, ge=0)
    min_available_memory_gb: float = Field(1.0, ge=0)
    path: NonEmptyStr | None = None  # default: the night dir


class SystemHandle:
    def __init__(self, component: SystemComponent) -> None:
        self._c = component

    async def check(self) -> SystemStatus:
        return await asyncio.to_thread(self._c.measure)


class SystemComponent(Component):
    type_name = "system"

    def __init__(self, spec: ComponentSpec) -> None:
        super().__init__(spec)
        opts = self.options(SystemOptions)
        self.min_free_disk_gb = opts.min_free_disk_gb
        self.min_available_memory_gb = opts.min_available_memory_gb
        self.path = spec.resolve(opts.path) if opts.path is not None else spec.night_dir
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
