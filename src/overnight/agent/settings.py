"""What one component's monitor works with: the agent's bounds ([agent]) with the
component's own overrides, its declared fallback and its repair playbook."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..components import Component
from ..config import AgentConfig, agent_settings_for
from ..errors import ConfigError
from .playbooks import parse_repairs
from .strategies import Strategy


@dataclass
class MonitorSettings:
    probe_period: float
    probe_timeout: float
    failure_threshold: int
    success_threshold: int
    startup_grace: float
    cooldown: float
    max_backoff: float
    max_repairs_per_hour: int
    flap_threshold: int
    flap_window: float
    repair_timeout: float
    escalation: str
    max_pause: float = 1800.0
    # Healthy this long after its last fault, a component gets back the knob values it
    # was configured with (a repair's change is a fix of the client, not a new baseline).
    knob_quiet_period: float = 30.0
    fallback: str | None = None
    repairs: dict[str, list[Strategy]] = field(default_factory=dict)

    @classmethod
    def for_component(cls, comp: Component, defaults: AgentConfig) -> MonitorSettings:
        opts = comp.spec.options
        where = f"components.{comp.name}"
        cfg = agent_settings_for(defaults, opts, where)
        fallback = opts.get("fallback")
        if fallback is not None and fallback != "cache":
            raise ConfigError(f"{where}.fallback: the only declared fallback kind is 'cache'")
        return cls(
            probe_period=cfg.probe_period,
            probe_timeout=cfg.probe_timeout,
            failure_threshold=cfg.failure_threshold,
            success_threshold=cfg.success_threshold,
            startup_grace=cfg.startup_grace,
            cooldown=cfg.cooldown,
            max_backoff=cfg.max_backoff,
            max_repairs_per_hour=cfg.max_repairs_per_hour,
            flap_threshold=cfg.flap_threshold,
            flap_window=cfg.flap_window,
            repair_timeout=cfg.repair_timeout,
            escalation=cfg.escalation,
            max_pause=cfg.max_pause,
            knob_quiet_period=(
                cfg.knob_quiet_period if cfg.knob_quiet_period is not None else 3 * cfg.probe_period
            ),
            fallback=fallback,
            repairs=parse_repairs(opts.get("repairs"), f"{where}.repairs"),
        )
