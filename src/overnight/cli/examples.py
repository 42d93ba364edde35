"""``overnight init``, and where the shipped examples are (``overnight demo`` runs one).

The examples are found wherever ``$OVERNIGHT_EXAMPLES`` says, in a source tree
(``examples/`` beside ``src/``), or in an installed wheel (``overnight/_examples/``, which
setup.py copies from ``examples/`` at build time). Which one the demo runs, and ``init``
writes out, is read from that folder's ``index.toml`` (``demo = "<folder>"``): the package
names no example itself.
"""

from __future__ import annotations

import importlib.resources
import os
import shlex
import shutil
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .app import app, fail, guarded

EXAMPLES_ENV = "OVERNIGHT_EXAMPLES"
INDEX = "index.toml"
PACKAGED = "_examples"
# What running an example leaves in its folder: never written out by init.
LEFT_BY_RUNS = frozenset({"__pycache__", "night_tests", ".pytest_cache", ".ruff_cache", ".mypy_cache"})


def examples_dir() -> Path | None:
    """The first examples folder that holds the demo's example: ``$OVERNIGHT_EXAMPLES``,
    the source tree's ``examples/``, then the installed package's ``_examples/``."""
    for folder in _candidates():
        if _demo_in(folder) is not None:
            return folder
    return None


def demo_example() -> Path | None:
    """The folder of the example the demo runs (its ``overnight.toml`` inside), or None
    when this installation has none."""
    folder = examples_dir()
    return _demo_in(folder) if folder is not None else None


def _candidates() -> list[Path]:
    env = os.environ.get(EXAMPLES_ENV)
    out = [Path(env).expanduser()] if env else []
    out.append(Path(__file__).resolve().parents[3] / "examples")
    packaged = importlib.resources.files("overnight") / PACKAGED
    if isinstance(packaged, Path):  # a zipped installation has no folder to run from
        out.append(packaged)
    return out


def _demo_in(folder: Path) -> Path | None:
    index = folder / INDEX
    if not index.is_file():
        # An examples folder without an index: its only example with an overnight.toml.
        configs = sorted(folder.glob("*/overnight.toml"))
        return configs[0].parent if len(configs) == 1 else None
    try:
        name = tomllib.loads(index.read_text(encoding="utf-8")).get("demo")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None
    found = folder / name
    return found if (found / "overnight.toml").is_file() else None


@app.command()
def init(
    folder: Annotated[
        Path,
        typer.Argument(help="where to write the project (created if missing) \\[default: this folder]"),
    ] = Path("."),
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="write into a folder that is not empty (files of the same name are replaced)"
        ),
    ] = False,
) -> None:
    """Write the demo's reference example into FOLDER as a project to edit: scenario, config, data.

    The scenario module, overnight.toml with its GigaChat, OpenAI and fault-injection
    variants, its data and its fault plans. Then: cd FOLDER && overnight run --cycles 1"""
    guarded(init_command, folder=folder, force=force)


def init_command(folder: Path, force: bool) -> None:
    source = demo_example()
    if source is None:
        fix = f"reinstall overnight, or set ${EXAMPLES_ENV} to an examples folder"
        raise fail(f"init: the reference example is not in this installation ({fix})", 3)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"init: {folder} is not a folder")
    files = _files_of(source)
    try:
        if folder.is_dir() and any(folder.iterdir()) and not force:
            raise UsageError(f"init: {folder} is not empty; give --force to write into it anyway")
        for rel in files:
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            # The contents only: an installed package's read-only modes stay behind.
            shutil.copyfile(source / rel, target)
    except OSError as exc:
        raise UsageError(f"init: cannot write in {folder}: {exc.strerror or exc}") from None
    where = folder.resolve()
    typer.echo(f"overnight init: wrote the example {source.name} ({len(files)} files) to {where}")
    typer.echo(f"next: cd {shlex.quote(str(where))} && overnight run --cycles 1")


def _files_of(source: Path) -> list[Path]:
    """The example's files, relative to its folder, without what runs left there."""
    return [
        p.relative_to(source)
        for p in sorted(source.rglob("*"))
        if p.is_file()
        and not LEFT_BY_RUNS.intersection(p.relative_to(source).parts)
        and p.suffix not in (".pyc", ".pyo")
    ]
