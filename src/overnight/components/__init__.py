"""Components: the dependencies a scenario uses, and the registry that builds them.

A component is declared in config as ``[components.NAME]`` with ``type = ...`` (a
built-in type, a registered name, or ``"module:factory"``), or registered from Python
with ``register_component_type``. The engine connects every component when the night
starts, hands the scenario their handles as ``ctx.components[NAME]``, and closes them at
the end.

``capabilities`` names what repairs and fault injectors need of a component as
Protocols (``PoolRebuildable``, ``TcpProxyable``, …), checked with ``isinstance``.
"""

from .base import (
    FAULT_KINDS,
    Component,
    ComponentSpec,
    Knob,
    KnobRefused,
    Knobs,
    NonEmptyStr,
    OptionError,
    Options,
    ProbeResult,
    RemoteError,
    SandboxEndpoints,
    TimeoutOptions,
    classify_common,
    classify_status,
    describe_error,
    fault_details_common,
    url_endpoint,
    url_via,
)
from .capabilities import (
    DiskWatcher,
    FallbackOwner,
    HttpFaultable,
    LocalStore,
    PoolRebuildable,
    Replaying,
    Restartable,
    Sandboxed,
    SqlDatabase,
    TcpProxyable,
    TokenRefreshable,
)
from .registry import ComponentFactory, register_component_type, registered_types, resolve_factory

__all__ = [
    "FAULT_KINDS",
    "Component",
    "ComponentFactory",
    "ComponentSpec",
    "DiskWatcher",
    "FallbackOwner",
    "HttpFaultable",
    "Knob",
    "KnobRefused",
    "Knobs",
    "LocalStore",
    "NonEmptyStr",
    "OptionError",
    "Options",
    "PoolRebuildable",
    "ProbeResult",
    "RemoteError",
    "Replaying",
    "Restartable",
    "SandboxEndpoints",
    "Sandboxed",
    "SqlDatabase",
    "TcpProxyable",
    "TimeoutOptions",
    "TokenRefreshable",
    "classify_common",
    "classify_status",
    "describe_error",
    "fault_details_common",
    "register_component_type",
    "registered_types",
    "resolve_factory",
    "url_endpoint",
    "url_via",
]
