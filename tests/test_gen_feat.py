"""gen_feat on real LFW faces against an independent plain fp32 eager model, and BatchNorm folding."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference import feat_torch, gen_feat
from inference.fuse import ShiftedInputConv, fuse_iresnet
from models.backbones import build_backbone
from models.checkpoint import save_released
from tests.fault_launch import WRITE_ENV as FAULT_ENV
from utils.convention import MAGFACE

REPO = Path(__file__).resolve().parents[1]
N_FACES = 40


def randomised(arch: str, seed: int = 0) -> nn.Module:
    """Random weights and random BatchNorm statistics (a fresh model's are 0/1 and hide folding bugs)."""
    torch.manual_seed(seed)
    model = build_backbone(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def faces(lfw_dir: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """A list of 40 LFW faces with paths relative to the list, via a link to the read-only images."""
    root = tmp_path_factory.mktemp("faces")
    (root / "images").symlink_to(lfw_dir / "images")
    listed = [line.split()[0] for line in (lfw_dir / "img.list").read_text().splitlines()[:N_FACES]]
    (root / "img.list").write_text("".join(f"{p} 0\n" for p in listed))
    return root / "img.list", listed


@pytest.fixture(scope="module")
def model_and_ckpt(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = randomised("iresnet18")
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    save_released(path, model, None, 0, "iresnet18")
    return model, path


@pytest.fixture(scope="module")
def reference(faces, model_and_ckpt) -> np.ndarray:
    """The seed's computation: cv2 BGR, /255, NCHW fp32, eager, no folding."""
    list_path, listed = faces
    model = model_and_ckpt[0]
    imgs = np.stack([cv2.imread(str(list_path.parent / p)) for p in listed])
    x = torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).float() / 255.0
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def fp32_text(faces, model_and_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "feats.txt"
    gen_feat.main(["--resume", str(model_and_ckpt[1]), "--inf_list", str(faces[0]), "--feat_list", str(out),
                   "--cpu-mode", "--batch-size", "16", "--dtype", "fp32"])
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_text_output_is_seed_format_and_matches_plain_model(fp32_text, faces, reference):
    lines = fp32_text.read_text().splitlines()
    assert len(lines) == N_FACES
    tokens = [line.split(" ") for line in lines]
    assert all(len(t) == 1 + 512 for t in tokens)
    assert [t[0] for t in tokens] == faces[1]
    feats = np.array([[float(v) for v in t[1:]] for t in tokens])
    rel = np.abs(feats - reference).max() / np.abs(reference).max()
    assert rel < 1e-4, rel
    assert _cosines(feats, reference).min() > 0.99999


def test_npz_and_bf16_agree_with_fp32(fp32_text, faces, model_and_ckpt, tmp_path):
    out = tmp_path / "feats.npz"  # the library call (typed options) behind the command
    gen_feat.extract(str(model_and_ckpt[1]), str(faces[0]), str(out),
                     gen_feat.FeatOptions(device="cpu", dtype="bf16", batch_size=16, workers=0))
    fp32 = np.array([[float(v) for v in line.split()[1:]] for line in fp32_text.read_text().splitlines()])
    with np.load(out) as z:
        assert set(z.files) >= {"features", "magnitudes", "paths"}
        feats, mags, paths = z["features"], z["magnitudes"], [str(p) for p in z["paths"]]
    assert feats.shape == (N_FACES, 512) and feats.dtype == np.float32
    assert paths == faces[1]
    np.testing.assert_allclose(mags, np.linalg.norm(feats, axis=1), rtol=1e-5)
    assert _cosines(feats, fp32).min() >= 0.999
    assert not np.array_equal(feats, fp32.astype(np.float32))  # bf16 really ran


def test_command_line_maps_onto_feat_options():
    """The flags' defaults are FeatOptions' defaults; the seed's --cpu-mode is device cpu."""
    required = ["--resume", "m.pth", "--inf_list", "l", "--feat_list", "f"]
    parser = gen_feat.get_args_parser()
    assert gen_feat.FeatOptions.from_args(parser.parse_args(required)) == gen_feat.FeatOptions()
    args = parser.parse_args([*required, "--cpu-mode", "--device", "cuda", "-b", "8", "--fuse", "off"])
    assert gen_feat.FeatOptions.from_args(args) == gen_feat.FeatOptions(device="cpu", batch_size=8, fuse="off")


def test_missing_image_names_the_list_line(faces, model_and_ckpt, tmp_path):
    list_path, listed = faces
    bad = tmp_path / "bad.list"
    lines = [str(list_path.parent / p) for p in listed[:3]] + ["", str(list_path.parent / "images/nobody.jpg")]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=rf"{bad}:5: image .*nobody\.jpg not found"):
        gen_feat.main(["--resume", str(model_and_ckpt[1]), "--inf_list", str(bad), "--feat_list",
                       str(tmp_path / "x.txt"), "--cpu-mode"])
    assert not (tmp_path / "x.txt").exists()


@pytest.mark.usefixtures("fault_injection")
def test_full_disk_during_the_feature_dump_keeps_the_previous_file(faces, model_and_ckpt, tmp_path, monkeypatch):
    """ENOSPC inside the write (tests/fault_launch.py's MAGFACE_FAULT_WRITE, after the rows went out): a clear
    error naming the file and the space, the previous dump untouched, no temporary file left."""
    out = tmp_path / "feats.npz"
    out.write_bytes(b"the previous dump")
    monkeypatch.setenv(FAULT_ENV, "ENOSPC:feats.npz")
    with pytest.raises(OSError, match=rf"could not write {out}: no space left on device \(ENOSPC\): the file "
                                     r"needs at least 0\.\d MiB \(written before it failed\), [\d.]+ MiB are free"):
        gen_feat.main(["--resume", str(model_and_ckpt[1]), "--inf_list", str(faces[0]), "--feat_list", str(out),
                       "--cpu-mode", "--batch-size", "16"])
    assert out.read_bytes() == b"the previous dump"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz"]


def test_static_batch_padding_keeps_rows(faces, model_and_ckpt, reference):
    list_path, listed = faces
    model = feat_torch.prepare_model(model_and_ckpt[0], "cpu")
    loader = feat_torch.make_loader([str(list_path.parent / p) for p in listed], 16, 0, torch.device("cpu"))
    feats = feat_torch.run_model(model, loader, N_FACES, 512, torch.device("cpu"), convention=MAGFACE,
                               static_batch=16, print_freq=100)
    assert np.abs(feats - reference).max() / np.abs(reference).max() < 1e-4


@pytest.mark.parametrize("arch", ["iresnet18_w16", "iresnet18_w32"])
def test_fused_model_equals_unfused(arch):
    model = randomised(arch, seed=3)
    blocks = sum(1 for name, _ in model.named_modules() if name.count(".") == 1 and name.startswith("layer"))
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        ref = model(x)
        for fold_input_bn, bns_left in ((True, 0), (False, blocks)):
            fused = fuse_iresnet(model, fold_input_bn=fold_input_bn)
            assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules()) == bns_left
            assert isinstance(fused.fc, nn.Linear) and fused.conv1.bias is not None
            out = fused(x)
            assert (out - ref).abs().max() / ref.abs().max() < 1e-5
            cl = fused.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
            assert (cl - ref).abs().max() / ref.abs().max() < 1e-5
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.layer1[0].bn1, nn.BatchNorm2d)  # untouched


def test_input_bn_fold_corrects_the_border_exactly():
    """bn -> zero-padded conv: the shift must vanish in the padding; a plain fold would differ on the ring."""
    torch.manual_seed(5)
    bn, conv = nn.BatchNorm2d(4, eps=2e-5).eval(), nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        x = torch.rand(2, 4, 5, 7)
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = bn.bias - a * bn.running_mean
        folded = ShiftedInputConv(conv, a, b, (5, 7))
        ref = conv(bn(x))
        naive = F.conv2d(x, conv.weight * a.view(1, -1, 1, 1), folded.conv.bias, padding=1)
        assert (naive - ref)[:, :, 1:-1, 1:-1].abs().max() < 1e-5
        assert (naive - ref)[:, :, 0, :].abs().max() > 1e-2  # the border is where a plain fold is wrong
        torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match=r"folded for \(5, 7\) maps"):
            folded(torch.rand(1, 4, 6, 6))


@pytest.mark.parametrize("args", [["inference/gen_feat.py", "--help"], ["-m", "inference.gen_feat", "--help"]])
def test_help_runs(args):
    env = dict(os.environ, PYTHONPATH="")
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "--inf_list" in res.stdout and "--dtype" in res.stdout


def test_small_working_resolution_model_takes_112_faces(faces, tmp_path):
    """A model built for 56x56 downsamples the 112x112 faces itself; folding must keep that."""
    list_path, listed = faces
    torch.manual_seed(1)
    model = randomised("iresnet18_w16")
    small = build_backbone("iresnet18_w16", input_size=56)
    small.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, strict=False)
    small.eval()
    ckpt = tmp_path / "small.pth"
    save_released(ckpt, small, None, 0, "iresnet18_w16", config={"input_size": 56})
    out = tmp_path / "small.npz"
    gen_feat.main(["--resume", str(ckpt), "--inf_list", str(list_path), "--feat_list", str(out), "--cpu-mode",
                   "--dtype", "fp32"])
    imgs = np.stack([cv2.imread(str(list_path.parent / p)) for p in listed])
    with torch.no_grad():
        ref = small(torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).float() / 255.0).numpy()
    with np.load(out) as z:
        feats = z["features"]
    assert np.abs(feats - ref).max() / np.abs(ref).max() < 1e-4


def test_seed_command_line_quantizes_without_its_folder_shadowing_modules(faces, tmp_path):
    """``python inference/gen_feat.py --dtype int8`` on a new checkpoint: onnxruntime's quantizer imports a top-level
    ``onnx_model`` module of its own, which inference/onnx_model.py shadowed when the script's folder led sys.path."""
    list_path, _ = faces
    ckpt = tmp_path / "m.pth"
    save_released(ckpt, randomised("iresnet18_w16"), None, 0, "iresnet18_w16")
    env = dict(os.environ, PYTHONPATH="", MAGFACE_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "inference/gen_feat.py", "--resume", str(ckpt), "--inf_list", str(list_path),
                          "--feat_list", str(tmp_path / "f.txt"), "--dtype", "int8"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "cache").glob("*.int8.onnx")) and (tmp_path / "f.txt").stat().st_size > 0
