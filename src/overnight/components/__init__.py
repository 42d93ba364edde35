"""Components: the dependencies a scenario uses, and the registry that builds them.

A component is declared in config as ``[components.NAME]`` with ``type = ...`` (a
registered type name, or ``"module:factory"``), or registered from Python with
``register_component_type``. The engine connects every component when the night starts,
hands the scenario their handles as ``ctx.components[NAME]``, and closes them at the end.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class ComponentSpec:
    """What a factory receives: the component's name, its config table, where things live."""

    name: str
    options: dict[str, Any]
    night_dir: Path
    critical: bool = True


class Component:
    """Base class of a component. Subclasses override what they need.

    ``handle`` is what the scenario calls (``ctx.components[name]``); by default the
    component itself.
    """

    kind: str = "custom"

    def __init__(self, spec: ComponentSpec) -> None:
        self.spec = spec
        self.name = spec.name

    @property
    def handle(self) -> Any:
        return self

    async def connect(self) -> None:
        """Open clients and pools. Called once when the night starts."""

    async def close(self) -> None:
        """Release everything. Called once when the night ends, even on errors."""


ComponentFactory = Callable[[ComponentSpec], Component]

_REGISTRY: dict[str, ComponentFactory] = {}


def register_component_type(type_name: str, factory: ComponentFactory) -> None:
    """Make ``type = "<type_name>"`` usable in ``[components.NAME]`` tables."""
    _REGISTRY[type_name] = factory


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


def resolve_factory(type_name: str, where: str) -> ComponentFactory:
    """A registered type, or ``module:attribute`` importable from the config's folder."""
    if type_name in _REGISTRY:
        return _REGISTRY[type_name]
    if ":" in type_name:
        module_name, _, attr = type_name.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: cannot load component type {type_name!r}: {exc}") from None
        if not callable(factory):
            raise ConfigError(f"{where}: component type {type_name!r} is not callable")
        return factory
    known = ", ".join(registered_types()) or "none registered yet"
    raise ConfigError(
        f"{where}: unknown component type {type_name!r} (known: {known}; or use 'module:factory')"
    )


__all__ = [
    "Component",
    "ComponentFactory",
    "ComponentSpec",
    "register_component_type",
    "registered_types",
    "resolve_factory",
]
