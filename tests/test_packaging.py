"""The demo in every install: ``overnight init`` writes the demo's example out as a project,
and a built wheel carries the examples (``overnight/_examples``) for ``demo`` and ``init``.

.ci/wheel-demo is the full check (sdist, the wheel built from it, a fresh venv); the slow
test here builds the wheel from a copy of the tree and runs the unpacked wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from .conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DEMO = EXAMPLES / tomllib.loads((EXAMPLES / "index.toml").read_text())["demo"]
SIX_STEPS = ["interview", "audit", "research", "writer", "reviewer", "expert"]
LEFT_BY_RUNS = ("__pycache__", "*.pyc", "night_tests", ".pytest_cache")


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes), without what runs leave."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not {"__pycache__", "night_tests", ".pytest_cache"} & set(p.relative_to(folder).parts)
        and p.suffix != ".pyc"
    }


def _everything(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder``, with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_init_writes_the_demo_example_as_a_project_and_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    proj = tmp_path / "new" / "proj"  # parents are created
    res = run_cli(["init", str(proj)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"overnight init: wrote the example {DEMO.name} ({len(_tree(DEMO))} files) to {proj}",
        f"next: cd {proj} && overnight run --cycles 1",
    ]
    written = _tree(proj)
    assert written == _tree(DEMO)  # the example's files, byte for byte
    assert {"overnight.toml", "pipeline.py", "faults.toml", "data/profiles.json"} <= set(written)
    assert any(name.startswith("data/corpus/") for name in written)
    assert not (proj / "night_tests").exists() and not (proj / "__pycache__").exists()
    assert all(os.access(p, os.W_OK) for p in proj.rglob("*"))  # a project to edit

    # A folder that is not empty is refused, in one line, exit 2, and left as it was.
    (proj / "overnight.toml").write_text("# mine\n")
    again = run_cli(["init", str(proj)], cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"overnight: error: init: {proj} is not empty; give --force to write into it anyway"
    ]
    assert (proj / "overnight.toml").read_text() == "# mine\n"
    # The current folder is the default, and is refused the same way.
    here = run_cli(["init"], cwd=proj)
    assert here.returncode == 2 and "init: . is not empty" in here.stderr
    # --force writes into it: the example's files replace theirs, the user's other files stay.
    (proj / "notes.txt").write_text("keep me\n")
    forced = run_cli(["init", "--force", str(proj)], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (proj / "overnight.toml").read_bytes() == (DEMO / "overnight.toml").read_bytes()
    assert (proj / "notes.txt").read_text() == "keep me\n"

    # A file where the folder should be, in one line, exit 2.
    (tmp_path / "afile").write_text("x")
    res = run_cli(["init", str(tmp_path / "afile")], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == f"overnight: error: init: {tmp_path / 'afile'} is not a folder"


def test_init_into_an_empty_folder_then_a_night_there_passes(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()  # an existing empty folder is fine
    assert run_cli(["init"], cwd=proj).returncode == 0
    res = run_cli(["run", "--cycles", "1", "--seed", "5"], cwd=proj)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("PASSED")
    report = json.loads(next((proj / "night_tests").glob("*/report.json")).read_text())
    assert list(report["step_outcomes"]) == SIX_STEPS


@pytest.mark.slow
def test_a_built_wheel_carries_the_examples_for_demo_and_init(tmp_path: Path) -> None:
    """The wheel from a copy of the tree (what a checkout holds, nothing a run left),
    unpacked as an installation: examples_dir() finds its ``overnight/_examples``, the demo
    runs the reference example from it and writes nothing there, init writes it out."""
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns(*LEFT_BY_RUNS, "build", "*.egg-info")
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    shutil.copytree(EXAMPLES, tree / "examples", ignore=ignore)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("overnight-*.whl"))
    site = tmp_path / "install" / "site-packages"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    packaged = site / "overnight" / "_examples"
    assert _tree(packaged / DEMO.name) == _tree(DEMO)
    assert (packaged / "index.toml").read_bytes() == (EXAMPLES / "index.toml").read_bytes()

    # The unpacked wheel first on the path, no examples/ beside it, no $OVERNIGHT_EXAMPLES.
    env = {k: v for k, v in os.environ.items() if k not in ("OVERNIGHT_EXAMPLES", "COLUMNS")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # Python's own caches are not the demo's writing
    user = tmp_path / "user"
    user.mkdir()

    def python(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=user, env=env, capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    where = python(
        "-c",
        "import overnight; from overnight.cli.examples import examples_dir, demo_example;"
        "print(overnight.__file__); print(examples_dir()); print(demo_example())",
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [
        str(site / "overnight" / "__init__.py"),
        str(packaged),
        str(packaged / DEMO.name),
    ]

    before = _everything(site)
    demo = python("-m", "overnight", "demo", "--cycles", "1", "--seed", "2")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.startswith("PASSED") and "mini scenario" not in demo.stderr
    report = json.loads(next((user / "night_tests").glob("*/report.json")).read_text())
    assert list(report["step_outcomes"]) == SIX_STEPS
    assert _everything(site) == before  # nothing written into the installed package

    init = python("-m", "overnight", "init", "proj")
    assert init.returncode == 0, init.stderr
    assert _tree(user / "proj") == _tree(DEMO)
