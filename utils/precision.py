"""Precision names used on the command lines and the torch dtypes they stand for: one table for every entry point.

``--dtype fp32|bf16|fp16`` (gen_feat, calibrate, assess, eval) reads ``DTYPES``; ``--amp none|bf16|fp16`` (the
trainers and the benchmarks) reads ``amp_dtype``, where ``none`` means full fp32 without autocast.
"""
from __future__ import annotations

import contextlib

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` value (None for ``none``)."""
    if name == "none":
        return None
    if name not in DTYPES or name == "fp32":
        raise ValueError(f"--amp {name!r}: expected none, bf16 or fp16")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; a no-op for None (``--amp none``) and fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
