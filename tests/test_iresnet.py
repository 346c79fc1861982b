"""iResNet backbones: the state-dict contract, parameter counts, shapes, gradients, no NaN."""
from __future__ import annotations

import pytest
import torch

from models.backbones import build_backbone, canonical_arch
from models.iresnet import ARCHS

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _expected_keys(layers: tuple[int, ...]) -> set[str]:
    """State-dict keys spelled out from the released checkpoints' naming (FORMATS.md)."""
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{bn}.{k}" for bn in ("bn1", "bn2", "features") for k in BN_KEYS}
    for stage, blocks in enumerate(layers, start=1):
        for i in range(blocks):
            pre = f"layer{stage}.{i}"
            keys |= {f"{pre}.conv1.weight", f"{pre}.conv2.weight", f"{pre}.prelu.weight"}
            keys |= {f"{pre}.{bn}.{k}" for bn in ("bn1", "bn2", "bn3") for k in BN_KEYS}
            if i == 0:  # every stage starts with stride 2: a projection shortcut
                keys |= {f"{pre}.downsample.0.weight"} | {f"{pre}.downsample.1.{k}" for k in BN_KEYS}
    return keys


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_backbone(name)


@pytest.mark.parametrize(
    ("name", "layers", "count"),
    [("r18", (2, 2, 2, 2), 24_025_600), ("r50", (3, 4, 14, 3), 43_590_848),
     ("r100", (3, 13, 30, 3), 65_156_160)],
)
def test_state_dict_contract_and_parameter_count(name: str, layers: tuple[int, ...], count: int) -> None:
    model = _meta(name)
    state = model.state_dict()
    assert set(state) == _expected_keys(layers)
    assert sum(p.numel() for p in model.parameters()) == count
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["features.weight"].shape == (512,)
    assert state["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert state["layer4.0.conv2.weight"].shape == (512, 512, 3, 3)


def test_batchnorm_eps_and_no_activation_after_add() -> None:
    model = build_backbone("iresnet18_w16", embedding_size=32).eval()
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert eps == {2e-5}
    seen = {}
    block = model.layer2[0]
    for name in ("bn3", "downsample"):
        getattr(block, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    block.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    model(torch.rand(1, 3, 112, 112))
    torch.testing.assert_close(seen["out"], seen["bn3"] + seen["downsample"])
    assert (seen["out"] < 0).any()  # no ReLU after the add


@pytest.mark.parametrize(("name", "embedding_size"), [("iresnet18", 512), ("iresnet18_w16", 128)])
def test_forward_backward_shapes(name: str, embedding_size: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size=embedding_size).train()
    x = torch.randn(2, 3, 112, 112, requires_grad=True)
    out = model(x)
    assert out.shape == (2, embedding_size) and out.dtype == torch.float32
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad.shape == x.shape


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64).train()
    out = model(torch.randn(4, 3, 112, 112))  # batch 4: with 2, BatchNorm1d output is nearly +-gamma
    (out * torch.randn_like(out)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64).eval()
    x = torch.rand(2, 3, 112, 112)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.to(memory_format=torch.channels_last))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    model.train()
    out = model(x.to(memory_format=torch.channels_last))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_no_nan(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64).train()
    x = torch.rand(2, 3, 112, 112)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        assert model.fc(torch.zeros(1, model.fc.in_features)).dtype == dtype  # autocast is active
    assert out.dtype == torch.float32  # the final BatchNorm1d runs in fp32 (magnitudes)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, param in model.named_parameters():
        assert torch.isfinite(param.grad).all(), name


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet-9000") as err:
        build_backbone("resnet-9000")
    for valid in list(ARCHS) + ["r50", "r100"]:
        assert valid in str(err.value)
    with pytest.raises(ValueError):
        canonical_arch("r101")
    assert canonical_arch("r100") == "iresnet100"
