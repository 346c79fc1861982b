"""Where the shipped models live (weights are data: each folder's README gives provenance, licence and terms).

- ``PRETRAINED``: the converged public MobileFaceNet, converted (raw/pretrained/README.md).
- ``QUALITY_MODEL``: the MagFace fine-tune of it that ``inference.assess`` and the demo use by default, with its
  0-100 calibration beside it as ``QUALITY_MODEL.quality.json`` (raw/quality/README.md).
"""
from __future__ import annotations

from pathlib import Path

RAW = Path(__file__).resolve().parents[1] / "raw"
PRETRAINED = RAW / "pretrained" / "mobilefacenet.pth"
QUALITY_MODEL = RAW / "quality" / "magface_mobilefacenet.pth"
