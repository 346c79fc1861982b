"""Known image damage for face-quality benchmarks and (optional) training augmentation.

MagFace claims the feature magnitude is a quality score; to test that we damage aligned faces by a known
kind and amount and check that the score falls as the damage grows. Everything here is pure numpy/cv2 on
uint8 BGR ``H x W x 3`` arrays (112x112 aligned faces in practice); the result always has the input's
shape and dtype.

API (stable; q-study and eval/damage.py use it):

- ``KINDS``: the damage kinds of the benchmark (``eval.damage``), ``("blur", "downscale", "jpeg", "dark",
  "bright", "noise", "occlusion")``. ``EXTRA_KINDS`` (``"motion_blur", "contrast", "colour_cast"``) widen the
  training augmentation (``--degrade-kinds wide``) without changing the benchmark; ``ALL_KINDS`` is both.
- ``degrade(img, kind, severity, rng) -> np.ndarray``: a new damaged array. ``severity`` in [0, 1];
  0 returns an exact copy (bit-identical, and ``rng`` is not touched); damage grows monotonically with
  severity. Deterministic given the state of ``rng`` (only ``noise`` and ``occlusion`` draw from it).
- ``damage_parameter(kind, severity) -> float``: the kind's main parameter below, for tables and plots
  (blur sigma, downscale factor, JPEG quality, dark gain, bright gain, noise sigma, occluded area fraction).
- ``random_degrade(img, rng, kinds=KINDS, max_severity=1.0) -> (img, kind, severity)``: draws a kind
  uniformly from ``kinds`` and a severity uniformly from [0, max_severity], then calls ``degrade``.

Severity ``s`` -> parameter, per kind (``s = 0`` is always the untouched image):

- ``blur``: Gaussian blur, sigma = 4 s pixels (kernel +-3 sigma; below s ~ 0.05 the change rounds away).
- ``downscale``: shrink by factor f = 1 - s (1 - 1/8) (area interpolation; 112 px -> 14 px at s = 1),
  then back to the original size with bilinear interpolation.
- ``jpeg``: JPEG round trip at quality round(95 - 90 s) (95 .. 5).
- ``dark`` (under-exposure): out = 255 gain (x / 255) ** gamma with gain = 1 - 0.85 s and
  gamma = 1 + 1.5 s (at s = 1 the brightest pixel maps to 38).
- ``bright`` (over-exposure): out = min(255, 255 gain (x / 255) ** gamma) with gain = 1 + 2 s and
  gamma = 1 / (1 + s) (highlights clip to white).
- ``noise``: additive Gaussian noise, sigma = 60 s grey levels, independent per pixel and channel,
  rounded and clipped to [0, 255].
- ``occlusion``: a square patch of one random colour covering a fraction 0.4 s of the image area, centred
  at a random point in the central 36% of each axis (so the patch never leaves the image). For a given
  rng state, a larger severity gives a larger patch around the same centre with the same colour.
- ``motion_blur``: a straight line kernel of length 1 + 24 s pixels at a random angle (camera or subject
  motion).
- ``contrast``: out = m + (x - m) (1 - 0.8 s), m the image's mean grey level (haze, a flat exposure).
- ``colour_cast``: per-channel gains 1 - 0.6 s, 1 and 1 + 0.6 s in a random channel order (a wrong white
  balance), clipped to [0, 255].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

KINDS: tuple[str, ...] = ("blur", "downscale", "jpeg", "dark", "bright", "noise", "occlusion")
EXTRA_KINDS: tuple[str, ...] = ("motion_blur", "contrast", "colour_cast")
ALL_KINDS = KINDS + EXTRA_KINDS

_MIN_DOWNSCALE = 1.0 / 8.0
_MAX_OCCLUDED_AREA = 0.4


def damage_parameter(kind: str, severity: float) -> float:
    """The physical parameter of ``kind`` at ``severity`` (see the module docstring)."""
    _check_kind(kind)
    s = _check_severity(severity)
    return {
        "blur": 4.0 * s,
        "downscale": 1.0 - s * (1.0 - _MIN_DOWNSCALE),
        "jpeg": float(round(95 - 90 * s)),
        "dark": 1.0 - 0.85 * s,
        "bright": 1.0 + 2.0 * s,
        "noise": 60.0 * s,
        "occlusion": _MAX_OCCLUDED_AREA * s,
        "motion_blur": 1.0 + 24.0 * s,
        "contrast": 1.0 - 0.8 * s,
        "colour_cast": 0.6 * s,
    }[kind]


def degrade(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Return a damaged copy of ``img`` (uint8 H x W x 3); see the module docstring for each kind."""
    _check_image(img)
    _check_kind(kind)
    s = _check_severity(severity)
    if s == 0.0:
        return img.copy()
    out = _APPLY[kind](img, s, rng)
    assert out.shape == img.shape and out.dtype == np.uint8
    return out


def random_degrade(img: np.ndarray, rng: np.random.Generator, kinds: Sequence[str] = KINDS,
                   max_severity: float = 1.0) -> tuple[np.ndarray, str, float]:
    """Damage ``img`` by a kind drawn uniformly from ``kinds`` at a severity uniform in [0, max_severity]."""
    if len(kinds) == 0:
        raise ValueError("random_degrade: kinds is empty")
    for kind in kinds:
        _check_kind(kind)
    top = _check_severity(max_severity, name="max_severity")
    kind = str(kinds[int(rng.integers(len(kinds)))])
    severity = float(rng.uniform(0.0, top)) if top > 0 else 0.0
    return degrade(img, kind, severity, rng), kind, severity


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"degrade: image must be a uint8 H x W x 3 array, got {desc}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"degrade: image too small: {img.shape}")


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise ValueError(f"degrade: unknown kind {kind!r}; expected one of {', '.join(ALL_KINDS)}")


def _check_severity(severity: float, name: str = "severity") -> float:
    try:
        s = float(severity)
    except (TypeError, ValueError):
        raise ValueError(f"degrade: {name} must be a number in [0, 1], got {severity!r}") from None
    if not (0.0 <= s <= 1.0):  # also rejects NaN
        raise ValueError(f"degrade: {name} must be in [0, 1], got {severity!r}")
    return s


def _blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    sigma = damage_parameter("blur", s)
    ksize = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(img, (ksize, ksize), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def _downscale(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    f = damage_parameter("downscale", s)
    h, w = img.shape[:2]
    small = (max(1, round(w * f)), max(1, round(h * f)))
    if small == (w, h):
        return img.copy()
    low = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    quality = int(damage_parameter("jpeg", s))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"degrade: JPEG encoding failed at quality {quality}")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def _tone_curve(img: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.clip(np.rint(255.0 * gain * x ** gamma), 0, 255).astype(np.uint8)
    return lut[img]


def _dark(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return _tone_curve(img, gain=damage_parameter("dark", s), gamma=1.0 + 1.5 * s)


def _bright(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return _tone_curve(img, gain=damage_parameter("bright", s), gamma=1.0 / (1.0 + s))


def _noise(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    sigma = damage_parameter("noise", s)
    noisy = img.astype(np.float32) + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _occlusion(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    cy, cx = rng.uniform(0.32, 0.68, size=2)
    colour = rng.integers(0, 256, size=3, dtype=np.int64).astype(np.uint8)
    side = math.sqrt(damage_parameter("occlusion", s) * h * w)
    y0, y1 = _span(cy * h, side, h)
    x0, x1 = _span(cx * w, side, w)
    out = img.copy()
    out[y0:y1, x0:x1] = colour
    return out


def _span(centre: float, side: float, size: int) -> tuple[int, int]:
    """Integer [start, stop) of a segment of length ``side`` around ``centre``, inside [0, size)."""
    start = max(0, int(math.floor(centre - side / 2)))
    stop = min(size, int(math.ceil(centre + side / 2)))
    return start, max(stop, start + 1)


def _motion_blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    length = damage_parameter("motion_blur", s)
    angle = rng.uniform(0.0, math.pi)
    size = 2 * math.ceil(length / 2) + 1
    kernel = np.zeros((size, size), np.float32)
    c, half = size // 2, (length - 1) / 2
    for t in np.linspace(-half, half, max(2, 4 * size)):  # a dense line, rasterised
        kernel[int(round(c + t * math.sin(angle))), int(round(c + t * math.cos(angle)))] = 1.0
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT_101)


def _contrast(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    m = float(x.mean())
    return np.clip(np.rint(m + (x - m) * damage_parameter("contrast", s)), 0, 255).astype(np.uint8)


def _colour_cast(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    amount = damage_parameter("colour_cast", s)
    gains = np.array([1.0 - amount, 1.0, 1.0 + amount], np.float32)[rng.permutation(3)]
    return np.clip(np.rint(img.astype(np.float32) * gains), 0, 255).astype(np.uint8)


_APPLY = {"blur": _blur, "downscale": _downscale, "jpeg": _jpeg, "dark": _dark, "bright": _bright,
          "noise": _noise, "occlusion": _occlusion, "motion_blur": _motion_blur, "contrast": _contrast,
          "colour_cast": _colour_cast}
