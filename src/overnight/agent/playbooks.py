"""Playbooks: which strategies to try, in order, for a component type and fault kind.

Users extend or replace them: ``register_playbook("llm", "rate_limited", [...])`` in
Python, or per component in config: ``repairs = { timeout = ["raise_timeout"] }`` with
built-in strategy names or ``"module:StrategyClass"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .strategies import (
    BUILTIN_STRATEGIES,
    FreeOwnSpace,
    RaiseTimeout,
    RebuildPool,
    Reconnect,
    RefreshToken,
    RestartCommand,
    RotateKey,
    Strategy,
    SwitchModel,
    WaitRetryAfter,
)

_NETWORK = ("unavailable", "connection_lost", "server_error", "bad_response")

_PLAYBOOKS: dict[tuple[str, str], list[Strategy]] = {
    ("database", "connection_lost"): [RebuildPool(), Reconnect(), RestartCommand()],
    ("database", "unavailable"): [RebuildPool(), RestartCommand()],
    ("database", "timeout"): [RebuildPool()],
    ("database", "auth_expired"): [RebuildPool()],
    ("llm", "auth_expired"): [RefreshToken(), RotateKey()],
    ("llm", "quota_exceeded"): [WaitRetryAfter(), RotateKey(), SwitchModel()],
    ("llm", "rate_limited"): [WaitRetryAfter(), RotateKey(), SwitchModel()],
    ("llm", "timeout"): [RaiseTimeout()],
    ("websearch", "timeout"): [RaiseTimeout((60.0, 90.0, 120.0))],
    ("websearch", "rate_limited"): [WaitRetryAfter()],
    ("websearch", "quota_exceeded"): [WaitRetryAfter()],
    ("websearch", "auth_expired"): [Reconnect()],
    ("vectorstore", "unavailable"): [Reconnect()],
    ("vectorstore", "connection_lost"): [Reconnect()],
    ("vectorstore", "timeout"): [Reconnect()],
    ("system", "resource_low"): [FreeOwnSpace()],
}
for _kind in _NETWORK:
    _PLAYBOOKS.setdefault(("llm", _kind), [Reconnect()])
    _PLAYBOOKS.setdefault(("websearch", _kind), [Reconnect()])

# What a careless script would have done instead, for each component type: the shortcut
# that is available and that the agent never takes. Reported as "degradation prevented".
# A scenario names its own, per component, in its module's ``DEGRADING_SHORTCUTS``.
DEGRADING_SHORTCUTS: dict[str, dict[str, str]] = {
    "database": {
        "shortcut": "run the remaining cycles without the database",
        "harm": "cycles would pass without storing or reading anything: the storage path goes untested",
    },
    "llm": {
        "shortcut": "switch the pipeline to canned LLM answers",
        "harm": "cycles would pass on fixed text: the real model's output goes unchecked",
    },
    "websearch": {
        "shortcut": "switch research to mocked search results",
        "harm": "research would cite recorded sources: the live search integration goes untested",
    },
    "vectorstore": {
        "shortcut": "skip the retrieved context",
        "harm": "outputs would be produced without the documents they are meant to draw on",
    },
    "system": {
        "shortcut": "lower the free-disk threshold",
        "harm": "the night would run on until the disk fills and every cycle fails at once",
    },
}


def register_playbook(component_type: str, fault_kind: str, strategies: Sequence[Strategy]) -> None:
    """Replace the default playbook of ``component_type`` for ``fault_kind``."""
    _PLAYBOOKS[(component_type, fault_kind)] = list(strategies)


def playbook_for(
    component_type: str, fault_kind: str, overrides: dict[str, list[Strategy]] | None = None
) -> list[Strategy]:
    if overrides and fault_kind in overrides:
        return list(overrides[fault_kind])
    if overrides and "*" in overrides:
        return list(overrides["*"])
    return list(_PLAYBOOKS.get((component_type, fault_kind)) or [Reconnect()])


def strategy_from_name(name: str, where: str) -> Strategy:
    if name in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name]()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj: Any = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: cannot load strategy {name!r}: {exc}") from None
        strategy = obj() if isinstance(obj, type) else obj
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"{where}: {name!r} is not an overnight Strategy")
        return strategy
    known = ", ".join(sorted(BUILTIN_STRATEGIES))
    raise ConfigError(f"{where}: unknown repair strategy {name!r} (built in: {known}; or 'module:Class')")


def parse_repairs(value: Any, where: str) -> dict[str, list[Strategy]]:
    """``repairs = { fault_kind = ["strategy", ...] }`` from a component's config."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of fault kind = [strategy names]")
    out: dict[str, list[Strategy]] = {}
    for kind, names in value.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.{kind}: expected a list of strategy names")
        out[str(kind)] = [strategy_from_name(n, f"{where}.{kind}") for n in names]
    return out
