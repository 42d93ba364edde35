"""Where nights and the ledger live (flag > config > default), and ``--set`` plan choices."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UsageError
from .loading import LoadedConfig, find_config, load_config
from .models import SETTINGS_DECLARATIONS

DEFAULT_NIGHT_DIR = "night_tests"
LEDGER_FILE = "overnight.db"


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
        if key in SETTINGS_DECLARATIONS:
            raise UsageError(
                f"--set {key}: [settings.{key}] is not a protected setting (it says how they are "
                "compared between nights); write it in the config"
            )
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
