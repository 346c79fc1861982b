"""Embedding extraction shared by gen_feat, verification, the demo and the toy example.

``prepare_model`` turns a loaded backbone into the fastest equivalent for inference: BatchNorm
folded into the convs (``inference.fuse``), channels-last memory and, optionally, torch.compile.
``embed_batch`` then runs one uint8 batch under ``torch.inference_mode`` and autocast.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from inference.fuse import fuse_iresnet, fuse_mobilefacenet
from models.iresnet import IResNet
from models.mobilefacenet import MobileFaceNet
from utils.convention import MAGFACE, InputConvention, to_model_input
from utils.precision import autocast


def prepare_model(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    fuse: bool = True,
    channels_last: bool = True,
    compile_model: bool = False,
) -> nn.Module:
    """``model`` made fast for inference on ``device``: BN folded (iResNets, MobileFaceNet), channels-last.

    Use the returned module: ``model`` itself may have been moved or converted in place.

    Folding removes 3 of the 4 BatchNorms per block (fp32 features change by float rounding only,
    ~1e-6 relative); channels-last is the layout the oneDNN (CPU) and cuDNN (GPU) convs prefer.
    For a bf16/fp16 ``dtype`` the conv and PReLU weights are stored in it once, instead of autocast
    casting them again on every batch (the same values: autocast rounds them identically); BatchNorm
    and the folded embedding layer (``Fp32Linear``) keep fp32 parameters.
    """
    device = torch.device(device)
    model = model.eval()
    if fuse and isinstance(model, IResNet):
        # torch.compile handles the in-place border correction of the folded input BN badly (slower on CPU,
        # bench/RESULTS.md), so a compiled model keeps that BN and leaves the dtype to autocast.
        model = fuse_iresnet(model, fold_input_bn=not compile_model)
    elif fuse and isinstance(model, MobileFaceNet):
        model = fuse_mobilefacenet(model)
    model = model.to(device)
    if dtype != torch.float32 and not compile_model:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.PReLU)):
                module.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model, dynamic=False)
    return model


@torch.inference_mode()
def embed_batch(
    model: nn.Module,
    images: torch.Tensor,
    convention: InputConvention = MAGFACE,
    dtype: torch.dtype = torch.float32,
    flip: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 BGR NCHW on the model's device -> fp32 raw embeddings (sum with the mirror if ``flip``)."""
    x = to_model_input(images, convention)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, dtype):
        feats = model(x).float()
        if flip:
            feats = feats + model(x.flip(3)).float()
    return feats


def embed_array(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    convention: InputConvention = MAGFACE,
    dtype: torch.dtype = torch.float32,
    flip: bool = False,
    prepare: bool = True,
    progress: str | None = None,
    progress_every_s: float = 30.0,
) -> np.ndarray:
    """uint8 (N, H, W, 3) BGR images -> float32 (N, D) raw embeddings.

    ``prepare`` runs ``prepare_model`` first (BN folded, channels-last, weights in ``dtype``): the same
    features as the plain model to float rounding, faster on CPU (bench/RESULTS.md). ``progress`` names the set in
    a line on stderr every ``progress_every_s`` seconds (images done, img/s, time left).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    device = torch.device(device)
    embedding_size = getattr(model, "embedding_size", 512)
    model = prepare_model(model, device, dtype=dtype) if prepare else model.to(device).eval()
    out, started, last_report = [], time.perf_counter(), time.perf_counter()
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size].transpose(0, 3, 1, 2)))
        out.append(embed_batch(model, chunk.to(device), convention, dtype, flip, channels_last=prepare).cpu().numpy())
        now = time.perf_counter()
        if progress and now - last_report >= progress_every_s:
            done = start + len(chunk)
            rate = done / (now - started)
            print(f"{progress}: {done}/{len(images)} images, {rate:.1f} img/s, "
                  f"{(len(images) - done) / rate:.0f} s left", file=sys.stderr, flush=True)
            last_report = now
    if not out:
        return np.zeros((0, embedding_size), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
