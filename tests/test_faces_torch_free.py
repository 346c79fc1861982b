"""faces/ stays torch-free (the ONNX deployment path imports it): every module of it imports without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_faces_modules_import_without_torch():
    modules = sorted(f"faces.{p.stem}" for p in (REPO / "faces").glob("*.py") if p.stem != "__init__")
    assert "faces.align" in modules and "faces.photo_faces" in modules
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
