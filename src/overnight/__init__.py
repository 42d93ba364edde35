"""overnight: a night of end-to-end test cycles against real dependencies, with an honest
morning report.

The public API a scenario needs is re-exported here, typed::

    import overnight

    async def setup(night: overnight.NightContext) -> None:
        ...

    async def cycle(ctx: overnight.CycleContext) -> None:
        db: overnight.DatabaseHandle = ctx.components["db"]
        async with ctx.step("fetch"):
            ...
        if bad:
            ctx.fail("the summary is empty")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .components import Component, ComponentSpec, register_component_type, url_endpoint, url_via
from .config import ProtectedSettings
from .engine.context import CycleContext, CycleInput, NightContext
from .errors import ConfigError, InfraError, ProductFailure, ProtectedSettingError
from .verdicts import Verdict

if TYPE_CHECKING:
    from .components.database import DatabaseHandle
    from .components.llm import LLMHandle
    from .components.system import SystemHandle
    from .components.vectorstore import VectorStoreHandle
    from .components.websearch import WebSearchHandle

__version__ = "0.1.0"

# The built-in handles' modules import their clients (qdrant, openai, …): loaded when a
# handle type is first asked for, not by every ``import overnight``.
_HANDLES = {
    "DatabaseHandle": ".components.database",
    "LLMHandle": ".components.llm",
    "SystemHandle": ".components.system",
    "VectorStoreHandle": ".components.vectorstore",
    "WebSearchHandle": ".components.websearch",
}


def __getattr__(name: str) -> Any:
    if name in _HANDLES:
        return getattr(importlib.import_module(_HANDLES[name], __name__), name)
    raise AttributeError(f"module 'overnight' has no attribute {name!r}")


__all__ = [
    "Component",
    "ComponentSpec",
    "ConfigError",
    "CycleContext",
    "CycleInput",
    "DatabaseHandle",
    "InfraError",
    "LLMHandle",
    "NightContext",
    "ProductFailure",
    "ProtectedSettingError",
    "ProtectedSettings",
    "SystemHandle",
    "VectorStoreHandle",
    "Verdict",
    "WebSearchHandle",
    "__version__",
    "register_component_type",
    "url_endpoint",
    "url_via",
]
