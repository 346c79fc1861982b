"""The packages form layers: a module imports only from its own package and the packages below it.

utils (no project imports) < models < faces < dataloader < inference < eval < run < bench. Imports inside functions
count too: a deferred import is still an arrow. A new import that points upwards fails here, naming the module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("utils", "models", "faces", "dataloader", "inference", "eval", "run", "bench")


def _imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    upward = {str(m.relative_to(REPO)): sorted(_imported_packages(m) - allowed) for m in modules}
    assert not {k: v for k, v in upward.items() if v}, f"{package}/ may import only {sorted(allowed)}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from run.engine import flip_mask\n    import eval.metrics\n")
    assert _imported_packages(module) == {"run", "eval"}


# Inside the packages: no two modules import each other, directly or round a loop (HOUSE_STYLE's layout).
def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, root: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (in functions and under ``if TYPE_CHECKING:`` too):
    ``from a import b`` names the module ``a.b`` when there is one, else ``a``."""
    here = _module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, over every .py file of ``packages`` under ``root``."""
    files = {_module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    known = set(files)
    return {name: _imported_modules(path, root, known) - {name} for name, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per group of modules that import each other, directly or round a loop."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return [_loop(graph, set(group)) for group in sorted(groups)]


def _loop(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest way round from the group's first module back to itself, through the group only."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no loop through {sorted(group)}")


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph(REPO, LAYERS))
    assert not cycles, "modules that import each other (a deferred import is still an arrow): " + "; ".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_check_sees_a_planted_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n")
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
