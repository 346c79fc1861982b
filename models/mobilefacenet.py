"""MobileFaceNet (Chen et al. 2018): a 1M-parameter face recognizer for 112x112 aligned faces.

The layer order is that of the public, Apache-2.0 PyTorch MobileFaceNet whose converged weights ship in
``raw/pretrained/`` (see its README): a stride-2 3x3 stem, a depthwise-separable unit, fifteen inverted
residual bottlenecks (MobileNetV2 style, ReLU6), a 1x1 conv to 512 channels, a 7x7 global depthwise conv
(GDC), a linear layer to the embedding and a final BatchNorm. The module, its names and the key converter
below are ours; ``convert_public_state`` maps that repository's state-dict keys onto these names and refuses
any key it cannot place.

As with the iResNets the output is the *un-normalised* embedding: its magnitude is the quality signal, so
the final BatchNorm runs in fp32 and nothing normalises. The attributes ``embedding_size`` and
``input_size`` are those the tools read from any backbone.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.iresnet import init_weights

INPUT_SIZE = 112  # the GDC's 7x7 kernel covers the whole 7x7 map of a 112 px face
# (expansion t, output channels c, repeats n, first stride s) of the bottleneck stages
STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
STEM, WIDE = 64, 512


class ConvBN(nn.Sequential):
    """conv (no bias) -> BatchNorm -> optional activation; ``groups=cin`` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU6, padding: int | None = None) -> None:
        pad = (kernel - 1) // 2 if padding is None else padding
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
            "bn": nn.BatchNorm2d(cout),
        }
        if act is not None:
            layers["act"] = act()
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)


class Bottleneck(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6, stride) -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden)
        self.depthwise = ConvBN(hidden, hidden, kernel=3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 128, dropout: float = 0.0, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        if input_size != INPUT_SIZE:
            raise ValueError(f"mobilefacenet works at {INPUT_SIZE} px only (its 7x7 GDC spans the last map), "
                             f"got --input-size {input_size}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.stem = ConvBN(3, STEM, kernel=3, stride=2)
        self.stem_dw = ConvBN(STEM, STEM, kernel=3, groups=STEM, act=nn.ReLU)
        self.stem_pw = ConvBN(STEM, STEM, act=nn.ReLU)
        blocks, cin = [], STEM
        for expansion, cout, repeats, stride in STAGES:
            for i in range(repeats):
                blocks.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.widen = ConvBN(cin, WIDE)
        self.gdc = ConvBN(WIDE, WIDE, kernel=7, groups=WIDE, act=None, padding=0)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(WIDE, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"mobilefacenet takes {self.input_size}x{self.input_size} faces, got "
                             f"{tuple(x.shape[-2:])}")
        x = self.stem_pw(self.stem_dw(self.stem(x)))
        x = self.gdc(self.widen(self.blocks(x)))
        x = self.fc(self.dropout(torch.flatten(x, 1)))
        # BatchNorm1d in fp32: its statistics decide the magnitude, the quality signal.
        return self.features(x.float())


def build_mobilefacenet(embedding_size: int = 128, dropout: float = 0.0, input_size: int = INPUT_SIZE,
                        zero_init_residual: bool = False) -> MobileFaceNet:
    del zero_init_residual  # an iResNet option; the bottlenecks end in a plain BatchNorm here too
    return MobileFaceNet(embedding_size, dropout, input_size)


# --- the public checkpoint's names -> ours -------------------------------------------------------------------
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _unit(src: str, dst: str, bn_src: str | None = None) -> dict[str, str]:
    """conv + BN keys of one unit: ``{src}.0`` / ``{src}.1`` (or ``bn_src``) -> ``{dst}.conv`` / ``{dst}.bn``."""
    conv = f"{src}.0.weight" if bn_src is None else f"{src}.weight"
    bn = f"{src}.1" if bn_src is None else bn_src
    return {conv: f"{dst}.conv.weight"} | {f"{bn}.{f}": f"{dst}.bn.{f}" for f in _BN_FIELDS}


def public_key_map() -> dict[str, str]:
    """Every key of the public MobileFaceNet state dict -> the key it becomes here."""
    names = _unit("conv1", "stem")
    names |= _unit("dw_conv.depthwise", "stem_dw", "dw_conv.bn1")
    names |= _unit("dw_conv.pointwise", "stem_pw", "dw_conv.bn2")
    n_blocks = sum(stage[2] for stage in STAGES)
    for i in range(n_blocks):
        src, dst = f"features.{i}.conv", f"blocks.{i}"
        names |= _unit(f"{src}.0", f"{dst}.expand")
        names |= _unit(f"{src}.1", f"{dst}.depthwise")
        names |= _unit(f"{src}.2", f"{dst}.project", f"{src}.3")
    names |= _unit("conv2", "widen")
    names |= _unit("gdconv.depthwise", "gdc", "gdconv.bn")
    names |= {"conv3.weight": "fc.weight", "conv3.bias": "fc.bias"}
    names |= {f"bn.{f}": f"features.{f}" for f in _BN_FIELDS}
    return names


def convert_public_state(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The public MobileFaceNet state dict under our names; any key left over or missing is a ValueError."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    names = public_key_map()
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    if missing or unexpected:
        parts = [f"{source} is not the public MobileFaceNet state dict:"]
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
        raise ValueError(" ".join(parts))
    out = {names[k]: v.detach().clone() for k, v in state.items()}
    out["fc.weight"] = out["fc.weight"].reshape(out["fc.weight"].shape[0], -1)  # 1x1 conv -> linear
    return out
