"""The package's import graph: no cycles, counting function-local imports too (a local import that only
hides a cycle is still a cycle: it breaks as soon as someone moves it to the top of the file)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "lightning_gcd"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> dict[str, bool]:
    """{imported lightning_gcd module: imported at function level only} for one file."""
    tree = ast.parse(path.read_text())
    found: dict[str, bool] = {}
    local_nodes = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                local = id(node) in local_nodes
                found[name] = found.get(name, True) and local
    return found


def graph() -> dict[str, dict[str, bool]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search (each reported once, from its first module)."""
    found, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycle = stack[stack.index(nxt) :]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [nxt])
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_models_have_no_import_cycle_even_through_local_imports() -> None:
    g = graph()
    edges = {
        m: {t for t in targets if t.startswith("lightning_gcd.models.") and t != m}
        for m, targets in g.items()
        if m.startswith("lightning_gcd.models.")
    }
    assert cycles(edges) == []


def test_base_loading_spectrum_import_each_other_at_top_level_only() -> None:
    """The cycle models.base ↔ models.loading ↔ models.spectrum was once hidden by local imports (the forward
    model is ``spectra.forward_model`` now, outside the core, which does not import it)."""
    trio = ("lightning_gcd.models.base", "lightning_gcd.models.loading", "lightning_gcd.spectra.forward_model")
    g = graph()
    local = {
        (m, t)
        for m in trio
        for t, only_local in g[m].items()
        if only_local and t.startswith(("lightning_gcd.models", "lightning_gcd.spectra"))
    }
    assert local == set()


@pytest.mark.parametrize(
    "first",
    [
        "lightning_gcd.spectra.forward_model",
        "lightning_gcd.spectra",
        "lightning_gcd.grain_boundaries",
        "lightning_gcd.models.loading",
        "lightning_gcd.models.base",
        "lightning_gcd.models.checkpoint",
    ],
)
def test_each_model_module_imports_first_in_a_fresh_interpreter(first: str) -> None:
    code = f"import {first}; import lightning_gcd.models.loading as l; print(l.load_model.__defaults__[-1].__name__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "DiffusionModule"


EXPERIMENTS = REPO / "experiments"


def test_experiments_import_only_the_package_and_the_runner_never_each_other() -> None:
    """The study scripts run as files; a script that edits ``sys.path`` or imports a sibling script (the
    grain-boundary study once imported private helpers of the crystal study's compare.py) is a second
    framework beside the package: shared helpers live in ``lightning_gcd.runner`` / ``lightning_gcd.studies``."""
    scripts = sorted(EXPERIMENTS.rglob("*.py"))
    stems = {p.stem for p in scripts}
    found = []
    for path in scripts:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: sys.path")
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." if node.level else (node.module or "").split(".")[0]]
            found += [f"{path.relative_to(REPO)}:{node.lineno}: imports {n}" for n in names if n in stems | {"."}]
    assert scripts and found == []
