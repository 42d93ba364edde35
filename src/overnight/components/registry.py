"""The registry of component types: built-in names, and the user's own.

Built-in types are imported only when a config uses them, so a night that needs no LLM
never imports an LLM SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from ..errors import ConfigError
from ..redaction import redact
from .base import Component, ComponentSpec

ComponentFactory = Callable[[ComponentSpec], Component]

_BUILTIN: dict[str, str] = {
    "database": "overnight.components.database:DatabaseComponent",
    "llm": "overnight.components.llm:LLMComponent",
    "websearch": "overnight.components.websearch:WebSearchComponent",
    "vectorstore": "overnight.components.vectorstore:VectorStoreComponent",
    "system": "overnight.components.system:SystemComponent",
}

_REGISTRY: dict[str, ComponentFactory] = {}


def register_component_type(type_name: str, factory: ComponentFactory) -> None:
    """Make ``type = "<type_name>"`` usable in ``[components.NAME]`` tables."""
    _REGISTRY[type_name] = factory


def registered_types() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def _load(path: str, where: str) -> ComponentFactory:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except SystemExit as exc:
        raise ConfigError(
            f"{where}: component type {path!r}: its module called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:  # a user's module may raise anything at import
        detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise ConfigError(f"{where}: cannot load component type {path!r}: {detail}") from None
    if not callable(factory):
        raise ConfigError(f"{where}: component type {path!r} is not callable")
    return cast(ComponentFactory, factory)  # the config names it as one; only callability is checkable


def resolve_factory(type_name: str, where: str) -> ComponentFactory:
    """A registered or built-in type, or ``module:attribute`` importable from the config's folder."""
    if type_name in _REGISTRY:
        return _REGISTRY[type_name]
    if type_name in _BUILTIN:
        return _load(_BUILTIN[type_name], where)
    if ":" in type_name:
        return _load(type_name, where)
    raise ConfigError(
        f"{where}: unknown component type {type_name!r} "
        f"(built in: {', '.join(registered_types())}; or use 'module:factory')"
    )
