"""Project folders for tests: a scenario module and the overnight.toml that names it."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_project(folder: Path, scenario_code: str, config: str = "", name: str = "scenario") -> Path:
    """Write ``<name>.py`` and an ``overnight.toml`` pointing at ``<name>:cycle``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(scenario_code))
    toml = f'scenario = "{name}:cycle"\n' + textwrap.dedent(config)
    (folder / "overnight.toml").write_text(toml)
    return folder
