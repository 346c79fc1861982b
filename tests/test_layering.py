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
