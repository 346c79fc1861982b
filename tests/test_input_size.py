"""One face size for every tool: a model working at 56 (or 64) px takes aligned 112x112 faces everywhere.

The rule lives in utils.convention (FACE_SIZE, read_aligned_face) and the resize in the model's forward,
so the toy example, gen_feat, verification and the exported ONNX graph (input (B, 3, 112, 112)) agree.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from inference import export_onnx, toy_example
from inference.onnx_model import OrtModel
from models import build_backbone
from models.checkpoint import save_released
from models.iresnet import resize_matrix
from utils.convention import FACE_SIZE, MAGFACE, read_aligned_face, to_model_input

REPO = Path(__file__).resolve().parents[1]
DEMO_ARCH, DEMO_SIZE, DEMO_EMB = "iresnet18_w32", 56, 128  # run/demo.py's defaults


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    """An untrained checkpoint saved as run/demo.py's untrained_checkpoint saves it."""
    torch.manual_seed(0)
    model = build_backbone(DEMO_ARCH, DEMO_EMB, input_size=DEMO_SIZE).eval()
    path = tmp_path_factory.mktemp("demo") / "untrained.pth"
    save_released(path, model, None, 0, DEMO_ARCH, config={"input_size": DEMO_SIZE})
    return path, model


def _faces(lfw_dir, n):
    paths = [lfw_dir / p for p in (lfw_dir / "img.list").read_text().split()[:n]]
    return paths, np.stack([read_aligned_face(p) for p in paths])


def test_toy_example_takes_112_faces_for_a_56px_model(demo_ckpt, tmp_path, capsys):
    """The README's demo call: python -m inference.toy_example --resume CKPT --images raw/demo_data/lfw/images"""
    ckpt, model = demo_ckpt
    folder = REPO / "raw" / "demo_data" / "lfw" / "images"
    paths = toy_example.list_images(folder, 4)
    images = np.stack([read_aligned_face(p) for p in paths])
    assert toy_example.main(["--resume", str(ckpt), "--images", str(folder), "--max", "4",
                             "--out", str(tmp_path / "out")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[:4]]
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), MAGFACE)
        expected = model(x).norm(dim=1).numpy()
        at_56 = model(F.avg_pool2d(x, 2)).norm(dim=1).numpy()  # the model's own resize: 2x2 averaging
    np.testing.assert_allclose(expected, at_56, rtol=1e-5)
    got = {row[1]: float(row[0]) for row in rows}
    np.testing.assert_allclose([got[str(p)] for p in paths], expected, rtol=1e-3)


def test_aligned_face_rule_rejects_other_sizes(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((56, 56, 3), np.uint8))
    with pytest.raises(ValueError, match=f"small.png: image is 56x56, expected an aligned {FACE_SIZE}x{FACE_SIZE}"):
        read_aligned_face(tmp_path / "small.png")


def test_onnx_of_a_56px_model_takes_112_input(demo_ckpt, lfw_dir, tmp_path):
    ckpt, model = demo_ckpt
    out = tmp_path / "demo.onnx"
    assert export_onnx.main(["--resume", str(ckpt), "--out", str(out), "--batch", "2"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, FACE_SIZE, FACE_SIZE]
    _, images = _faces(lfw_dir, 3)
    x = to_model_input(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), OrtModel(out).convention)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(F.avg_pool2d(x, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("size", [64, 160])
def test_non_half_sizes_resize_as_antialiased_bilinear_and_export(size, tmp_path):
    x = torch.rand(2, 3, FACE_SIZE, FACE_SIZE) * 255
    ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    a = resize_matrix(FACE_SIZE, size, x.device)
    torch.testing.assert_close(a @ x @ a.t(), ref, rtol=1e-5, atol=1e-3)
    torch.manual_seed(1)
    model = build_backbone("iresnet18_w16", 64, input_size=size).eval()
    path = tmp_path / f"m{size}.onnx"
    export_onnx.export_onnx(model, path, MAGFACE, batch=2)
    diff, scale = export_onnx.check_onnx(model, path, MAGFACE, batch_sizes=(1, 3))
    assert diff <= 1e-4 * scale
