"""Decoding and augmentation of aligned 112x112 faces, shared by every training dataset.

Images stay uint8 BGR from the decoder to the device (``utils.convention.to_model_input`` turns
them into floats there), so workers only decode, check, optionally mirror and transpose to CHW.
A sample that cannot be used (truncated file, not an image, grayscale, wrong size) raises
``BadSampleError``; datasets either re-raise it naming the file, or return a ``BadSample`` marker
that ``collate_faces`` (builder.py) drops and counts.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch

from utils.convention import FACE_SIZE

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class BadSampleError(ValueError):
    """A sample whose bytes cannot become a 3x112x112 uint8 face; the message says why."""


class BadSample(NamedTuple):
    """Returned by a dataset in ``skip_bad`` mode instead of (image, label)."""

    source: str
    reason: str


def is_jpeg(buf: bytes | memoryview | np.ndarray) -> bool:
    return bytes(buf[:2]) == _JPEG_SOI


def _check_jpeg_complete(buf: bytes | memoryview) -> None:
    """A JPEG cut short still decodes in OpenCV (grey fill + a warning), so look for its end marker.

    0xFFD9 cannot occur inside entropy-coded data (0xFF is byte-stuffed there), so its absence near
    the end of the file means the file was truncated. Trailing zero padding is tolerated.
    """
    tail = bytes(buf[-64:]).rstrip(b"\x00")
    if len(buf) < 4 or _JPEG_EOI not in tail:
        raise BadSampleError(f"truncated JPEG ({len(buf)} bytes, no end-of-image marker)")


def decode_face(buf: bytes | memoryview | np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Encoded bytes -> uint8 BGR HWC array of shape (size, size, 3), or ``BadSampleError``."""
    if len(buf) == 0:
        raise BadSampleError("empty file")
    if is_jpeg(buf):
        _check_jpeg_complete(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadSampleError(f"not a decodable image ({len(buf)} bytes)")
    if img.dtype != np.uint8:
        raise BadSampleError(f"{img.dtype} pixels, expected 8-bit")
    if img.ndim == 2 or img.shape[2] == 1:
        raise BadSampleError(f"grayscale image ({img.shape[1]}x{img.shape[0]}, 1 channel), expected BGR")
    if img.shape[2] != 3:
        raise BadSampleError(f"{img.shape[2]} channels, expected 3 (BGR)")
    if img.shape[0] != size or img.shape[1] != size:
        raise BadSampleError(
            f"size {img.shape[1]}x{img.shape[0]}, expected {size}x{size} aligned faces"
        )
    return img


def to_chw_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> contiguous uint8 CHW tensor (training mirrors on the device: ``run.engine.flip_mask``).

    cv2.split + stack is ~3x quicker than a strided numpy transpose copy at 112x112x3.
    """
    return torch.from_numpy(np.stack(cv2.split(img)))
