"""Magnitude -> a 0-100 quality score: OFIQ's mapping and a per-model calibration of it.

ISO/IEC 29794-5's open reference implementation (OFIQ) turns the magnitude ``a`` of the released
MagFace iResNet50 into its unified quality score with a logistic curve,

    q = 100 / (1 + exp((c - a) / w)),   c = 23, w = 2.6,

rounded half away from zero and clamped to [0, 100]. The constants only fit that one model: another
backbone, width or training run puts its magnitudes elsewhere. ``fit_calibration`` therefore fits
the same curve to a reference set of aligned faces of the model at hand:

    c = median magnitude,   w = (p95 - p5) / (2 ln 19)

(p5, p95: the 5th and 95th percentiles), so a face as typical as the reference set's median scores
50, and the reference's 5th and 95th percentiles map to about 5 and 95. The score is relative to
that reference set: calibrate on faces like the ones you will score. (For scale: OFIQ's own
constants correspond to a reference spread p5..p95 = 15.3..30.7.)

The calibration is stored next to the checkpoint as ``CKPT.quality.json`` (``side_file``) with the
reference statistics and the checkpoint's SHA-256, and found there automatically.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from utils.atomic import write_json

OFIQ_CENTRE = 23.0
OFIQ_WIDTH = 2.6
SCALES = ("auto", "raw", "ofiq", "calibrated")
RULE = "centre = median magnitude, width = (p95 - p5) / (2 ln 19)"
_LN19 = math.log(19.0)


@dataclass(frozen=True)
class Calibration:
    """Centre and width of the logistic magnitude -> 0-100 map, and where they came from."""

    centre: float
    width: float
    source: str = "ofiq"
    count: int = 0
    p5: float | None = None
    median: float | None = None
    p95: float | None = None
    checkpoint_sha256: str | None = None
    rule: str = RULE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.centre) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"calibration needs a finite centre and a positive width, got "
                             f"{self.centre}, {self.width}")


OFIQ = Calibration(OFIQ_CENTRE, OFIQ_WIDTH, source="ofiq", rule="OFIQ constants (released MagFace iResNet50)")


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (numpy's ``round`` rounds half to even)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def logistic_quality(magnitudes: np.ndarray, calibration: Calibration = OFIQ) -> np.ndarray:
    """0-100 integer scores (as float64) of raw magnitudes under ``calibration``."""
    a = np.asarray(magnitudes, dtype=np.float64)
    z = np.clip((calibration.centre - a) / calibration.width, -700.0, 700.0)  # exp overflow guard
    return np.clip(round_half_away(100.0 / (1.0 + np.exp(z))), 0.0, 100.0)


def fit_calibration(magnitudes: np.ndarray, source: str, checkpoint_sha256: str | None = None) -> Calibration:
    """The calibration of a model from the magnitudes of a reference set (rule in the module docstring)."""
    a = np.asarray(magnitudes, dtype=np.float64).ravel()
    if a.size < 20:
        raise ValueError(f"calibration needs at least 20 reference faces, got {a.size} ({source})")
    if not np.isfinite(a).all():
        raise ValueError(f"reference magnitudes contain NaN or inf ({source})")
    p5, median, p95 = (float(v) for v in np.percentile(a, [5, 50, 95]))
    if p95 - p5 <= 0:
        raise ValueError(f"reference magnitudes have no spread (p5 = p95 = {p5:.4g}); cannot calibrate ({source})")
    return Calibration(median, (p95 - p5) / (2 * _LN19), source=source, count=int(a.size), p5=p5,
                       median=median, p95=p95, checkpoint_sha256=checkpoint_sha256)


ANCHORS = (80.0, 20.0)  # fit_anchored: the scores of a typical good and a typical damaged reference face


def fit_anchored(good: np.ndarray, damaged: np.ndarray, source: str, checkpoint_sha256: str | None = None,
                 anchors: tuple[float, float] = ANCHORS) -> Calibration:
    """The logistic through two anchors: the median magnitude of ``good`` faces scores ``anchors[0]`` (80) and
    that of ``damaged`` faces ``anchors[1]`` (20).

    With one reference set the median face scores 50 whatever its quality; two sets say what "good" and
    "damaged" mean: c = (m_good + m_damaged) / 2, w = (m_good - m_damaged) / (logit(hi) - logit(lo)).
    """
    hi, lo = anchors
    if not 0 < lo < hi < 100:
        raise ValueError(f"anchors must satisfy 0 < damaged < good < 100, got {anchors}")
    medians = []
    for name, values in (("good", good), ("damaged", damaged)):
        a = np.asarray(values, dtype=np.float64).ravel()
        if a.size < 20 or not np.isfinite(a).all():
            raise ValueError(f"the {name} reference needs at least 20 finite magnitudes, got {a.size} ({source})")
        medians.append(float(np.median(a)))
    m_good, m_bad = medians
    if m_good <= m_bad:
        raise ValueError(f"the good faces' median magnitude {m_good:.4g} is not above the damaged faces' "
                         f"{m_bad:.4g}: this model's magnitude does not rank them ({source})")
    spread = math.log(hi / (100 - hi)) - math.log(lo / (100 - lo))
    a = np.asarray(good, dtype=np.float64).ravel()
    p5, p95 = (float(v) for v in np.percentile(a, [5, 95]))
    return Calibration((m_good + m_bad) / 2, (m_good - m_bad) / spread, source=source, count=int(a.size), p5=p5,
                       median=m_good, p95=p95, checkpoint_sha256=checkpoint_sha256,
                       rule=f"anchored: median of good faces -> {hi:g}, median of damaged faces ({m_bad:.4g}) "
                            f"-> {lo:g}")


def side_file(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's calibration lives: ``CKPT.quality.json`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".quality.json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_text(calibration: Calibration) -> str:
    """The side file's JSON: what ``save_calibration`` writes and ``inference.export_onnx`` embeds in a model."""
    return json.dumps({"format": "magface-quality-calibration", "version": 1, **asdict(calibration)})


def parse_calibration(text: str, where: str) -> Calibration:
    """A calibration from its JSON text; a malformed one is a ValueError naming ``where`` (a file, a metadata key)
    and the key at fault."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != "magface-quality-calibration":
        raise ValueError(f"{where}: not a quality calibration (key 'format' missing or wrong)")
    fields = {k: data[k] for k in Calibration.__dataclass_fields__ if k in data}
    for key in ("centre", "width"):
        if not isinstance(fields.get(key), (int, float)):
            raise ValueError(f"{where}: key {key!r} missing or not a number")
    return Calibration(**fields)


def save_calibration(calibration: Calibration, path: str | os.PathLike) -> None:
    write_json(path, json.loads(calibration_text(calibration)))


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a side file; a malformed one is a ValueError naming the file and the key."""
    return parse_calibration(Path(path).read_text(), str(path))


def find_calibration(checkpoint: str | os.PathLike) -> Calibration | None:
    """The checkpoint's side file, if there is one."""
    path = side_file(checkpoint)
    return load_calibration(path) if path.is_file() else None


def looks_released_r50(info: dict) -> bool:
    """A MagFace iResNet50 without our config: the model OFIQ's constants were fitted to."""
    return info.get("arch") == "iresnet50" and info.get("config") is None and info.get("input_size", 112) == 112


def resolve_scale(requested: str, checkpoint: str | os.PathLike, info: dict) -> tuple[Calibration | None, str, str]:
    """(calibration or None for raw, label for the ``quality_scale`` column, warning or '').

    ``auto``: the side file when present, else OFIQ's constants (labelled ``ofiq-uncalibrated``, with a
    warning, unless the model looks like the released iResNet50 they were fitted to).
    """
    if requested not in SCALES:
        raise ValueError(f"unknown quality scale {requested!r}; expected one of {SCALES}")
    if requested == "raw":
        return None, "raw", ""
    found = find_calibration(checkpoint) if requested in ("auto", "calibrated") else None
    if requested == "calibrated" and found is None:
        raise ValueError(f"no calibration for {checkpoint} (expected {side_file(checkpoint)}); make one with "
                         f"python -m inference.calibrate --resume {checkpoint} --inf_list LIST")
    if found is not None:
        warning = ""
        if found.checkpoint_sha256 and found.checkpoint_sha256 != file_sha256(checkpoint):
            warning = (f"warning: {side_file(checkpoint)} was fitted to another version of {checkpoint} "
                       f"(SHA-256 differs): re-run python -m inference.calibrate")
        return found, "calibrated", warning
    if looks_released_r50(info):
        return OFIQ, "ofiq", ""
    return OFIQ, "ofiq-uncalibrated", (
        f"warning: quality scores are UNCALIBRATED: OFIQ's constants (centre {OFIQ_CENTRE}, width {OFIQ_WIDTH}) "
        f"fit the released MagFace iResNet50 only, and {checkpoint} ({info.get('arch')}) has no calibration; "
        f"run python -m inference.calibrate --resume {checkpoint} --inf_list LIST (column quality_scale says "
        f"ofiq-uncalibrated)")
