"""The config's tables as pydantic models: ``ConfigModel`` (strict, unknown keys refused,
values read from the environment converted to the field's type) and each table under
``Config``.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Literal, get_args

from pydantic import AliasPath, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

_SCENARIO = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# ``scenario = "pytest:PATH"``: a pytest suite as the cycle (a file or folder, relative to
# the config's folder); "pytest:" always means a suite, never a module named pytest.
PYTEST_SCENARIO = "pytest:"
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


# Cycle numbers are 32-bit integers in a PostgreSQL ledger; seeds are 64-bit.
MAX_CYCLES = 2**31 - 1
MAX_SEED = 2**63 - 1
MAX_HOURS = 24 * 7


class Interpolated(str):
    """A string that came out of ``${VAR}`` interpolation: the only kind of string a
    number or boolean field converts (TOML cannot write a reference as a number)."""

    __slots__ = ()


def _from_env_text(value: Interpolated, annotation: Any) -> Any:
    """``"${CYCLES:-100}"`` → 100 for an int field; anything that does not read as the
    field's type is left for the model to refuse, naming the key."""
    kinds = set(get_args(annotation)) or {annotation}
    text = value.strip()
    if bool in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if int in kinds and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if float in kinds:
        with contextlib.suppress(ValueError):
            return float(text)
    return value


class ConfigModel(BaseModel):
    """Every config table: unknown keys refused, TOML types taken as they are (a string
    is not a boolean, a boolean is not a number), numbers finite. Values read from the
    environment convert to the field's type. Components' own option models use it too."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _convert_env_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            info = cls.model_fields.get(key)
            if isinstance(value, Interpolated) and info is not None and info.annotation is not str:
                out[key] = _from_env_text(value, info.annotation)
        return out


class RunConfig(ConfigModel):
    """Defaults for ``overnight run``; every one can be overridden by its CLI flag, and
    the flag is checked against the same bounds (``Plan.from_config``)."""

    cycles: int = Field(100, ge=1, le=MAX_CYCLES, description="cycles in the night")
    parallel: int = Field(1, ge=1, le=512, description="cycles run at once")
    max_hours: float = Field(8.0, gt=0, le=MAX_HOURS, description="wall-clock bound of the night")
    until: str | None = Field(None, description="local HH:MM after which nothing new starts")
    retry_attempts: int = Field(2, ge=0, le=20, description="extra attempts for infra errors")
    cycle_timeout: float = Field(
        600.0, gt=0, le=MAX_HOURS * 3600, description="seconds before a cycle is cancelled"
    )
    night_dir: str | None = Field(
        None,
        description="where nights, artifacts and the ledger live (relative to the config file)",
    )
    ledger: str | None = Field(None, description="ledger URL or path; default <night_dir>/overnight.db")
    retry_backoff: float = Field(
        1.0, ge=0, le=600, description="seconds before the first retry of an infra error; doubles"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="night seed; random when absent")
    executor: Literal["inline", "process", "ray"] = Field(
        "inline", description="where cycles run: this process, worker processes, or Ray actors"
    )
    ray_address: str | None = Field(
        None, min_length=1, description="the Ray cluster of executor = 'ray' (default: a local one)"
    )

    @field_validator("until")
    @classmethod
    def _check_until(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError("expected local time as HH:MM, e.g. 06:30")
        return value


class AgentConfig(ConfigModel):
    """The repair agent's defaults; each component may override the probe and repair keys."""

    enabled: bool = Field(True, description="run the repair agent beside the cycles")
    probe_period: float = Field(10.0, gt=0, le=3600, description="seconds between periodic probes")
    probe_timeout: float = Field(5.0, gt=0, le=600, description="seconds before a probe counts as failed")
    failure_threshold: int = Field(1, ge=1, le=100, description="failed probes before unhealthy")
    success_threshold: int = Field(1, ge=1, le=100, description="healthy probes to verify a repair")
    startup_grace: float = Field(0.0, ge=0, le=3600, description="seconds before the first probe")
    cooldown: float = Field(1.0, ge=0, le=3600, description="seconds between repair attempts (then backoff)")
    max_backoff: float = Field(60.0, gt=0, le=3600, description="cap of the backoff between attempts")
    max_repairs_per_hour: int = Field(
        20, ge=1, le=10_000, description="repair attempts per component per hour"
    )
    flap_threshold: int = Field(6, ge=2, le=1000, description="incidents in flap_window that mean flapping")
    flap_window: float = Field(
        600.0, gt=0, le=MAX_HOURS * 3600, description="seconds over which flapping is counted"
    )
    repair_timeout: float = Field(120.0, gt=0, le=3600, description="seconds a single repair action may take")
    escalation: str = Field("pause", description="when repairs fail: 'pause' (hold cycles) or 'abort'")
    max_pause: float = Field(
        1800.0,
        gt=0,
        le=86_400,
        description="longest a 'pause' escalation holds cycles before the night ends aborted",
    )
    knob_quiet_period: float | None = Field(
        None,
        gt=0,
        le=MAX_HOURS * 3600,
        description="seconds a component must stay healthy before a knob a repair changed returns "
        "to its configured value; default 3 probe periods",
    )
    notify_command: str | None = Field(
        None, description="shell command run on escalation (event JSON on stdin)"
    )
    notify_webhook: str | None = Field(None, description="URL that gets a JSON POST on escalation")

    @field_validator("escalation")
    @classmethod
    def _check_escalation(cls, value: str) -> str:
        if value not in ("pause", "abort"):
            raise ValueError("expected 'pause' or 'abort'")
        return value


# The [agent] keys a component may set for itself; checked by AgentConfig, same bounds.
AGENT_KEYS_PER_COMPONENT: tuple[str, ...] = (
    "probe_period",
    "probe_timeout",
    "failure_threshold",
    "success_threshold",
    "startup_grace",
    "cooldown",
    "max_repairs_per_hour",
    "escalation",
    "max_pause",
    "knob_quiet_period",
)


class FaultsConfig(ConfigModel):
    """What fault injection (``--faults``, ``--inject``) may touch besides loopback."""

    allowed_hosts: list[str] = Field(
        default_factory=list, description="the project's own test hosts faults may target"
    )
    allow_service_control: bool = Field(
        False, description="allow faults that stop and start a local server (method = 'stop')"
    )
    max_fill_gb: float = Field(5.0, gt=0, le=1024, description="largest disk-fill scratch file, in GB")


class NotifyConfig(ConfigModel):
    """Where the morning summary goes when a night ends. A failure to notify is recorded
    in the ledger and never fails the night."""

    webhook: str | None = Field(None, description="URL that gets the summary as a JSON POST")
    telegram: bool = Field(False, description="send the summary to a Telegram chat")
    telegram_token_env: str = Field("TELEGRAM_BOT_TOKEN", description="env var holding the bot token")
    telegram_chat_id_env: str = Field("TELEGRAM_CHAT_ID", description="env var holding the chat id")
    telegram_api: str = Field("https://api.telegram.org", description="Telegram Bot API base URL")
    when: str = Field("always", description="'always' or 'failure' (only when the night did not pass)")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per notification")

    @field_validator("when")
    @classmethod
    def _check_when(cls, value: str) -> str:
        if value not in ("always", "failure"):
            raise ValueError("expected 'always' or 'failure'")
        return value


class Price(ConfigModel):
    prompt: float = Field(ge=0, description="price per 1,000 prompt tokens")
    completion: float = Field(ge=0, description="price per 1,000 completion tokens")


class ReportConfig(ConfigModel):
    """What the morning report needs beyond the ledger: prices, the quality metric."""

    currency: str = Field("USD", description="currency of the prices")
    prices: dict[str, Price] = Field(default_factory=dict, description="per model: prompt/completion per 1K")
    score_metric: str = Field("score", description="the ctx.metric name the Quality section reads")
    weakness_metric: str = Field("weakness", description="the ctx.metric name of reviewer weaknesses")
    weakening: Literal["warn", "fail"] = Field(
        "warn",
        description="a night after checks were weakened since the previous night: 'warn' "
        "(the verdict says so, exit 0 if it passed) or 'fail' (the night fails)",
    )


# The tables inside [settings] that describe the protected settings without being any:
# taken out of ctx.settings and the protected fingerprint when the config is loaded.
SETTINGS_DECLARATIONS = ("meta", "acknowledged")


class SettingMeta(ConfigModel):
    """``[settings.meta.NAME]``: which way a protected setting is stricter, for the
    weakening watch (the setting's name may be dotted for a nested table)."""

    stricter: Any = Field(
        description='"higher" or "lower" for a number; true or false for a boolean (its stricter value)'
    )
    off: str | None = Field(None, description="a boolean's words when it goes to its looser value")

    @field_validator("stricter")
    @classmethod
    def _check_stricter(cls, value: Any) -> Any:
        if isinstance(value, bool) or value in ("higher", "lower"):
            return value
        raise ValueError(
            'expected "higher" or "lower" (a number setting), or true or false '
            "(a boolean setting: its stricter value)"
        )

    @field_validator("off")
    @classmethod
    def _check_off(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected the words shown when it goes to its looser value, not an empty string")
        return value

    @model_validator(mode="after")
    def _off_is_for_booleans(self) -> SettingMeta:
        if self.off is not None and not isinstance(self.stricter, bool):
            raise ValueError("off is only for a boolean setting (stricter = true or false)")
        return self


class Acknowledgement(ConfigModel):
    """``[settings.acknowledged] NAME = { value = …, reason = "…" }``: a deliberate change
    of a protected setting, listed as acknowledged instead of weakening while the
    setting has this value."""

    value: Any = Field(description="the setting's new value, as the night runs with it")
    reason: str = Field(description="why it changed (a ticket, a decision)")

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError(
                "expected the setting's value (a number, a boolean, a string or a list), not a table"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected why the setting changed, not an empty string")
        return value


class PytestConfig(ConfigModel):
    """A pytest suite as the cycle (``scenario = "pytest:PATH"``): what each cycle's pytest
    is given, and how an error a test meets is tied to a declared component."""

    args: list[str] = Field(
        default_factory=list, description="pytest arguments for every cycle, e.g. ['-k', 'smoke']"
    )
    components: dict[str, str] = Field(
        default_factory=dict,
        description="an exception's module or class (any in its chain) -> the component it comes "
        "from, for errors that carry no host and port of a declared component",
    )


class ComponentConfig(ConfigModel):
    """A dependency the scenario uses. Keys beyond these belong to the component type."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    type: str = Field(description="component type, built in or 'module:factory'")
    critical: bool = Field(True, strict=True, description="hold new cycles while it is unhealthy")


class Config(ConfigModel):
    scenario: str = Field(description="the cycle function, as 'module:function'")
    setup: str | None = Field(
        None, description="optional 'module:function' run once per session after components connect"
    )
    run: RunConfig = Field(default_factory=RunConfig)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="protected settings, frozen for the whole night"
    )
    # [settings.meta] and [settings.acknowledged]: read from inside [settings] (errors
    # name them there), and taken out of it (``_without_declarations``).
    settings_meta: dict[str, SettingMeta] = Field(
        default_factory=dict, validation_alias=AliasPath("settings", "meta")
    )
    settings_acknowledged: dict[str, Acknowledgement] = Field(
        default_factory=dict, validation_alias=AliasPath("settings", "acknowledged")
    )
    components: dict[str, ComponentConfig] = Field(default_factory=dict)
    pytest: PytestConfig = Field(default_factory=PytestConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("settings")
    @classmethod
    def _without_declarations(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The protected settings alone: not ``meta`` nor ``acknowledged``."""
        return {k: v for k, v in value.items() if k not in SETTINGS_DECLARATIONS}

    @field_validator("scenario")
    @classmethod
    def _check_scenario(cls, value: str) -> str:
        if value.startswith(PYTEST_SCENARIO):
            if not value[len(PYTEST_SCENARIO) :].strip():
                raise ValueError(
                    "expected 'pytest:PATH', the file or folder of the tests, e.g. 'pytest:tests/e2e'"
                )
            return value
        if not _SCENARIO.match(value):
            raise ValueError("expected 'module:function', e.g. 'my_tests:cycle', or 'pytest:PATH'")
        return value

    @field_validator("setup")
    @classmethod
    def _check_setup(cls, value: str | None) -> str | None:
        if value is not None and not _SCENARIO.match(value):
            raise ValueError("expected 'module:function', e.g. 'my_tests:cycle'")
        return value

    @field_validator("pytest")
    @classmethod
    def _check_pytest(cls, value: PytestConfig, info: ValidationInfo) -> PytestConfig:
        declared = info.data.get("components")
        if declared is None:  # the components table is wrong itself: said there
            return value
        for key, name in value.components.items():
            if name not in declared:
                known = ", ".join(declared) or "none declared"
                raise ValueError(f"components.{key}: {name!r} is not a declared component ({known})")
        return value
