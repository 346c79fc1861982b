"""The ONNX export carries the 0-100 quality calibration: the torch-free path scores faces as the torch path does."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inference import assess, ort_embed
from inference.export_onnx import main as export_main
from inference.onnx_model import OrtModel
from inference.quality_scale import Calibration, file_sha256, load_calibration, save_calibration, side_file
from models import build_backbone
from models.checkpoint import save_released

ARCH = "iresnet18_w16"
PHOTOS = ["AJ_Cook/AJ_Cook_0001.jpg", "Alejandro_Toledo/Alejandro_Toledo_0021.jpg",
          "Allyson_Felix/Allyson_Felix_0005.jpg"]


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_backbone(ARCH, embedding_size=64, input_size=56).eval()
    save_released(path, model, None, 0, ARCH, config={"input_size": 56})
    return path


def _torch_scores(photos: list[Path], ckpt: Path, out: Path, scale: str) -> dict[str, tuple[float, float, str]]:
    """{photo: (magnitude, quality, quality_scale)} from inference.assess (the torch path)."""
    assert assess.assess([str(p) for p in photos], str(ckpt), out, quality_scale=scale, workers=0, device="cpu",
                         dtype="fp32", progress=False) == 0
    with open(out / "quality.csv", newline="") as f:
        return {r["path"]: (float(r["magnitude"]), float(r["quality"]), r["quality_scale"]) for r in csv.DictReader(f)}


def _ort_scores(onnx_path: Path, photos: list[Path], tmp: Path) -> dict[str, tuple[float, float, str]]:
    """The same from inference.ort_embed --photos --scores (no torch on this path)."""
    lst = tmp / "photos.list"
    lst.write_text("".join(f"{p}\n" for p in photos))
    scores = tmp / "ort_scores.csv"
    ort_embed.main(["--onnx", str(onnx_path), "--photos", "--inf_list", str(lst), "--feat_list",
                    str(tmp / "ort.npz"), "--scores", str(scores)])
    with open(scores, newline="") as f:
        return {r["path"]: (float(r["magnitude"]), float(r["quality"]), r["quality_scale"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, photos_dir: Path) -> dict:
    """A tiny checkpoint calibrated on the photos' own magnitudes (so the scores spread over 0-100), exported."""
    root = tmp_path_factory.mktemp("calib")
    photos = [photos_dir / "lfw" / p for p in PHOTOS]
    ckpt = _checkpoint(root / "w16.pth", 0)
    raw = _torch_scores(photos, ckpt, root / "raw", "raw")
    mags = np.array([m for m, _, _ in raw.values()])
    calibration = Calibration(float(np.median(mags)), float(np.ptp(mags)) / 4, source="the test photos",
                              count=len(mags), checkpoint_sha256=file_sha256(ckpt))
    save_calibration(calibration, side_file(ckpt))
    assert export_main(["--resume", str(ckpt), "--out", str(root / "m.onnx")]) == 0
    return {"root": root, "photos": photos, "ckpt": ckpt, "onnx": root / "m.onnx", "calibration": calibration}


def test_export_writes_the_side_file_and_the_metadata(calibrated):
    onnx_path = calibrated["onnx"]
    assert load_calibration(side_file(onnx_path)) == calibrated["calibration"]
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    stored = json.loads(props["quality_calibration"])
    assert stored["format"] == "magface-quality-calibration"
    assert (stored["centre"], stored["width"]) == (calibrated["calibration"].centre, calibrated["calibration"].width)


def test_ort_quality_equals_the_torch_quality(calibrated, tmp_path):
    torch_side = _torch_scores(calibrated["photos"], calibrated["ckpt"], tmp_path / "torch", "auto")
    ort_side = _ort_scores(calibrated["onnx"], calibrated["photos"], tmp_path)
    assert set(ort_side) == set(torch_side) == {str(p) for p in calibrated["photos"]}
    for path, (mag, q, scale) in torch_side.items():
        o_mag, o_q, o_scale = ort_side[path]
        assert scale == o_scale == "calibrated"
        assert o_mag == pytest.approx(mag, rel=1e-3)
        assert abs(o_q - q) <= 1, (path, q, o_q)  # integer scores: one step at most where a rounding edge falls
    assert len({q for _, q, _ in torch_side.values()}) > 1  # a spread, not a clamp to 0 or 100


def test_the_metadata_alone_is_enough(calibrated, tmp_path):
    """A model copied without its side file still scores calibrated, with the same numbers."""
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(calibrated["onnx"].read_bytes())
    for name in ("beside", "alone"):
        (tmp_path / name).mkdir()
    with_file = _ort_scores(calibrated["onnx"], calibrated["photos"], tmp_path / "beside")
    from_metadata = _ort_scores(alone, calibrated["photos"], tmp_path / "alone")
    assert from_metadata == with_file
    assert {scale for _, _, scale in from_metadata.values()} == {"calibrated"}


def test_a_checkpoint_without_calibration_clears_a_stale_side_file(calibrated, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    side_file(out).write_text(side_file(calibrated["onnx"]).read_text())  # left by an earlier export
    bare = _checkpoint(tmp_path / "bare.pth", 1)
    assert export_main(["--resume", str(bare), "--out", str(out)]) == 0
    assert "removed" in capsys.readouterr().out and not side_file(out).exists()
    assert "quality_calibration" not in {p.key for p in onnx.load(str(out)).metadata_props}
    model = OrtModel(out)
    _, scale = ort_embed.quality_calibration(model, None)
    assert scale == "ofiq-uncalibrated" and "OFIQ" in capsys.readouterr().err
