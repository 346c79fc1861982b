"""MobileFaceNet: the registry entry, the strict converter of the public weights, the shipped converted file,
and its verification accuracy on all 6,000 LFW View-2 pairs through our own gen_feat and eval.verification."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build_backbone
from models.backbones import backbone_units
from models.checkpoint import backbone_state, load_backbone, read_checkpoint
from models.mobilefacenet import MobileFaceNet, convert_public_state, public_key_map
from models.quality_model import QUALITY_MODEL
from utils.convention import IMAGENET

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "raw" / "pretrained" / "mobilefacenet.pth"


def public_state_like(model: MobileFaceNet) -> dict[str, torch.Tensor]:
    """A state dict under the public repository's key names, with this model's values (its GDC-to-embedding
    layer as the public 1x1 conv)."""
    ours = model.state_dict()
    out = {}
    for src, dst in public_key_map().items():
        value = ours[dst]
        out[src] = value.view(*value.shape, 1, 1) if src == "conv3.weight" else value
    return out


def test_registry_builds_it_and_it_embeds_112px_faces():
    model = build_backbone("mobilefacenet", embedding_size=128).eval()
    assert isinstance(model, MobileFaceNet)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.1e6  # the paper's ~1M parameters
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 128) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="112"):
        build_backbone("mobilefacenet", input_size=56)
    with pytest.raises(ValueError, match="112x112"):
        model(torch.randn(1, 3, 96, 96))
    units = backbone_units(model)
    assert len(units) == 19  # stem, 15 bottlenecks, widen, GDC, head
    owned = {id(p) for unit in units for m in unit for p in m.parameters()}
    assert owned == {id(p) for p in model.parameters()}, "the units must cover every parameter once"


def test_converter_maps_every_key_both_ways():
    model = MobileFaceNet(embedding_size=128)
    converted = convert_public_state(public_state_like(model))
    assert set(converted) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_converter_refuses_missing_and_unexpected_keys():
    state = public_state_like(MobileFaceNet(embedding_size=128))
    state.pop("gdconv.bn.running_var")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        convert_public_state(state, "weights.pt")
    message = str(info.value)
    assert "\n" not in message
    assert "weights.pt" in message and "1 missing keys (e.g. gdconv.bn.running_var)" in message
    assert "1 unexpected keys (e.g. extra.weight)" in message


def test_converter_cli_writes_a_loadable_released_file(tmp_path):
    source = tmp_path / "mobilefacenet.pt"
    torch.save(public_state_like(MobileFaceNet(embedding_size=128)), source)
    out = tmp_path / "converted.pth"
    done = subprocess.run([sys.executable, "-m", "models.convert_mobilefacenet", str(source), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"sha256 [0-9a-f]{64}", done.stdout)
    model, conv, info = load_backbone(out)
    assert isinstance(model, MobileFaceNet) and conv == IMAGENET and info["arch"] == "mobilefacenet"
    bad = subprocess.run([sys.executable, "-m", "models.convert_mobilefacenet", str(out), str(tmp_path / "x.pth")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "is not the public MobileFaceNet state dict" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.pth").exists()


def test_shipped_file_matches_its_readme():
    readme = (SHIPPED.parent / "README.md").read_text()
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert digest in readme, "raw/pretrained/README.md must state the shipped file's sha256"
    assert SHIPPED.stat().st_size <= 5 * 1024 * 1024
    obj = read_checkpoint(SHIPPED)
    assert obj["arch"] == "mobilefacenet" and "module.fc.weight" not in obj["state_dict"]
    model, conv, _ = load_backbone(SHIPPED)
    assert conv == IMAGENET and model.embedding_size == 128
    assert set(backbone_state(obj)) == set(MobileFaceNet(embedding_size=128).state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", [SHIPPED, QUALITY_MODEL], ids=["pretrained", "quality"])
def test_shipped_model_verifies_all_lfw_pairs(shared_data, tmp_path, checkpoint):
    """All 6,000 View-2 pairs (12,000 faces) through gen_feat and eval.verification: >= 99.0 % 10-fold, for the
    converted pretrained model and for the quality model fine-tuned from it."""
    from eval import verification
    from inference import gen_feat

    lfw_dir = shared_data / "lfw112"

    feats = tmp_path / "lfw.npz"
    gen_feat.extract(str(checkpoint), str(lfw_dir / "img.list"), str(feats),
                     gen_feat.FeatOptions(device="cpu", print_freq=10**6))
    report = verification.run(feat_list=str(feats), pair_list=str(lfw_dir / "pair.list"))
    print(f"{checkpoint.name}, LFW 6,000 pairs: {100 * report['accuracy_mean']:.2f} % +- "
          f"{100 * report['accuracy_std']:.2f}")
    assert report["num_pairs"] == 6000
    assert report["accuracy_mean"] >= 0.990


def test_folded_model_gives_the_same_features():
    from inference.extract import prepare_model
    from inference.fuse import fuse_mobilefacenet

    model, _, _ = load_backbone(SHIPPED)
    x = torch.rand(4, 3, 112, 112)
    with torch.no_grad():
        plain = model(x)
        fused = fuse_mobilefacenet(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), plain, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(prepare_model(model, "cpu")(x.contiguous(memory_format=torch.channels_last)),
                                   plain, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs a MobileFaceNet"):
        fuse_mobilefacenet(build_backbone("iresnet18_w16", 32))


def test_int8_is_refused_for_mobilefacenet(tmp_path, monkeypatch):
    """The int8 recipe's cosine to fp32 is 0.67 on this architecture: one line saying what to use, no file."""
    from inference.int8 import int8_model

    monkeypatch.setenv("MAGFACE_CACHE", str(tmp_path / "cache"))
    face = REPO / "raw" / "demo_data" / "lfw" / (REPO / "raw" / "demo_data" / "lfw" / "img.list").read_text().split()[0]
    with pytest.raises(ValueError, match="int8 is not accurate for mobilefacenet.*--backend onnxruntime"):
        int8_model(SHIPPED, [str(face)])
    assert not list((tmp_path / "cache").glob("*.onnx"))
