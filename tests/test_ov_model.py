"""OpenVINO as the runtime of the ONNX paths (inference/onnx_model.py): choice, parity with onnxruntime, real faces."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.bench_gen_feat import random_model
from inference import gen_feat, ort_embed
from inference.int8 import fp32_export, int8_model
from inference.onnx_model import OrtModel, OvModel, choose_runtime
from models.checkpoint import save_released
from utils.cli import run_cli
from utils.convention import INSIGHTFACE, read_aligned_face
from utils.cpu_info import CpuInfo

pytest.importorskip("openvino")  # in requirements.txt; skipped only where someone installs without it

ARCH = "iresnet18_w16"
N_FACES = 48


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def deploy(lfw_dir: Path, tmp_path_factory) -> dict:
    """A random-weight checkpoint, its cached fp32 export and int8 model, and real LFW faces."""
    root = tmp_path_factory.mktemp("ov")
    paths = [str(lfw_dir / line.split()[0]) for line in (lfw_dir / "img.list").read_text().splitlines()[:N_FACES]]
    (root / "img.list").write_text("".join(f"{p} 0\n" for p in paths))
    save_released(root / "m.pth", random_model(ARCH), None, 0, ARCH)
    return {"root": root, "ckpt": root / "m.pth", "list": root / "img.list",
            "faces": np.stack([read_aligned_face(p) for p in paths]),
            "fp32": fp32_export(root / "m.pth", cache=root / "cache"),
            "int8": int8_model(root / "m.pth", paths, cache=root / "cache")}


def flags(text: str | None) -> CpuInfo:
    return CpuInfo("test CPU", None if text is None else frozenset(text.split()), "test")


XEON_AMX = flags("avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
EPYC_VNNI = flags("avx2 avx512f avx512_vnni avx512_bf16")
ALDER_LAKE = flags("avx2 fma avx_vnni")
EPYC_AVX2 = flags("avx avx2 fma f16c")


def test_choose_runtime():
    # auto: OpenVINO only where the CPU has AMX (with VNNI alone its int8 paid only past ~500 faces)
    assert choose_runtime("auto", installed=True, cpu=XEON_AMX) == "openvino"
    for cpu in (EPYC_VNNI, ALDER_LAKE, EPYC_AVX2, flags(None)):
        assert choose_runtime("auto", installed=True, cpu=cpu) == "onnxruntime"
    assert choose_runtime("auto", installed=False, cpu=XEON_AMX) == "onnxruntime"
    assert choose_runtime("onnxruntime", installed=True, cpu=XEON_AMX) == "onnxruntime"
    assert choose_runtime("openvino", installed=True, cpu=EPYC_AVX2) == "openvino"
    with pytest.raises(ValueError, match="not installed"):
        choose_runtime("openvino", installed=False)
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_runtime("tensorrt", installed=True)


def test_openvino_fp32_equals_onnxruntime(deploy):
    ov, ort = OvModel(deploy["fp32"]), OrtModel(deploy["fp32"])
    assert ov.metadata == ort.metadata and ov.convention == ort.convention
    a, b = ov.embed(deploy["faces"], 16), ort.embed(deploy["faces"], 16)
    assert a.shape == b.shape == (N_FACES, 512)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()  # f32 inference precision pinned, not bf16


def test_openvino_int8_close_to_fp32(deploy):
    ref = OrtModel(deploy["fp32"]).embed(deploy["faces"])
    got = OvModel(deploy["int8"]).embed(deploy["faces"])
    cos = cosines(got, ref)
    assert cos.min() >= 0.99, cos.min()
    assert OvModel(deploy["int8"]).metadata["calibration_faces"] == str(N_FACES)


def test_convention_override_and_bad_file(deploy, tmp_path):
    faces = deploy["faces"][:4]
    flipped = OvModel(deploy["fp32"], convention=INSIGHTFACE).embed(faces)
    assert np.abs(flipped - OvModel(deploy["fp32"]).embed(faces)).max() > 1e-3  # the override is applied
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx: not a loadable ONNX model"):
        OvModel(bad)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OvModel(tmp_path / "missing.onnx")


def test_gen_feat_and_ort_embed_take_the_runtime(deploy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAGFACE_CACHE", str(deploy["root"] / "cache"))
    base = ["--resume", str(deploy["ckpt"]), "--inf_list", str(deploy["list"]), "--dtype", "int8",
            "--calib-count", str(N_FACES)]
    for runtime in ("openvino", "onnxruntime"):
        gen_feat.main([*base, "--onnx-runtime", runtime, "--feat_list", str(tmp_path / f"{runtime}.npz")])
        assert f"int8, {runtime} cpu" in capsys.readouterr().out
    with np.load(tmp_path / "openvino.npz") as a, np.load(tmp_path / "onnxruntime.npz") as b:
        assert list(a["paths"]) == list(b["paths"])
        assert cosines(a["features"], b["features"]).min() >= 0.98  # two int8 kernels of one model
    ort_embed.main(["--onnx", str(deploy["fp32"]), "--inf_list", str(deploy["list"]), "--runtime", "openvino",
                    "--feat_list", str(tmp_path / "e.npz")])
    assert "openvino" in capsys.readouterr().out
    bad = ["--onnx", str(deploy["fp32"]), "--inf_list", str(deploy["list"]), "--runtime", "tensorrt",
           "--feat_list", str(tmp_path / "x.npz")]
    with pytest.raises(SystemExit):
        ort_embed.main(bad)
    assert run_cli(gen_feat.main, [*base, "--onnx-runtime", "openvino", "--flip", "--feat_list",
                                   str(tmp_path / "y.npz")], "gen_feat.py") == 2
