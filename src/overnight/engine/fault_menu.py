"""``overnight faults --kinds COMPONENT``: what can be injected into a component of the
config, how, and why not the other kinds.

The config is loaded and the component built as for a night (its options checked, the
scenario's and setup hook's modules imported first, best effort, so a user's component
type and injectors are registered), but nothing is connected, started or written: the
answer is the same check a fault plan meets before the night (``faults.injectors``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..components import FAULT_KINDS
from ..config import load_config, resolve_night_dir
from ..errors import ConfigError, UsageError
from ..faults.injectors import (
    FaultsSettings,
    InjectEnv,
    endpoints_of,
    injector_class,
    menu,
    proxy_mode,
    registered_injectors,
)
from ..faults.plan import FaultSpec
from .loading import build_components, config_where, import_scenario

log = logging.getLogger("overnight")

__all__ = ["fault_menu"]


def fault_menu(config: Path | None, night_dir: Path | None, component: str) -> dict[str, Any]:
    """``{component, type, fault_proxy, endpoints, kinds}``; each of ``kinds`` is
    ``{kind, injectable, mechanism, how, example, why}``."""
    loaded = load_config(config)
    for key in ("scenario", "setup"):
        spec = getattr(loaded.config, key, None)
        if spec:
            try:
                import_scenario(spec, loaded.base_dir, str(loaded.path), key=key)
            except ConfigError as exc:  # about the faults, not the scenario: say it, go on
                log.warning("%s", exc)
    if component not in loaded.config.components:
        known = ", ".join(sorted(loaded.config.components)) or "none"
        raise UsageError(
            f"--kinds: no component named {component!r} in {config_where(loaded)} (components: {known})"
        )
    comp = build_components(loaded, resolve_night_dir(night_dir, loaded))[component]
    cfg = loaded.config.faults
    settings = FaultsSettings(tuple(cfg.allowed_hosts), cfg.allow_service_control, cfg.max_fill_gb)
    kinds = list(FAULT_KINDS)
    for injector in registered_injectors():
        kinds += [k for k in injector.kinds if k not in kinds]
    try:
        endpoints = [str(e) for e in endpoints_of(comp) if not e.where.startswith("(")]  # a file: none
    except ValueError:
        endpoints = []
    rows = []
    for row in menu(comp, settings, kinds):
        mechanism = row["mechanism"]
        if mechanism is None:
            rows.append({**row, "how": None, "example": None})
            continue
        injector = injector_class(mechanism)
        # Its docstring's first sentence says what it does.
        doc = " ".join((injector.__doc__ or "").split()).replace("``", "")
        doc = doc.split(". ")[0].rstrip(".") if doc else mechanism
        spec = FaultSpec(source="--kinds", target=component, kind=row["kind"])
        if injector(spec, comp, InjectEnv(Path("."), settings, {})).instant:
            when = "cycle=3"  # a single action: nothing to undo
        elif row["kind"] in ("rate_limited", "quota_exceeded"):
            when = "cycle=3,retry_after=2s"  # lasts its Retry-After
        else:
            when = "cycle=3,duration=30s"
        rows.append(
            {
                **row,
                "how": f"{mechanism}: {doc}",
                "example": f"{component}:{row['kind']}@{when}",
            }
        )
    return {
        "component": component,
        "type": comp.type_name,
        "fault_proxy": proxy_mode(comp),
        "endpoints": endpoints,
        "kinds": rows,
    }
