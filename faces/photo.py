"""Read an ordinary photograph as the 8-bit BGR image the detector and the aligner expect.

Photographs come in more shapes than training crops: grayscale, 16-bit PNG/TIFF, PNG with an alpha
channel, CMYK JPEG (print workflows), camera JPEGs rotated by an EXIF orientation tag. OpenCV's
default ``IMREAD_COLOR`` hides most of this; here the file is decoded as stored and converted
explicitly, and every conversion is reported in a short note (the ``note`` column of the reports):

- JPEG: decoded with ``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR`` so the EXIF orientation is applied (a JPEG
  has no alpha); CMYK/YCCK JPEGs are converted to BGR by the decoder (noted from the frame header).
- other formats: ``IMREAD_UNCHANGED`` (alpha and 16 bits kept), then
- 16-bit (or float) -> 8-bit by scaling the full range (x / 257 for uint16, x * 255 for float 0..1);
- grayscale -> BGR (the three channels equal);
- alpha -> composited onto black (the colour of the aligner's border), weighted by alpha.

``read_photo`` raises ``ValueError`` naming the file when it is not a decodable image.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

_JPEG_SOI = b"\xff\xd8"
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_components(data: bytes) -> int | None:
    """Number of colour components in a JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK), None if not found."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            return data[i + 9] if i + 9 < len(data) else None
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        i += 2 + length
    return None


def _to_uint8(image: np.ndarray) -> tuple[np.ndarray, str]:
    if image.dtype == np.uint8:
        return image, ""
    if image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8), "16-bit scaled to 8-bit"
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "float scaled to 8-bit"
    raise ValueError(f"unsupported pixel type {image.dtype}")


def to_bgr8(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Any decoded image (HxW, HxWx1/3/4; uint8, uint16 or float) -> HxWx3 uint8 BGR and the notes."""
    notes: list[str] = []
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32)
        alpha /= 65535.0 if image.dtype == np.uint16 else (255.0 if image.dtype == np.uint8 else 1.0)
        if float(alpha.min()) < 1.0:
            notes.append("alpha composited onto black")
        image = (image[:, :, :3].astype(np.float32) * alpha).astype(image.dtype)
    image, note = _to_uint8(image)
    if note:
        notes.append(note)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        notes.append("grayscale")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"unsupported image shape {image.shape}")
    return np.ascontiguousarray(image), notes


def read_photo(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """(HxWx3 uint8 BGR image, note on the conversions made, '' if none); ValueError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not data:
        raise ValueError(f"{path}: empty file (0 bytes)")
    buf = np.frombuffer(data, dtype=np.uint8)
    is_jpeg = data.startswith(_JPEG_SOI)
    flags = (cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if is_jpeg else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(buf, flags)
    if image is None or image.size == 0:
        raise ValueError(f"{path}: not a decodable image (truncated, or not an image file)")
    try:
        image, notes = to_bgr8(image)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if is_jpeg and jpeg_components(data) == 4:
        notes.insert(0, "CMYK JPEG converted to BGR")
    return image, "; ".join(notes)
