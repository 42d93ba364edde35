"""The build step pyproject.toml cannot say: the wheel carries ``examples/`` as package data.

The examples live once, in ``examples/`` at the top of the repository (the package never
imports them). Building the package copies that folder to ``overnight/_examples/`` in the
build, so ``pip install overnight && overnight demo`` runs the reference example and
``overnight init`` writes it out, with no second copy in the repository. ``MANIFEST.in``
puts ``examples/`` in the sdist, so a wheel built from the sdist carries it too. An
editable install copies nothing: it finds ``examples/`` in the source tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXAMPLES = Path(__file__).resolve().parent / "examples"
TARGET = Path("overnight", "_examples")  # inside the build, as importlib.resources sees it
# What running an example leaves in its folder; never shipped.
LEFT_BY_RUNS = ("__pycache__", "*.py[cod]", "night_tests", ".pytest_cache", ".ruff_cache", ".mypy_cache")


class BuildPyWithExamples(build_py):
    """``build_py``, then ``examples/`` copied into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (EXAMPLES / "index.toml").is_file():
            raise SystemExit(f"overnight's build: no {EXAMPLES / 'index.toml'} (is examples/ missing?)")
        target = Path(self.build_lib) / TARGET
        if target.exists():  # a copy from an earlier build may hold files removed since
            shutil.rmtree(target)
        shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns(*LEFT_BY_RUNS))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        target = Path(self.build_lib) / TARGET
        if not self.editable_mode and target.is_dir():
            outputs += [str(p) for p in sorted(target.rglob("*")) if p.is_file()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithExamples})
