"""The layer rules, read from the source: every import of one overnight package by another
(module level or inside a function) points down the ranks below. CONTRIBUTING.md says why.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import overnight

SRC = Path(overnight.__file__).resolve().parent

# Lower ranks never import higher ones; equal ranks never import each other.
RANKS: dict[str, int] = {
    # leaves: no overnight imports, or only of other leaves
    "errors": 0,
    "numbers": 0,
    "redaction": 0,
    "runtime": 0,
    "chaos": 0,
    "sandbox": 0,
    "verdicts": 1,
    "weakening": 1,  # the weakening watch's comparisons: they mask secrets with redaction
    "config": 1,
    "ledger": 2,
    "components": 3,
    "agent": 4,
    "faults": 4,
    "engine": 5,
    "scenarios": 6,  # scenarios type against the engine's context
    "report": 6,
    "notify": 6,
    "aftercare": 7,
    "serve": 7,  # the live pages: they read the ledger and render with the report's code
    "cli": 8,
    "__main__": 9,
    "__init__": 9,  # the public API re-exports from below
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first part under overnight) of every import of an overnight module in ``path``."""
    rel = path.relative_to(SRC).with_suffix("")
    # Relative imports start from the module's package (for __init__, the package itself).
    here = ["overnight", *rel.parts][:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if len(target) == 1:  # ``from .. import x``: x is a package or module
                    names = [f"overnight.{a.name}" for a in node.names]
                else:
                    names = [".".join(target)]
            elif node.module:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "overnight" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_package_has_a_rank() -> None:
    packages = {_package_of(p) for p in SRC.rglob("*.py")}
    assert packages <= set(RANKS), f"give these a rank in tests/test_layers.py: {packages - set(RANKS)}"


# Pairs the ranks allow that are still ruled out: components get the sandbox's endpoints
# through their spec (ComponentSpec.sandbox), not by starting it themselves.
FORBIDDEN = {("components", "sandbox")}


def test_imports_point_down() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package_of(path)
        for line, target in _imports(path):
            if target == pkg or target not in RANKS:
                continue
            if RANKS[target] >= RANKS[pkg] or (pkg, target) in FORBIDDEN:
                where = f"{path.relative_to(SRC.parent)}:{line}"
                upward.append(f"{where}: {pkg} (rank {RANKS[pkg]}) imports {target} (rank {RANKS[target]})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_reader_sees_function_level_imports(tmp_path: Path) -> None:
    # The rule must see what a lazy import hides, or it could pass on a cycle.
    mod = SRC / "components" / "llm.py"
    assert any(t == "chaos" for _, t in _imports(mod))
    assert not any(t in ("sandbox", "faults", "engine", "agent", "report") for _, t in _imports(mod))


def test_nothing_in_the_package_names_the_reference_pipeline() -> None:
    # The grant pipeline is one example (examples/grant_pipeline); the tool is generic.
    # The demo command and the built-in mini scenario are the stated exceptions.
    allowed = {SRC / "cli" / "run.py", SRC / "scenarios" / "demo.py"}
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        if path in allowed or _package_of(path) == "sandbox":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"style\b", line) and '"grant"' in line:
                continue  # the sandbox's "grant" answer style, by name (an llm option's value)
            if "grant" in line.lower() and "granted" not in line.lower():
                hits.append(f"{path.relative_to(SRC.parent)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
