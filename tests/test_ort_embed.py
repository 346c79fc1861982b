"""The torch-free deployment path (inference.ort_embed) and the int8 path (gen_feat --dtype int8) on real faces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.bench_gen_feat import random_model
from inference import gen_feat, ort_embed
from inference.export_onnx import export_onnx
from inference.onnx_model import OrtModel
from inference.quality_scale import fit_calibration, logistic_quality, save_calibration, side_file
from models.checkpoint import save_released
from utils.cli import run_cli
from utils.convention import INSIGHTFACE, MAGFACE
from utils.feature_io import read_meta

REPO = Path(__file__).resolve().parents[1]
N_FACES = 32
ARCH = "iresnet18_w16"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """Random weights and BatchNorm statistics (so a dropped or misplaced BN shows)."""
    return random_model(ARCH)


@pytest.fixture(scope="module")
def files(model, lfw_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its ONNX export (MagFace and insightface conventions) and a list of real LFW faces."""
    root = tmp_path_factory.mktemp("deploy")
    listed = [line.split()[0] for line in (lfw_dir / "img.list").read_text().splitlines()[:N_FACES]]
    (root / "img.list").write_text("".join(f"{lfw_dir / p} 0\n" for p in listed))
    save_released(root / "m.pth", model, None, 0, ARCH)
    export_onnx(model, root / "m.onnx", MAGFACE, metadata={"arch": ARCH, "embedding_size": "512"})
    export_onnx(model, root / "rgb.onnx", INSIGHTFACE)
    return {"root": root, "list": root / "img.list", "ckpt": root / "m.pth", "onnx": root / "m.onnx",
            "rgb": root / "rgb.onnx"}


@pytest.fixture(scope="module")
def torch_feats(files) -> np.ndarray:
    out = files["root"] / "torch.npz"
    gen_feat.main(["--resume", str(files["ckpt"]), "--inf_list", str(files["list"]), "--feat_list", str(out),
                   "--device", "cpu", "--fuse", "off", "--dtype", "fp32"])
    with np.load(out) as z:
        return z["features"]


def test_ort_path_equals_torch_path(files, torch_feats, tmp_path):
    out = tmp_path / "ort.npz"
    ort_embed.main(["--onnx", str(files["onnx"]), "--inf_list", str(files["list"]), "--feat_list", str(out)])
    with np.load(out) as z:
        feats, mags, paths = z["features"], z["magnitudes"], list(z["paths"])
    assert paths == [line.split()[0] for line in files["list"].read_text().splitlines()]
    scale = np.abs(torch_feats).max()
    assert np.abs(feats - torch_feats).max() <= 1e-4 * scale  # fp32 rounding (ORT vs torch kernels)
    np.testing.assert_allclose(mags, np.linalg.norm(torch_feats, axis=1), rtol=1e-4)


def test_rgb_convention_from_metadata(files, model, lfw_dir):
    """The insightface export flips the channels and centres the pixels: the numpy side must do the same."""
    from utils.convention import read_aligned_face, to_model_input

    faces = np.stack([read_aligned_face(line.split()[0]) for line in files["list"].read_text().splitlines()[:4]])
    with torch.inference_mode():
        expected = model(to_model_input(torch.from_numpy(faces.transpose(0, 3, 1, 2).copy()), INSIGHTFACE)).numpy()
    got = OrtModel(files["rgb"]).embed(faces)
    assert OrtModel(files["rgb"]).convention == INSIGHTFACE
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_quality_scores_use_the_side_file(files, torch_feats, tmp_path):
    mags = np.linalg.norm(torch_feats, axis=1)
    calib = fit_calibration(mags * 1.1, "test reference")
    qjson = tmp_path / "q.json"
    save_calibration(calib, qjson)
    scores = tmp_path / "scores.csv"
    result = ort_embed.main(["--onnx", str(files["onnx"]), "--inf_list", str(files["list"]), "--feat_list",
                             str(tmp_path / "f.txt"), "--scores", str(scores), "--quality-json", str(qjson)])
    rows = [line.split(",") for line in scores.read_text().splitlines()[1:]]
    assert len(rows) == N_FACES and {r[3] for r in rows} == {"calibrated"}
    expected = logistic_quality(result["magnitudes"], calib)
    assert [int(r[2]) for r in rows] == expected.astype(int).tolist()
    assert 0 < expected.min() < expected.max() < 100  # a real spread, not a clamp
    assert side_file(files["onnx"]).name == "m.onnx.quality.json"


def test_no_torch_is_imported(files, tmp_path):
    out = tmp_path / "f.npz"
    code = ("import sys; from inference import ort_embed; "
            f"ort_embed.main(['--onnx', {str(files['onnx'])!r}, '--inf_list', {str(files['list'])!r}, "
            f"'--feat_list', {str(out)!r}]); "
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert out.is_file()


def test_photos_are_detected_and_aligned(files, photos_dir, tmp_path):
    photos = sorted((photos_dir / "celeba").glob("*.jpg"))[:3]
    no_face = [photos_dir / line.split()[0]
               for line in (photos_dir / "no_face.txt").read_text().splitlines()[:1]]
    lst = tmp_path / "photos.list"
    lst.write_text("".join(f"{p}\n" for p in photos + no_face))
    out = tmp_path / "f.npz"
    result = ort_embed.main(["--onnx", str(files["onnx"]), "--photos", "--inf_list", str(lst), "--feat_list", str(out)])
    with np.load(out) as z:
        assert list(z["paths"]) == [str(p) for p in photos]
        assert z["features"].shape == (3, 512) and np.isfinite(z["features"]).all()
    assert result["num_images"] == 3


def said(capsys, caplog) -> str:
    """The error line: on stderr, or in the project's log once an earlier test has set up its logger
    (whose handler may hold an earlier test's stream); no traceback."""
    captured = capsys.readouterr()
    text = captured.err + captured.out + caplog.text
    caplog.clear()
    assert "Traceback" not in text
    return next((line for line in text.splitlines() if ".py: error: " in line), "")


def test_bad_inputs_give_one_line(files, tmp_path, capsys, caplog):
    missing = ["--onnx", str(tmp_path / "nope.onnx"), "--inf_list", str(files["list"]), "--feat_list",
               str(tmp_path / "o.npz")]
    assert run_cli(ort_embed.main, missing, "ort_embed.py") == 2
    err = said(capsys, caplog)
    assert "ONNX model not found" in err and "nope.onnx" in err
    bad_list = tmp_path / "bad.list"
    lines = files["list"].read_text().splitlines()
    bad_list.write_text(f"{lines[0]}\n{tmp_path / 'missing.jpg'} 0\n")
    argv = ["--onnx", str(files["onnx"]), "--inf_list", str(bad_list), "--feat_list", str(tmp_path / "o.npz")]
    assert run_cli(ort_embed.main, argv, "ort_embed.py") == 2
    err = said(capsys, caplog)
    assert f"{bad_list}:2:" in err and "missing.jpg" in err
    import onnx

    proto = onnx.load(str(files["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    argv[1] = str(tmp_path / "bare.onnx")
    argv[3] = str(files["list"])
    assert run_cli(ort_embed.main, argv, "ort_embed.py") == 2
    assert "'input_convention'" in said(capsys, caplog)
    assert not (tmp_path / "o.npz").exists()


def test_int8_parity_and_cache(files, torch_feats, tmp_path, monkeypatch, capsys):
    """gen_feat --dtype int8: cosine >= 0.99 to fp32 on real faces; the second run reuses the cached model
    without importing torch."""
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    argv = ["--resume", str(files["ckpt"]), "--inf_list", str(files["list"]), "--dtype", "int8"]
    gen_feat.main(argv + ["--feat_list", str(tmp_path / "a.npz")])
    cached = list((tmp_path / "cache").glob("*.int8.onnx"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("tmp*"))
    stamp = cached[0].stat().st_mtime_ns
    code = ("import sys; from inference import gen_feat; "
            f"gen_feat.main({argv + ['--feat_list', str(tmp_path / 'b.npz')]!r}); "
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MAGFACE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout  # a cached int8 run starts without torch
    assert list((tmp_path / "cache").glob("*.int8.onnx")) == cached and cached[0].stat().st_mtime_ns == stamp
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["features"], b["features"])
        cos = cosines(a["features"], torch_feats)
    assert cos.min() >= 0.99, cos.min()
    meta = OrtModel(cached[0]).metadata
    assert json.loads(meta["input_convention"]) == MAGFACE.to_dict() and meta["calibration_faces"] == str(N_FACES)
    # ort_embed says what ran, once, and keeps it with the features: int8 for the quantized file, fp32 for the export
    for onnx, dtype in ((cached[0], "int8"), (files["onnx"], "fp32")):
        out = tmp_path / f"ort_{dtype}.npz"
        ort_embed.main(["--onnx", str(onnx), "--inf_list", str(files["list"]), "--feat_list", str(out),
                        "--runtime", "onnxruntime"])
        assert read_meta(out)["precision"]["dtype"] == dtype
        assert read_meta(out)["precision"]["backend"] == "onnxruntime"
    printed = capsys.readouterr().out
    assert printed.count("precision int8 on cpu, onnxruntime (the file's (qdq-") == 1
    assert printed.count("precision fp32 on cpu, onnxruntime (the file's (no quantization recorded))") == 1


def test_gen_feat_onnxruntime_backend_equals_torch(files, torch_feats, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    gen_feat.main(["--resume", str(files["ckpt"]), "--inf_list", str(files["list"]), "--backend", "onnxruntime",
                   "--feat_list", str(tmp_path / "a.npz")])
    assert len(list((tmp_path / "cache").glob("*.fp32.onnx"))) == 1
    with np.load(tmp_path / "a.npz") as a:
        assert np.abs(a["features"] - torch_feats).max() <= 1e-5 * np.abs(torch_feats).max()


def test_int8_bad_inputs(files, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    base = ["--inf_list", str(files["list"]), "--feat_list", str(tmp_path / "o.npz"), "--dtype", "int8"]
    assert run_cli(gen_feat.main, ["--resume", str(tmp_path / "none.pth"), *base], "gen_feat.py") == 2
    err = said(capsys, caplog)
    assert "none.pth" in err
    assert run_cli(gen_feat.main, ["--resume", str(files["ckpt"]), "--flip", *base], "gen_feat.py") == 2
    assert "--flip" in said(capsys, caplog)
    assert not os.path.exists(tmp_path / "o.npz")
