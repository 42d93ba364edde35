"""Loading a config: finding the file, reading it, ``${VAR}`` interpolation, registering
the secrets it holds, validating it, and one ``ConfigError`` line per problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from ..redaction import (
    ENV_REF,
    is_secret_key,
    redact_data,
    register_secret,
    register_secrets_in,
    walk_secrets,
)
from .models import AGENT_KEYS_PER_COMPONENT, SETTINGS_DECLARATIONS, AgentConfig, Config, Interpolated

CONFIG_FILE = "overnight.toml"


def agent_settings_for(defaults: AgentConfig, options: Mapping[str, Any], where: str) -> AgentConfig:
    """``[agent]`` with a component's own keys over it, validated as one model, so
    ``success_threshold = -1`` is refused under a component exactly as under [agent]."""
    overrides = {k: options[k] for k in AGENT_KEYS_PER_COMPONENT if k in options}
    try:
        return AgentConfig.model_validate({**defaults.model_dump(), **overrides})
    except ValidationError as exc:
        key, what = describe_validation_error(exc, f"{where}.")
        raise ConfigError(f"{key}: {what}") from None


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
    problem = check_declarations(config, raw)
    if problem:
        raise ConfigError(f"{name}: {prefix}{problem}")
    return LoadedConfig(config=config, path=path, raw=raw, key_prefix=prefix)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _setting(settings: Mapping[str, Any], dotted: str, table: str) -> tuple[str | None, Any]:
    """(what is wrong or None, value) of the protected setting ``[settings.TABLE]`` names
    by its dotted name (``llm.temperature``)."""
    value: Any = settings
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return f"settings.{table}.{dotted}: no protected setting {dotted} in [settings]", None
        value = value[part]
    if isinstance(value, Mapping):
        inner = next(iter(value), "NAME")
        return (
            f"settings.{table}.{dotted}: settings.{dotted} is a table; name each of its settings "
            f'by its dotted name ("{dotted}.{inner}")',
            None,
        )
    return None, value


def _kind_of(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_declarations(config: Config, raw: Mapping[str, Any]) -> str | None:
    """``KEY: what is wrong`` with ``[settings.meta]``, ``[settings.acknowledged]`` or
    ``[report] weakening`` beyond their types, or None: each names a protected setting,
    fits its type, and is written out (the report reads them back from the ledger as
    written, so a ``${VAR}`` there could not be read the same way)."""
    settings = raw.get("settings") if isinstance(raw.get("settings"), dict) else {}
    for table in SETTINGS_DECLARATIONS:
        written = settings.get(table) if isinstance(settings, dict) else None
        ref = _first_reference(written, f"settings.{table}")
        if ref:
            return f"{ref}: a ${{VAR}} reference is not allowed here; write the value out"
    report = raw.get("report")
    if isinstance(report, dict) and isinstance(report.get("weakening"), str) and "${" in report["weakening"]:
        return 'report.weakening: a ${VAR} reference is not allowed here; write "warn" or "fail"'
    for key, meta in config.settings_meta.items():
        missing, value = _setting(config.settings, key, "meta")
        if missing:
            return missing
        if isinstance(meta.stricter, bool) and not isinstance(value, bool):
            return (
                f"settings.meta.{key}.stricter: true or false is for a boolean setting; "
                f"settings.{key} is {_kind_of(value)}"
            )
        if isinstance(meta.stricter, str) and (isinstance(value, bool) or not isinstance(value, int | float)):
            return (
                f'settings.meta.{key}.stricter: "{meta.stricter}" is for a number setting; '
                f"settings.{key} is {_kind_of(value)}"
            )
    for key, ack in config.settings_acknowledged.items():
        missing, value = _setting(config.settings, key, "acknowledged")
        if missing:
            return missing
        if any(is_secret_key(part) for part in key.split(".")):
            return (
                f"settings.acknowledged.{key}: a secret's value cannot be acknowledged (it would be "
                "written in the config); secret settings are reported as changed, never as weakening"
            )
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, ack.value))
        if not numbers and type(value) is not type(ack.value):
            return (
                f"settings.acknowledged.{key}.value: {_kind_of(ack.value)}, but "
                f"settings.{key} is {_kind_of(value)}"
            )
    return None


def _first_reference(data: Any, key: str) -> str | None:
    """The key of the first string holding a ``${VAR}`` reference in ``data``, or None."""
    if isinstance(data, dict):
        for k, v in data.items():
            found = _first_reference(v, f"{key}.{k}")
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _first_reference(v, f"{key}[{i}]")
            if found:
                return found
    elif isinstance(data, str) and ENV_REF.search(data):
        return key
    return None


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
