"""Component options: the base options model, the timeout options and the options every component accepts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ..config import AGENT_KEYS_PER_COMPONENT, ConfigModel

# Options every component accepts; they configure the repair agent, not the client.
COMMON_OPTIONS: frozenset[str] = frozenset({*AGENT_KEYS_PER_COMPONENT, "fallback", "repairs", "fault_proxy"})


# A string option that must say something (a URL, a path, a name).
NonEmptyStr = Annotated[str, Field(min_length=1)]


class Options(ConfigModel):
    """Base of a component type's options model (``Component.options`` validates it).

    TOML gives native types, so they are taken strictly: a string is not a bool, a bool
    is not a number, a float is not an int. Numbers must be finite, and a key the model
    does not declare is refused (a typo must not silently fall back to a default). A value
    read from the environment (``pool_size = "${POOL:-5}"``) converts to the field's type.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, hide_input_in_errors=True
    )


def listed_in(value: str | None, info: ValidationInfo, listing: str) -> str | None:
    """For a field validator: ``value``, if given, must be one of the list option
    ``listing`` (when that is given; it is declared before the field)."""
    listed = info.data.get(listing)
    if value is not None and listed is not None and value not in listed:
        raise ValueError(f"not in {listing} {listed!r}")
    return value


def not_both(value: str | None, info: ValidationInfo, other: str) -> str | None:
    """For a field validator of an option's other name: not given with ``other`` (the
    option's first name, declared before it)."""
    if value is not None and info.data.get(other) is not None:
        raise ValueError(f"give {other} or {info.field_name}, not both")
    return value


# The highest a timeout knob's bound may be: an hour for one request is already no answer.
TIMEOUT_CEILING = 3600.0


class TimeoutOptions(Options):
    """``timeout`` (a knob, seconds) and ``timeout_max``, the bound a repair may raise it to."""

    timeout_max: float = Field(120.0, ge=1, le=TIMEOUT_CEILING)
    timeout: float | None = Field(None, ge=1, le=TIMEOUT_CEILING)  # default: 60, or timeout_max if lower

    @field_validator("timeout")
    @classmethod
    def _within_max(cls, value: float | None, info: ValidationInfo) -> float | None:
        ceiling = info.data.get("timeout_max")
        if value is not None and ceiling is not None and value > ceiling:
            raise ValueError(f"above timeout_max {ceiling:g}")
        return value

    @property
    def initial_timeout(self) -> float:
        """The knob's starting value: as configured, else 60 s lowered to ``timeout_max``."""
        return self.timeout if self.timeout is not None else min(60.0, self.timeout_max)


class _BaseOptions(Options):
    model_config = ConfigDict(extra="ignore")  # the rest belongs to the type and the agent

    # true (or "tcp"): the TCP fault proxy in front of the component's server; "http": the
    # same proxy in HTTP mode (HTTP faults on plain-HTTP traffic too; chaos.http_proxy).
    fault_proxy: bool | Literal["tcp", "http"] = False

    @field_validator("fault_proxy", mode="before")
    @classmethod
    def _proxy_mode(cls, value: object) -> object:
        if isinstance(value, bool) or value in ("tcp", "http"):
            return value
        raise ValueError('expected true, false, "tcp" or "http"')
