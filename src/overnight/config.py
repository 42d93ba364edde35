"""Configuration: ``overnight.toml`` or ``[tool.overnight]`` in pyproject.toml.

Validated with pydantic. ``${VAR}`` and ``${VAR:-default}`` are replaced from the
environment after parsing; the raw text (with the references, never the values, and
literal secrets masked) is what the ledger stores, so a plan can be kept and resumed
without writing a secret down. Loading registers every secret the config holds.
Every problem becomes one ``ConfigError`` line naming the file, the key and what was
expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, ProtectedSettingError, UsageError
from .redaction import (
    ENV_REF,
    is_secret_key,
    redact_data,
    register_secret,
    register_secrets_in,
    walk_secrets,
)

CONFIG_FILE = "overnight.toml"
DEFAULT_NIGHT_DIR = "night_tests"
LEDGER_FILE = "overnight.db"
_SCENARIO = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
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


def agent_settings_for(defaults: AgentConfig, options: Mapping[str, Any], where: str) -> AgentConfig:
    """``[agent]`` with a component's own keys over it, validated as one model, so
    ``success_threshold = -1`` is refused under a component exactly as under [agent]."""
    overrides = {k: options[k] for k in AGENT_KEYS_PER_COMPONENT if k in options}
    try:
        return AgentConfig.model_validate({**defaults.model_dump(), **overrides})
    except ValidationError as exc:
        key, what = describe_validation_error(exc, f"{where}.")
        raise ConfigError(f"{key}: {what}") from None


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
    components: dict[str, ComponentConfig] = Field(default_factory=dict)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("scenario", "setup")
    @classmethod
    def _check_scenario(cls, value: str | None) -> str | None:
        if value is not None and not _SCENARIO.match(value):
            raise ValueError("expected 'module:function', e.g. 'my_tests:cycle'")
        return value


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path | None  # None for the built-in demo
    raw: dict[str, Any]  # as written, with ${VAR} references intact
    key_prefix: str = ""  # "tool.overnight." inside pyproject.toml

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def fingerprint(self) -> str:
        # Of the masked config: a plain hash of a literal password would let anyone who
        # reads the report test guesses against it.
        return fingerprint(redact_data(self.raw))


def fingerprint(data: Any) -> str:
    """A stable hash of JSON-able data (key order does not matter)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_config(start: Path | None = None) -> Path | None:
    """``overnight.toml`` in the folder, else a pyproject.toml with ``[tool.overnight]``."""
    folder = start or Path.cwd()
    candidate = folder / CONFIG_FILE
    if candidate.is_file():
        return candidate
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        if isinstance(data.get("tool"), dict) and "overnight" in data["tool"]:
            return pyproject
    return None


def load_raw(path: Path) -> dict[str, Any]:
    """The config table as written (no interpolation, no validation)."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    if Path(path).name == "pyproject.toml":
        return dict(data.get("tool", {}).get("overnight", {}))
    return data


def load_config(path: Path | None = None) -> LoadedConfig:
    """Read, interpolate and validate a config file. Raises ConfigError (one line)."""
    if path is None:
        path = find_config()
        if path is None:
            raise ConfigError(
                f"no {CONFIG_FILE} here (nor [tool.overnight] in pyproject.toml); "
                "pass --config FILE or run 'overnight demo'"
            )
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    prefix = ""
    if path.name == "pyproject.toml":
        tool = data.get("tool")
        if not isinstance(tool, dict) or not isinstance(tool.get("overnight"), dict):
            raise ConfigError(f"{name}: no [tool.overnight] table")
        data = tool["overnight"]
        prefix = "tool.overnight."
    return validate_config(data, path.resolve(), prefix)


def validate_config(raw: dict[str, Any], path: Path | None, prefix: str = "") -> LoadedConfig:
    name = str(path) if path else "<built-in>"
    resolved = interpolate(raw, name, prefix)
    register_config_secrets(resolved)
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, name, prefix)) from None
    return LoadedConfig(config=config, path=path, raw=raw, key_prefix=prefix)


def interpolate(data: Any, file: str, prefix: str = "", _key: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string, recursively."""
    if isinstance(data, dict):
        return {k: interpolate(v, file, prefix, f"{_key}.{k}" if _key else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, file, prefix, f"{_key}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def _sub(match: re.Match[str]) -> str:
        var, default = match.group("name"), match.group("default")
        value = os.environ.get(var)
        if value is None:
            if default is None:
                raise ConfigError(
                    f"{file}: {prefix}{_key}: environment variable {var} is not set "
                    f"(set it, or write ${{{var}:-default}})"
                )
            value = default
        if is_secret_key(var) or is_secret_key(_leaf_key(_key)):
            register_secret(value)
        return value

    return Interpolated(ENV_REF.sub(_sub, data))


def _leaf_key(path: str) -> str:
    """``components.api.keys[2]`` -> ``keys``: the key a value is held under."""
    return re.sub(r"(\[\d+\])+$", "", path).rsplit(".", 1)[-1]


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)
    elif isinstance(data, str):
        yield data


def register_config_secrets(resolved: dict[str, Any]) -> None:
    """Register the secrets of an interpolated config, in any table: values under a
    secret-looking key, and passwords in URLs, DSNs and commands under any key."""
    for value in walk_secrets(resolved):
        register_secret(value)
    for value in _strings(resolved):
        register_secrets_in(value)


def format_validation_error(exc: ValidationError, file: str, prefix: str = "") -> str:
    key, what = describe_validation_error(exc, prefix)
    return f"{file}: {key or '<top>'}: {what}"


def describe_validation_error(
    exc: ValidationError, prefix: str = "", unknown: str = "unknown key"
) -> tuple[str, str]:
    """(KEY, what was expected (got VALUE)) of the first error, then how many more.

    The value is left out under a secret-looking key (``api_key``, ``password``, ``token``…):
    an error line must not echo a secret, whatever its type.
    """
    errors = exc.errors()
    first = errors[0]
    key = prefix + ".".join(str(p) for p in first["loc"]) if first["loc"] else prefix.rstrip(".")
    kind = first["type"]
    if kind == "extra_forbidden":
        what = unknown
    elif kind == "missing":
        what = "required key is missing"
    else:
        msg = first["msg"]
        msg = msg.removeprefix("Value error, ")
        what = f"{msg[0].lower()}{msg[1:]}" if msg else kind
        secret = any(is_secret_key(str(p)) for p in first["loc"])
        if not secret and not isinstance(first.get("input"), dict | list):
            what += f" (got {first.get('input')!r})"
    if len(errors) > 1:
        others = ", ".join(prefix + ".".join(str(p) for p in e["loc"]) for e in errors[1:4])
        what += f" [and {len(errors) - 1} more: {others}{', …' if len(errors) > 4 else ''}]"
    return key, what


class ProtectedSettings(Mapping[str, Any]):
    """Read-only view of the night's protected settings (promise 2).

    Nested tables become ProtectedSettings and lists become tuples, so nothing inside
    can be changed either. Items read as ``settings["x"]`` or ``settings.x``.
    """

    __slots__ = ("_data", "_on_write", "_path")

    def __init__(self, data: Mapping[str, Any], _path: str = "settings", on_write: Any = None) -> None:
        # on_write(path, value) hears of every refused write, so that it can be recorded.
        object.__setattr__(self, "_path", _path)
        object.__setattr__(self, "_on_write", on_write)
        frozen = {k: _freeze(v, f"{_path}.{k}", on_write) for k, v in dict(data).items()}
        object.__setattr__(self, "_data", frozen)

    def _refuse(self, key: str, value: Any, verb: str) -> None:
        if self._on_write is not None:
            with contextlib.suppress(Exception):
                self._on_write(f"{self._path}.{key}", value)
        raise ProtectedSettingError(
            f"{self._path}.{key} is a protected setting; it cannot {verb} during a night"
        )

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"no protected setting {self._path}.{key}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._refuse(key, value, "change")

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(key, value, "change")

    def __delitem__(self, key: str) -> None:
        self._refuse(key, None, "be removed")

    __delattr__ = __delitem__

    def __repr__(self) -> str:
        return f"ProtectedSettings({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._data.items()}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())


def _freeze(value: Any, path: str, on_write: Any = None) -> Any:
    if isinstance(value, Mapping):
        return ProtectedSettings(value, path, on_write)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, f"{path}[{i}]", on_write) for i, v in enumerate(value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, ProtectedSettings):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# -- where nights and the ledger live -------------------------------------------------------


def config_for_location(config: Path | None, strict: bool = True) -> LoadedConfig | None:
    """The config, read only to find the night dir and ledger.

    Not strict (``nights``, ``report``, ``--resume`` without ``--config``): a broken or
    absent config in this folder must not stop anyone from reading a ledger.
    """
    path = config or find_config()
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError:
        if strict or config is not None:
            raise
        return None


def resolve_night_dir(night_dir: Path | None, loaded: LoadedConfig | None) -> Path:
    """The night dir: the flag, else ``[run] night_dir`` (relative to the config's
    folder), else ``./night_tests``."""
    if night_dir is not None:
        return night_dir.expanduser().resolve()
    if loaded is not None and loaded.config.run.night_dir:
        p = Path(loaded.config.run.night_dir).expanduser()
        return (p if p.is_absolute() else loaded.base_dir / p).resolve()
    return (Path.cwd() / DEFAULT_NIGHT_DIR).resolve()


def resolve_ledger(ledger: str | None, night_dir: Path, loaded: LoadedConfig | None) -> str:
    """The ledger: the flag, else ``[run] ledger`` (a path relative to the config's
    folder), else ``<night dir>/overnight.db``."""
    if ledger:
        return ledger
    if loaded is not None and loaded.config.run.ledger:
        value = loaded.config.run.ledger
        if "://" not in value and not Path(value).is_absolute():
            return str((loaded.base_dir / value).resolve())
        return value
    return str(night_dir / LEDGER_FILE)


def locate(config: Path | None, night_dir: Path | None, ledger: str | None, strict: bool) -> tuple[Path, str]:
    """(night dir, ledger URL) the same way for every command: flag > config > default."""
    loaded = config_for_location(config, strict) if ledger is None or night_dir is None else None
    ndir = resolve_night_dir(night_dir, loaded)
    return ndir, resolve_ledger(ledger, ndir, loaded)


# -- plan choices: --set KEY=VALUE -------------------------------------------------------------

_SET_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOML_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def parse_set(items: list[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``--set KEY=VALUE`` plan choices, each a protected setting of the night. VALUE is
    read as TOML (``true``, ``500``, ``"text"``; a bare word is a string) and must have
    the type the setting has in ``[settings]`` when it is there."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _SET_KEY.match(key):
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set expert=false")
        if key in out:
            raise UsageError(f"--set {key}: given twice")
        try:
            value: Any = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        if key in settings and settings[key] is not None:
            expected = type(settings[key])
            if expected is float and type(value) is int:
                value = float(value)
            elif expected is str and not isinstance(value, str):
                value = text.strip()
            elif type(value) is not expected:
                what = _TOML_TYPE_NAMES.get(expected, expected.__name__)
                raise UsageError(f"--set {key}={text}: settings.{key} is {what} in the config")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--set {key}={text}: expected a finite number")
        out[key] = value
    return out
