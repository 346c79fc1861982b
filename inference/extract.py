"""Embedding extraction shared by gen_feat, verification, the demo and the toy example."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from utils.convention import MAGFACE, InputConvention, to_model_input


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16 inference; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    with autocast_for(x.device, dtype):
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
) -> np.ndarray:
    """uint8 (N, H, W, 3) BGR images -> float32 (N, D) raw embeddings."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size].transpose(0, 3, 1, 2)))
        out.append(embed_batch(model, chunk.to(device), convention, dtype, flip).cpu().numpy())
    if not out:
        return np.zeros((0, getattr(model, "embedding_size", 512)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
