"""The input convention of a face model: face size, channel order and pixel normalisation.

Size: every tool (gen_feat, verification, the toy example, the ONNX export, training) reads and feeds
aligned ``FACE_SIZE`` x ``FACE_SIZE`` (112) faces, whatever resolution the model works at. A model
built for another ``input_size`` (stored in its checkpoint config; e.g. 56 for the CPU demo) resizes
inside its own forward (``models.iresnet.IResNet.resize_input``), so the exported ONNX graph does too
and keeps a (B, 3, 112, 112) input. ``read_aligned_face`` is the one check of that rule.

Released MagFace models take BGR pixels / 255 with no mean/std; insightface (ArcFace) models take
RGB (x - 127.5) / 127.5. Mixing them up silently costs accuracy, so every checkpoint this project
writes records its convention, and every tool applies it in one place: ``to_model_input``.

Images travel as uint8 BGR (as cv2 decodes them) in NCHW until they reach the device; the conversion
to float happens there. torch is imported only by ``to_model_input``: the rest serves the torch-free
deployment path (``inference.ort_embed``) too.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from utils.text_lines import printable

if TYPE_CHECKING:
    import torch

FACE_SIZE = 112


@dataclass(frozen=True)
class InputConvention:
    """``x = (pixel / 255 - mean) / std`` on channels in ``order``."""

    order: str = "BGR"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.order not in ("BGR", "RGB"):
            raise ValueError(f"input convention order must be 'BGR' or 'RGB', got {self.order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"input convention mean/std need 3 values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"input convention std must be positive, got {self.std}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict:
        return {"order": self.order, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> InputConvention:
        unknown = set(d) - {"order", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown input convention keys {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k != "order" else v) for k, v in d.items()})


MAGFACE = InputConvention("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
INSIGHTFACE = InputConvention("RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# The public MobileFaceNet (raw/pretrained/): torchvision's ImageNet normalisation on RGB.
IMAGENET = InputConvention("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PRESETS = {"magface": MAGFACE, "insightface": INSIGHTFACE, "arcface": INSIGHTFACE, "imagenet": IMAGENET}


def parse_convention(text: str) -> InputConvention:
    """A preset name (``magface``, ``insightface``) or ``ORDER:m1,m2,m3:s1,s2,s3`` (mean/std in 0..1)."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(
            f"input convention {text!r}: expected one of {sorted(PRESETS)} or ORDER:m1,m2,m3:s1,s2,s3"
        )
    try:
        mean = tuple(float(v) for v in parts[1].split(","))
        std = tuple(float(v) for v in parts[2].split(","))
    except ValueError as e:
        raise ValueError(f"input convention {text!r}: mean/std must be numbers ({e})") from None
    return InputConvention(parts[0].upper(), mean, std)


def convention_name(conv: InputConvention) -> str:
    """The text ``parse_convention`` reads back as ``conv``: a preset's name where one matches."""
    for name, preset in PRESETS.items():
        if preset == conv:
            return name
    return f"{conv.order}:{','.join(f'{m:g}' for m in conv.mean)}:{','.join(f'{s:g}' for s in conv.std)}"


def to_model_input(
    images: torch.Tensor, convention: InputConvention = MAGFACE, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """uint8 BGR NCHW (or float 0..255) -> normalised float NCHW (fp32 unless ``dtype``) in the convention's
    channel order."""
    import torch  # here, not at import: the torch-free deployment path (inference.ort_embed) uses this module

    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    x = images
    if convention.order == "RGB":
        x = x.flip(1)
    x = x.to(dtype=torch.float32)
    scale, shift = _affine(convention.mean, convention.std, x.device)
    x = x * scale - shift
    return x if dtype is None else x.to(dtype)


def load_aligned_face(path: str | os.PathLike) -> np.ndarray:
    """``read_aligned_face`` whose ValueError says only what is wrong, for callers that name the file their
    own way (a list's line). The bytes are read by Python, not by ``cv2.imread``, which crashes on a path
    that is not UTF-8 (legal on Linux; read from a list as surrogate escapes)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"cannot read the file ({e.strerror or e})") from None
    if data.size == 0:
        raise ValueError("empty file (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a readable image (truncated, or not an image file)")
    if image.shape[:2] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, expected an aligned "
                         f"{FACE_SIZE}x{FACE_SIZE} face: for photographs, python -m inference.assess PHOTOS "
                         "--save-crops (or dataloader.prepare for a training set) detects and aligns them; "
                         "python -m faces.align aligns from a landmark file")
    return image


def read_aligned_face(path: str | os.PathLike) -> np.ndarray:
    """uint8 BGR (FACE_SIZE, FACE_SIZE, 3) face, or a ValueError naming the file and what is wrong."""
    try:
        return load_aligned_face(path)
    except ValueError as e:
        raise ValueError(f"{printable(path)}: {e}") from None


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) as (1, 3, 1, 1) fp32 tensors, built once per device: creating them
    from Python lists on every call meant two blocking host-to-device copies per training step."""
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (mean_t / std_t).to(device)
