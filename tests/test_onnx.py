"""ONNX export: parity with PyTorch at two batch sizes, names, dynamic batch, stored convention, CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inference.export_onnx import check_onnx, export_onnx, main
from inference.onnx_model import OrtModel
from models import build_backbone
from models.checkpoint import save_released
from utils.convention import INSIGHTFACE, MAGFACE, to_model_input

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def r18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone("iresnet18").eval()
    with torch.no_grad():  # non-trivial BN statistics, so a dropped BN would show in the outputs
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def exported(r18, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx(r18, path, INSIGHTFACE, batch=2, metadata={"arch": "iresnet18"})
    return path


def test_export_matches_pytorch_at_batch_1_and_3(r18, exported):
    path = exported

    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "embedding"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 112, 112]
    assert OrtModel(path).convention == INSIGHTFACE
    assert {p.key: p.value for p in proto.metadata_props}["arch"] == "iresnet18"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        pixels = torch.from_numpy(rng.integers(0, 256, (batch, 3, 112, 112), dtype=np.uint8))
        x = to_model_input(pixels, INSIGHTFACE)
        with torch.no_grad():
            expected = r18(x).numpy()
        (got,) = session.run(["embedding"], {"input": x.numpy()})
        assert got.shape == (batch, 512)
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() < 1e-4 * scale, (batch, np.abs(got - expected).max(), scale)
        # batch independence: each row equals the single-image run
        (first,) = session.run(["embedding"], {"input": x[:1].numpy()})
        np.testing.assert_allclose(got[:1], first, rtol=0, atol=1e-4 * scale)

    diff, scale = check_onnx(r18, path, INSIGHTFACE, batch_sizes=(1, 3))
    assert 0 <= diff < 1e-4 * scale


def test_check_detects_a_wrong_model_or_convention(r18, exported):
    torch.manual_seed(1)
    other = build_backbone("iresnet18").eval()
    diff, scale = check_onnx(other, exported, INSIGHTFACE, batch_sizes=(2,))
    assert diff > 0.1 * scale
    assert OrtModel(exported).convention != MAGFACE


def test_cli_exports_checkpoint_atomically(tmp_path):
    torch.manual_seed(2)
    model = build_backbone("iresnet18_w16", embedding_size=128)
    ckpt = tmp_path / "tiny.pth"
    save_released(ckpt, model, None, epoch=3, arch="iresnet18_w16", convention=INSIGHTFACE)
    out = tmp_path / "exported" / "tiny.onnx"
    result = subprocess.run(
        [sys.executable, str(REPO / "inference" / "export_onnx.py"), "--resume", str(ckpt),
         "--out", str(out), "--batch", "2"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]  # no temp file left
    assert OrtModel(out).convention == INSIGHTFACE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((4, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    (got,) = session.run(["embedding"], {"input": x})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())

    # a failed check returns non-zero and leaves nothing behind (a zero tolerance cannot be met)
    refused = tmp_path / "refused.onnx"
    assert main(["--resume", str(ckpt), "--out", str(refused), "--tolerance", "0"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "tiny.pth"]
