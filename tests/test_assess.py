"""inference.assess end to end on real photographs and on every kind of bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from inference import assess
from inference.onnx_model import choose_runtime
from inference.quality_report import COLUMNS
from inference.quality_scale import OFIQ, Calibration, logistic_quality, save_calibration, side_file
from models.backbones import build_backbone
from models.checkpoint import save_released
from utils.cpu_info import CpuInfo, choose_precision

LFW_PHOTOS = ["AJ_Cook/AJ_Cook_0001.jpg", "Alejandro_Toledo/Alejandro_Toledo_0021.jpg",
              "Allyson_Felix/Allyson_Felix_0005.jpg"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64, input_size=56).eval()
    path = tmp_path_factory.mktemp("ckpt") / "w16.pth"
    save_released(path, model, None, 0, "iresnet18_w16", config={"input_size": 56})
    return path


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> np.ndarray:
    return cv2.imread(str(photos_dir / "lfw" / LFW_PHOTOS[0]))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, photo: np.ndarray, photos_dir: Path) -> tuple[Path, dict[str, str]]:
    """A folder of awkward files and the status each must get."""
    root = tmp_path_factory.mktemp("bad")
    (root / "text.jpg").write_text("not an image at all\n")
    (root / "random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "empty.jpg").write_bytes(b"")
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    (root / "truncated.jpg").write_bytes(data[:400])
    small = np.full((320, 320, 3), 128, np.uint8)
    small[100:160, 100:160] = cv2.resize(photo, (60, 60), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "tiny_face.png"), small)
    cv2.imwrite(str(root / "gray.jpg"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    Image.fromarray(photo[:, :, ::-1]).convert("CMYK").save(root / "cmyk.jpg")
    cv2.imwrite(str(root / "deep16.png"), photo.astype(np.uint16) * 257)
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:20] = 0
    cv2.imwrite(str(root / "alpha.png"), np.dstack([photo, alpha]))
    big = np.full((4000, 6000, 3), 90, np.uint8)
    big[1000:3000, 2500:4500] = cv2.resize(photo, (2000, 2000), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(root / "big_6000x4000.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    no_face = (photos_dir / "no_face.txt").read_text().split()[0]
    shutil.copy(photos_dir / no_face, root / "no_face.jpg")
    expected = {"text.jpg": "unreadable", "random.png": "unreadable", "empty.jpg": "unreadable",
                "truncated.jpg": "unreadable", "tiny_face.png": "too_small", "gray.jpg": "ok", "cmyk.jpg": "ok",
                "deep16.png": "ok", "alpha.png": "ok", "big_6000x4000.jpg": "ok", "no_face.jpg": "no_face"}
    return root, expected


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == tuple(COLUMNS)
        return list(reader)


def test_assess_real_photos(ckpt, photos_dir, tmp_path, capsys):
    root = photos_dir / "lfw"
    listed = tmp_path / "photos.txt"
    listed.write_text("".join(f"{root / p}\n" for p in LFW_PHOTOS[1:]))
    out = tmp_path / "out"
    code = assess.main([str(root / LFW_PHOTOS[0]), str(listed), "--resume", str(ckpt), "--out", str(out),
                        "--save-crops", "--save-features", "--no-progress", "--workers", "0"])
    assert code == 0
    assert "UNCALIBRATED" in capsys.readouterr().err
    rows = read_csv(out / "quality.csv")
    assert [Path(r["path"]).name for r in rows] == [Path(p).name for p in LFW_PHOTOS]
    assert all(r["status"] == "ok" and r["quality_scale"] == "ofiq-uncalibrated" for r in rows)
    feats = np.load(out / "features.npz")
    mags = np.linalg.norm(feats["features"], axis=1)
    np.testing.assert_allclose([float(r["magnitude"]) for r in rows], mags, rtol=1e-4)
    np.testing.assert_array_equal([int(r["quality"]) for r in rows], logistic_quality(mags, OFIQ))
    lines = (photos_dir / "landmarks.txt").read_text().splitlines()
    reference = {ln.split()[0]: ln.split() for ln in lines}
    for row, rel in zip(rows, LFW_PHOTOS, strict=True):  # landmarks in the photo's own pixels
        ref = np.array(reference[f"lfw/{rel}"][2:], float)
        got = np.array([float(row[c]) for c in COLUMNS[8:18]])
        assert np.abs(got - ref).max() < 1.0
    crops = sorted((out / "crops").iterdir())
    assert len(crops) == 3 and cv2.imread(str(crops[0])).shape == (112, 112, 3)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 3 * 96
    summary = json.loads((out / "quality.json").read_text())["summary"]
    assert summary["faces"] == 3 and summary["quality_scale"] == "ofiq-uncalibrated"
    # detection in 2 worker processes gives the same rows, in input order (the library call the CLI makes)
    assert assess.assess([str(root / LFW_PHOTOS[0]), str(listed)], str(ckpt), tmp_path / "w2", workers=2,
                         progress=False) == 0
    assert read_csv(tmp_path / "w2" / "quality.csv") == rows


def test_bad_inputs_each_get_a_status(ckpt, bad_inputs, tmp_path, capsys):
    root, expected = bad_inputs
    out = tmp_path / "out"
    code = assess.main([str(root), "--resume", str(ckpt), "--out", str(out), "--no-progress", "--workers", "0"])
    assert code == 0  # some faces were assessed
    rows = read_csv(out / "quality.csv")
    got = {Path(r["path"]).name: r["status"] for r in rows}
    assert got == expected
    notes = {Path(r["path"]).name: r["note"] for r in rows}
    assert "grayscale" in notes["gray.jpg"] and "CMYK" in notes["cmyk.jpg"]
    assert "16-bit" in notes["deep16.png"] and "alpha" in notes["alpha.png"]
    assert "not a decodable image" in notes["text.jpg"] and "empty" in notes["empty.jpg"]
    big = next(r for r in rows if r["path"].endswith("big_6000x4000.jpg"))
    assert (big["width"], big["height"]) == ("6000", "4000") and float(big["box_x2"]) > 3000
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert assess.main([str(root), "--resume", str(ckpt), "--out", str(tmp_path / "strict"), "--strict",
                        "--no-progress", "--workers", "0"]) == 1
    assert "--strict" in capsys.readouterr().err


def test_no_face_at_all_exits_nonzero(ckpt, bad_inputs, tmp_path, capsys):
    root, _ = bad_inputs
    out = tmp_path / "out"
    code = assess.main([str(root / "text.jpg"), str(root / "no_face.jpg"), "--resume", str(ckpt), "--out", str(out),
                        "--no-progress"])
    assert code == 1
    assert "no face could be assessed" in capsys.readouterr().err
    assert [r["status"] for r in read_csv(out / "quality.csv")] == ["unreadable", "no_face"]
    assert assess.main([str(tmp_path / "missing.jpg"), "--resume", str(ckpt), "--out", str(out)]) == 2


def test_interrupted_run_leaves_no_csv(ckpt, photos_dir, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assess, "embed_batch", boom)
    out = tmp_path / "out"
    # utils.cli's rule for every entry point: Ctrl-C ends with status 130 and one line, nothing half-written
    assert assess.main([str(photos_dir / "lfw" / LFW_PHOTOS[0]), "--resume", str(ckpt), "--out",
                        str(out), "--no-progress"]) == 130
    assert not (out / "quality.csv").exists()


def test_calibrated_scale_is_read_from_the_side_file(ckpt, photos_dir, tmp_path, capsys):
    cal = Calibration(centre=20.0, width=1.5, source="test")
    save_calibration(cal, side_file(ckpt))
    try:
        out = tmp_path / "out"
        photo = photos_dir / "lfw" / LFW_PHOTOS[0]
        assert assess.main([str(photo), "--resume", str(ckpt), "--out", str(out), "--no-progress"]) == 0
        assert "UNCALIBRATED" not in capsys.readouterr().err
        row = read_csv(out / "quality.csv")[0]
        assert row["quality_scale"] == "calibrated"
        assert int(row["quality"]) == logistic_quality(float(row["magnitude"]), cal)
        assert assess.main([str(photo), "--resume", str(ckpt), "--out", str(out), "--no-progress",
                            "--quality-scale", "raw"]) == 0
        row = read_csv(out / "quality.csv")[0]
        assert row["quality_scale"] == "raw" and row["quality"] == row["magnitude"]
    finally:
        side_file(ckpt).unlink()
    assert assess.main([str(photo), "--resume", str(ckpt), "--out", str(out), "--quality-scale", "calibrated"]) == 2
    assert "no calibration" in capsys.readouterr().err


def test_int8_runs_the_cached_quantized_model_and_agrees_with_fp32(ckpt, photos_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    photos = [str(photos_dir / "lfw" / p) for p in LFW_PHOTOS]
    feats = {}
    for dtype in ("fp32", "int8"):
        out = tmp_path / dtype
        assert assess.main([*photos, "--resume", str(ckpt), "--out", str(out), "--no-progress", "--workers", "0",
                            "--dtype", dtype, "--save-features"]) == 0
        summary = json.loads((out / "quality.json").read_text())["summary"]
        assert summary["dtype"] == dtype and summary["precision"]["dtype"] == dtype
        feats[dtype] = np.load(out / "features.npz")["features"]
    printed = capsys.readouterr().out
    assert f"precision int8 on cpu, {choose_runtime('auto')} (as asked)" in printed  # this CPU's runtime
    assert "quantizing (calibration on 256 faces)" in printed  # evenly spread over the bundled LFW list
    assert len(list((tmp_path / "cache").glob("*.int8.onnx"))) == 1
    a, b = feats["fp32"], feats["int8"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert feats["int8"].shape == (3, 64) and cos.min() > 0.98, cos
    assert not np.array_equal(a, b)  # really the quantized model, not the fp32 one again


def test_int8_is_refused_for_mobilefacenet(photos_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    model = build_backbone("mobilefacenet", embedding_size=128).eval()
    path = tmp_path / "mfn.pth"
    save_released(path, model, None, 0, "mobilefacenet")
    photo = str(photos_dir / "lfw" / LFW_PHOTOS[0])
    assert assess.main([photo, "--resume", str(path), "--out", str(tmp_path / "o"), "--dtype", "int8"]) == 2
    err = capsys.readouterr().err
    assert "int8 is not accurate for mobilefacenet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "quality.csv").exists()


def cpu_choice(flags: str, requested: str = "auto", device: str = "cpu"):
    return choose_precision(requested, device, CpuInfo("test CPU", frozenset(flags.split()), "test"), int8=True)


@pytest.mark.parametrize("requested, flags, dtype, arch, expected", [
    ("auto", "avx2 fma f16c", "auto", "iresnet50", "onnxruntime"),  # no native bf16: fp32, on onnxruntime
    ("auto", "avx2 avx512f avx512_bf16", "auto", "iresnet50", "torch"),  # PyTorch's bf16 is faster
    ("auto", "avx2 avx512f avx512_bf16", "auto", "mobilefacenet", "onnxruntime"),  # fp32 as fast, and exact
    ("auto", "avx2 fma f16c", "fp32", "iresnet50", "torch"),  # an explicit --dtype keeps PyTorch
    ("auto", "avx2 fma f16c", "int8", "iresnet50", "onnxruntime"),
    ("torch", "avx2 fma f16c", "auto", "mobilefacenet", "torch"),
    ("onnxruntime", "avx2 avx512f avx512_bf16", "fp32", "iresnet50", "onnxruntime"),
])
def test_choose_assess_backend(requested, flags, dtype, arch, expected):
    assert assess.choose_assess_backend(requested, cpu_choice(flags, dtype), arch, have_onnxruntime=True)[0] == expected


def test_choose_assess_backend_on_a_gpu_without_onnxruntime_and_bad_pairs():
    gpu = choose_precision("auto", "cuda")
    assert assess.choose_assess_backend("auto", gpu, "mobilefacenet", have_onnxruntime=True)[0] == "torch"
    bare = cpu_choice("avx2 fma f16c")
    assert assess.choose_assess_backend("auto", bare, "iresnet50", have_onnxruntime=False) == (
        "torch", "onnxruntime is not installed")
    with pytest.raises(ValueError, match="--backend onnxruntime runs fp32 on the CPU, not bf16 on cpu"):
        assess.choose_assess_backend("onnxruntime", cpu_choice("avx2 avx512_bf16", "bf16"), "iresnet50")
    with pytest.raises(ValueError, match="not bf16 on cuda"):
        assess.choose_assess_backend("onnxruntime", gpu, "iresnet50")


def test_default_onnxruntime_path_scores_as_pytorch_fp32_and_falls_back_when_no_cache(ckpt, photos_dir, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAGFACE_CPU_FLAGS", "fpu sse avx avx2 fma f16c")  # a CPU without native bf16
    photos = [str(photos_dir / "lfw" / p) for p in LFW_PHOTOS]
    common = ["--resume", str(ckpt), "--no-progress", "--workers", "0", "--save-features", "--device", "cpu"]
    runs = {"auto": [], "torch": ["--backend", "torch"]}
    feats, quality = {}, {}
    for name, extra in runs.items():
        assert assess.main([*photos, *common, "--out", str(tmp_path / name), *extra]) == 0
        feats[name] = np.load(tmp_path / name / "features.npz")["features"]
        quality[name] = [r["quality"] for r in read_csv(tmp_path / name / "quality.csv")]
    printed = capsys.readouterr().out
    assert "precision fp32 on cpu, onnxruntime (auto: no native bf16" in printed
    assert "precision fp32 on cpu, torch (auto: no native bf16" in printed  # --backend torch: the same fp32 in PyTorch
    np.testing.assert_allclose(feats["auto"], feats["torch"], rtol=1e-4, atol=1e-4 * np.abs(feats["torch"]).max())
    assert quality["auto"] == quality["torch"]
    # a cache that cannot be written: the default falls back to PyTorch, in one line
    (tmp_path / "ro").write_text("a file where the cache folder should be")
    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "ro"))
    assert assess.main([*photos, *common, "--out", str(tmp_path / "fallback")]) == 0
    captured = capsys.readouterr()
    assert "could not be made or cached" in captured.err and "torch (auto: no native bf16" in captured.out
    np.testing.assert_array_equal(np.load(tmp_path / "fallback" / "features.npz")["features"], feats["torch"])
