"""Configuration: ``overnight.toml`` or ``[tool.overnight]`` in pyproject.toml.

Validated with pydantic. ``${VAR}`` and ``${VAR:-default}`` are replaced from the
environment after parsing; the raw text (with the references, never the values, and
literal secrets masked) is what the ledger stores, so a plan can be kept and resumed
without writing a secret down. Loading registers every secret the config holds.
Every problem becomes one ``ConfigError`` line naming the file, the key and what was
expected.

The package: ``models`` (``ConfigModel`` and the tables, ``Config``), ``loading``
(reading, interpolation, secrets, validation errors, ``LoadedConfig``, the checks of
``[settings.meta]`` / ``[settings.acknowledged]`` against the settings they name), ``protected``
(``ProtectedSettings``) and ``locating`` (night dir, ledger, ``parse_set``); every name is
re-exported here.
"""

from .loading import (
    CONFIG_FILE,
    LoadedConfig,
    agent_settings_for,
    check_declarations,
    describe_validation_error,
    find_config,
    fingerprint,
    format_validation_error,
    interpolate,
    load_config,
    load_raw,
    register_config_secrets,
    validate_config,
)
from .locating import (
    DEFAULT_NIGHT_DIR,
    LEDGER_FILE,
    config_for_location,
    locate,
    parse_set,
    resolve_ledger,
    resolve_night_dir,
)
from .models import (
    AGENT_KEYS_PER_COMPONENT,
    MAX_CYCLES,
    MAX_HOURS,
    MAX_SEED,
    PYTEST_SCENARIO,
    SETTINGS_DECLARATIONS,
    Acknowledgement,
    AgentConfig,
    ComponentConfig,
    Config,
    ConfigModel,
    ExportConfig,
    FaultsConfig,
    Interpolated,
    NotifyConfig,
    Price,
    PytestConfig,
    ReportConfig,
    RunConfig,
    SettingMeta,
)
from .protected import ProtectedSettings

__all__ = [
    "AGENT_KEYS_PER_COMPONENT",
    "CONFIG_FILE",
    "DEFAULT_NIGHT_DIR",
    "LEDGER_FILE",
    "MAX_CYCLES",
    "MAX_HOURS",
    "MAX_SEED",
    "PYTEST_SCENARIO",
    "SETTINGS_DECLARATIONS",
    "Acknowledgement",
    "AgentConfig",
    "ComponentConfig",
    "Config",
    "ConfigModel",
    "ExportConfig",
    "FaultsConfig",
    "Interpolated",
    "LoadedConfig",
    "NotifyConfig",
    "Price",
    "ProtectedSettings",
    "PytestConfig",
    "ReportConfig",
    "RunConfig",
    "SettingMeta",
    "agent_settings_for",
    "check_declarations",
    "config_for_location",
    "describe_validation_error",
    "find_config",
    "fingerprint",
    "format_validation_error",
    "interpolate",
    "load_config",
    "load_raw",
    "locate",
    "parse_set",
    "register_config_secrets",
    "resolve_ledger",
    "resolve_night_dir",
    "validate_config",
]
