"""Fold eval-mode BatchNorm into the neighbouring conv / linear layers of an iResNet or MobileFaceNet, for inference.

In eval mode a BatchNorm is the per-channel affine ``y = a * x + b`` with ``a = gamma / sqrt(var + eps)``
and ``b = beta - a * mean``. Where it directly follows a conv (stem conv1 -> bn1, block conv1 -> bn2,
conv2 -> bn3, downsample conv -> BN) it folds into that conv: ``W' = a * W`` per output channel,
``bias' = b``. The head's BN2d (bn2, before the flatten) and BN1d (features, after fc) fold into fc.
The block's bn1 stays: it precedes a zero-padded conv, and folding it would change the border pixels.

The fused model keeps the iResNet's own forward (folded BNs become ``nn.Identity``) and computes fc in
fp32 whatever the autocast dtype, as the unfused model does for its BN1d: the magnitude is the
quality signal. Fused fp32 features equal the original's to float rounding (~1e-6 relative).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init  # no random initialisation of weights that are overwritten at once

from models.iresnet import IBasicBlock, IResNet
from models.mobilefacenet import ConvBN, MobileFaceNet


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of the eval-mode BN ``y = a * x + b``, in float64 for an exact fold."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics cannot be folded")
    var = bn.running_var.double()
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.double()
    b = -bn.running_mean.double() * a
    if bn.bias is not None:
        b = b + bn.bias.double()
    return a, b


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing ``bn(conv(x))`` in eval mode."""
    if conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold {bn} into {conv}: channel counts differ")
    a, b = _bn_affine(bn)
    fused = skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    weight = conv.weight.double() * a.view(-1, 1, 1, 1)
    bias = b if conv.bias is None else conv.bias.double() * a + b
    dtype = conv.weight.dtype
    fused.weight.data = weight.to(dtype).contiguous(memory_format=_memory_format(conv.weight))
    fused.bias.data = bias.to(dtype)
    return fused.to(conv.weight.device)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


class ShiftedInputConv(nn.Module):
    """``conv(bn(x))`` for an eval BN in front of a zero-padded 3x3 stride-1 conv, folded exactly.

    With bn(x) = a * x + b: conv(pad0(a * x + b)) = conv_{W*a}(pad0(x)) + conv_W(pad0(b)). The second
    term is a constant map: sum(W * b) inside, less on the one-pixel border ring where the padding
    zeros replaced b. So the conv gets the weights W*a and bias sum(W * b), and only the ring of the
    (fixed) ``size`` map gets a correction, added in place: cheaper than the BN pass it replaces.
    """

    def __init__(self, conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, size: tuple[int, int]) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
            raise ValueError(f"ShiftedInputConv needs a 3x3 stride-1 padding-1 conv, got {conv}")
        if min(size) < 3:
            raise ValueError(f"ShiftedInputConv needs maps of at least 3x3, got {size}")
        w = conv.weight.double()
        shift_w = w * b.view(1, -1, 1, 1).to(w)
        interior = shift_w.sum(dim=(1, 2, 3))
        bias = interior if conv.bias is None else conv.bias.double() + interior
        self.size = tuple(size)
        self.conv = skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, 3, 1, 1, bias=True,
                              device=conv.weight.device)
        self.conv.weight.data = (w * a.view(1, -1, 1, 1).to(w)).to(conv.weight.dtype)
        self.conv.bias.data = bias.to(conv.weight.dtype)
        # on a 3x3 map every output pixel is a corner, an edge or the interior: the ring of any size follows
        ones = torch.ones(1, conv.in_channels, 3, 3, dtype=torch.float64, device=w.device)
        o = (F.conv2d(ones, shift_w, padding=1) - interior.view(1, -1, 1, 1))[0]
        h, w_ = size

        def edge(first: torch.Tensor, middle: torch.Tensor, last: torch.Tensor, n: int) -> torch.Tensor:
            return torch.cat([first[:, None], middle[:, None].expand(-1, n - 2), last[:, None]], dim=1)[None]

        for name, part in (("top", edge(o[:, 0, 0], o[:, 0, 1], o[:, 0, 2], w_)),
                           ("bottom", edge(o[:, 2, 0], o[:, 2, 1], o[:, 2, 2], w_)),
                           ("left", o[None, :, 1, 0, None].expand(1, -1, h - 2)),
                           ("right", o[None, :, 1, 2, None].expand(1, -1, h - 2))):
            self.register_buffer(name, part.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if tuple(y.shape[-2:]) != self.size:
            raise ValueError(f"ShiftedInputConv was folded for {self.size} maps, got {tuple(y.shape[-2:])}")
        y[:, :, 0, :] += self.top
        y[:, :, -1, :] += self.bottom
        y[:, :, 1:-1, 0] += self.left
        y[:, :, 1:-1, -1] += self.right
        return y


class Fp32Linear(nn.Linear):
    """A Linear that runs in fp32 even under autocast (the embedding layer: it sets the magnitude)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight, self.bias)


def fold_head(bn2: nn.BatchNorm2d, fc: nn.Linear, features: nn.BatchNorm1d, spatial: int) -> Fp32Linear:
    """``features(fc(flatten(bn2(x))))`` as one fp32 Linear (dropout is the identity in eval mode)."""
    a_in, b_in = _bn_affine(bn2)
    a_in = a_in.repeat_interleave(spatial * spatial)  # flatten order: channel-major (NCHW)
    b_in = b_in.repeat_interleave(spatial * spatial)
    a_out, b_out = _bn_affine(features)
    w = fc.weight.double()
    bias = (w @ b_in + (fc.bias.double() if fc.bias is not None else 0.0)) * a_out + b_out
    weight = w * a_in.view(1, -1) * a_out.view(-1, 1)
    out = skip_init(Fp32Linear, fc.in_features, fc.out_features)
    out.weight.data = weight.float().contiguous()
    out.bias.data = bias.float()
    return out.to(fc.weight.device)


def _fuse_block(block: IBasicBlock, input_size: tuple[int, int] | None) -> None:
    block.conv1 = fold_conv_bn(block.conv1, block.bn2)
    block.bn2 = nn.Identity()
    if input_size is not None and min(input_size) >= 3:
        block.conv1 = ShiftedInputConv(block.conv1, *_bn_affine(block.bn1), input_size)
        block.bn1 = nn.Identity()
    block.conv2 = fold_conv_bn(block.conv2, block.bn3)
    block.bn3 = nn.Identity()
    if block.downsample is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        block.downsample = nn.Sequential(fold_conv_bn(conv, bn))


@torch.no_grad()
def _block_input_sizes(model: IResNet) -> dict[nn.Module, tuple[int, int]]:
    """Spatial size of each block's input for the model's own input size (one dummy forward)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, IBasicBlock)]
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, model.input_size, model.input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return sizes


@torch.no_grad()
def fuse_iresnet(model: IResNet, fold_input_bn: bool = True) -> IResNet:
    """An eval-mode copy of ``model`` with every foldable BatchNorm folded (the input is untouched).

    ``fold_input_bn`` also folds each block's bn1 into its zero-padded conv1 (``ShiftedInputConv``);
    the result then takes only inputs of the model's ``input_size`` (any batch size).
    """
    if not isinstance(model, IResNet):
        raise ValueError(f"fuse_iresnet needs an IResNet, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    sizes = _block_input_sizes(fused) if fold_input_bn else {}
    fused.conv1 = fold_conv_bn(fused.conv1, fused.bn1)
    fused.bn1 = nn.Identity()
    for module in fused.modules():
        if isinstance(module, IBasicBlock):
            _fuse_block(module, sizes.get(module))
    side = int(round((fused.fc.in_features / fused.bn2.num_features) ** 0.5))
    if side * side * fused.bn2.num_features != fused.fc.in_features:
        raise ValueError(f"fc takes {fused.fc.in_features} inputs, not a square map of {fused.bn2.num_features}")
    fused.fc = fold_head(fused.bn2, fused.fc, fused.features, side)
    fused.bn2 = nn.Identity()
    fused.features = nn.Identity()
    return fused


@torch.no_grad()
def fuse_mobilefacenet(model: MobileFaceNet) -> MobileFaceNet:
    """An eval-mode copy of ``model`` with the BatchNorm of every conv unit folded into its conv.

    Each ``ConvBN`` (conv -> BN -> optional activation) becomes conv-with-bias -> activation; the convs pad
    with zeros *before* the BN, so every fold is exact. The final BatchNorm1d (``features``) stays as it is
    and runs in fp32: the magnitude is the quality signal.
    """
    if not isinstance(model, MobileFaceNet):
        raise ValueError(f"fuse_mobilefacenet needs a MobileFaceNet, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    for unit in [m for m in fused.modules() if isinstance(m, ConvBN)]:
        unit.conv = fold_conv_bn(unit.conv, unit.bn)
        unit.bn = nn.Identity()
    return fused
