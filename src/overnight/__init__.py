"""overnight: a night of end-to-end test cycles against real dependencies, with an honest
morning report.

The public API a scenario needs is re-exported here::

    import overnight

    async def cycle(ctx):
        async with ctx.step("fetch"):
            ...
        if bad:
            ctx.fail("the summary is empty")
"""

from .components import Component, ComponentSpec, register_component_type
from .config import ProtectedSettings
from .engine.context import CycleContext, CycleInput
from .errors import ConfigError, InfraError, ProductFailure, ProtectedSettingError
from .verdicts import Verdict

__version__ = "0.1.0"

__all__ = [
    "Component",
    "ComponentSpec",
    "ConfigError",
    "CycleContext",
    "CycleInput",
    "InfraError",
    "ProductFailure",
    "ProtectedSettingError",
    "ProtectedSettings",
    "Verdict",
    "__version__",
    "register_component_type",
]
