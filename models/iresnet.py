"""iResNet backbones (Duta et al. 2020, as used by ArcFace and MagFace).

The state-dict keys and shapes are a compatibility contract with the released MagFace and insightface
checkpoints: ``conv1, bn1, prelu, layer{1..4}.{i}.{bn1, conv1, bn2, prelu, conv2, bn3, downsample.{0,1}},
bn2, fc, features``. The output is the *un-normalised* embedding f: MagFace reads face quality from
its magnitude ||f||, so nothing here normalises it.

Block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a shortcut (conv1x1 + BN when the
shape changes), no activation after the add. Head: BN2d -> Dropout -> flatten -> Linear -> BN1d.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 2e-5
STANDARD_WIDTHS = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


@functools.lru_cache(maxsize=16)
def resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) fp32 matrix of the antialiased bilinear resize along one axis.

    ``A @ x @ A.T`` equals ``F.interpolate(x, bilinear, antialias=True)`` (a separable linear map) to
    float rounding, and exports to ONNX as two MatMuls with a constant (the antialiased op has no ONNX
    export). Built once per size and device, outside any autograd or inference-mode context.
    """
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float32, device=device).view(1, 1, n_in, n_in)
        cols = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
        return cols[0, 0].contiguous()


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def init_weights(model: nn.Module) -> None:
    """The initialisation of every backbone here: He-normal convs (fan out), unit BatchNorms, N(0, 0.01) linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def _stage_side(side: int) -> int:
    """Spatial side after the four stride-2 stages (112 -> 7, 56 -> 4)."""
    for _ in range(4):
        side = (side - 1) // 2 + 1
    return side


class IResNet(nn.Module):
    """iResNet on (B, 3, S, S) inputs (S = 112 for the released models).

    A model built for a smaller ``input_size`` (a cheap working resolution, e.g. 56 for CPU demos)
    still takes 112x112 faces: it downsamples them itself (2x2 averaging for exactly half, antialiased
    bilinear otherwise), so every tool feeds it the same aligned faces.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        widths: Sequence[int] = STANDARD_WIDTHS,
        input_size: int = 112,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"iResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        if not 32 <= input_size <= 1024:
            raise ValueError(f"iResNet input_size must lie in [32, 1024], got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        stem = widths[0]
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem, eps=BN_EPS)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for i, (blocks, planes) in enumerate(zip(layers, widths, strict=True), start=1):
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        spatial = _stage_side(input_size)
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def resize_input(self, x: torch.Tensor) -> torch.Tensor:
        side = self.input_size
        if x.shape[-2:] == (side, side):
            return x
        if x.shape[-2:] == (2 * side, 2 * side):
            return F.avg_pool2d(x, 2)
        rows = resize_matrix(int(x.shape[-2]), side, x.device).to(x.dtype)
        cols = resize_matrix(int(x.shape[-1]), side, x.device).to(x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resize_input(x)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        x = self.fc(torch.flatten(x, 1))
        # BatchNorm1d in fp32: its statistics decide the magnitude, the quality signal.
        return self.features(x.float())


# name -> (blocks per stage, widths); the narrow ones are for CPU demos and tests.
ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "iresnet18": ((2, 2, 2, 2), STANDARD_WIDTHS),
    "iresnet34": ((3, 4, 6, 3), STANDARD_WIDTHS),
    "iresnet50": ((3, 4, 14, 3), STANDARD_WIDTHS),
    "iresnet100": ((3, 13, 30, 3), STANDARD_WIDTHS),
    "iresnet200": ((6, 26, 60, 6), STANDARD_WIDTHS),
    # 1/4 width iresnet18: 1.5M parameters at 128-d; learns on a CPU in minutes.
    "iresnet18_w16": ((2, 2, 2, 2), (16, 32, 64, 128)),
    # half-width iresnet18 (4.4M parameters at 128-d).
    "iresnet18_w32": ((2, 2, 2, 2), (32, 64, 128, 256)),
}
ALIASES = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100",
           "r200": "iresnet200"}


def build_iresnet(
    name: str,
    embedding_size: int = 512,
    dropout: float = 0.0,
    input_size: int = 112,
    zero_init_residual: bool = False,
) -> IResNet:
    """An iResNet by its canonical name (``models.backbones.build_backbone`` resolves aliases)."""
    layers, widths = ARCHS[name]
    return IResNet(layers, embedding_size, dropout, widths, input_size, zero_init_residual)
