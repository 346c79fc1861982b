"""How well quality scores track known damage: rank correlation, medians by severity, and ERC.

Inputs are plain arrays: per-row scores (higher = better quality) of a damaged set's img.list, its
``DamageTable`` (eval/damage_set.py) and its pair list. ``quality_report`` returns (JSON-ready; NaN where a
value is undefined, e.g. a constant score or an empty band):

- ``spearman``: {score: {"overall": rho, kind: rho, ...}}: Spearman's rho between the score and the
  severity over the damaged rows (all of them, then each kind). A score that falls as damage grows has
  rho near -1; a score blind to it has rho near 0.
- ``median_by_band``: {score: {band: median}} with bands ``clean`` (severity 0: the undamaged first faces)
  and ``(0,0.25]``, ``(0.25,0.5]``, ``(0.5,0.75]``, ``(0.75,1]``; ``band_counts``: {band: rows}.
- ``erc``: {fmr_key: {score: {"fnmr": [...], "area": a}}}: eval/quality.py's error-versus-reject curve
  (pair quality = min of the two faces' scores, FNMR at the FMR, lowest-quality pairs dropped first) at
  ``reject_ratio`` and its trapezoid area (lower is better); an area that is NaN because some ratio left
  too few pairs comes with ``nan_rows`` (eval/quality.py: the first such ratio and the genuine and impostor
  pairs left there), so a report or picture can say why. ``fmr_key`` is ``"1e-02"``-style.
- ``num_pairs``, ``num_damaged``, ``kinds``, ``scores``, ``reject_ratio``, ``fmrs``.

``read_score_file(path, table_paths, set_dir) -> np.ndarray`` reads an external quality file (lines
``path score``, one per img.list row, any order; paths as in img.list or absolute) into a row-aligned array.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from eval.damage_set import DamageTable
from eval.metrics import angular_distance, far_key
from eval.quality import REJECT_RATIOS, curve_area, error_versus_reject, nan_rows
from utils.text_lines import field_lines

BAND_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
BANDS = ("clean",) + tuple(f"({lo:g},{hi:g}]" for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:], strict=True))
DEFAULT_FMRS = (1e-2, 1e-3)


def spearman(score: np.ndarray, severity: np.ndarray) -> float:
    """Spearman's rho; NaN for fewer than 3 values or a constant input."""
    score, severity = np.asarray(score, dtype=np.float64), np.asarray(severity, dtype=np.float64)
    if len(score) < 3 or np.ptp(score) == 0 or np.ptp(severity) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(score, severity).statistic)


def spearman_by_kind(score: np.ndarray, table: DamageTable) -> dict[str, float]:
    """rho of score vs severity over the damaged rows: "overall", then one per kind present."""
    dmg = table.damaged
    out = {"overall": spearman(score[dmg], table.severity[dmg])}
    for kind in sorted(set(table.kind[dmg].tolist())):
        rows = table.kind == kind
        out[kind] = spearman(score[rows], table.severity[rows])
    return out


def band_of(severity: np.ndarray) -> np.ndarray:
    """Index into BANDS: 0 for severity 0, else the quarter (lo, hi] holding it."""
    severity = np.asarray(severity, dtype=np.float64)
    return np.where(severity <= 0, 0, np.searchsorted(BAND_EDGES[1:], severity, side="left") + 1)


def median_by_band(score: np.ndarray, severity: np.ndarray) -> dict[str, float]:
    """Median score of the rows in each severity band (NaN where a band is empty)."""
    bands = band_of(severity)
    return {name: float(np.median(score[bands == b])) if np.any(bands == b) else float("nan")
            for b, name in enumerate(BANDS)}


def erc(features: np.ndarray, i0: np.ndarray, i1: np.ndarray, issame: np.ndarray, score: np.ndarray,
        fmr: float) -> tuple[np.ndarray, float]:
    """(FNMR per reject ratio, area) with pair quality = min of the pair's two scores."""
    feats = np.asarray(features, dtype=np.float64)
    dist = angular_distance(feats[i0], feats[i1])
    fnmr = error_versus_reject(dist, issame, np.minimum(score[i0], score[i1]), fmr)
    return fnmr, curve_area(fnmr)


def quality_report(features: np.ndarray, table: DamageTable, i0: np.ndarray, i1: np.ndarray,
                   issame: np.ndarray, scores: Mapping[str, np.ndarray],
                   fmrs: Sequence[float] = DEFAULT_FMRS) -> dict:
    """The report described in the module docstring; every score array has one value per table row."""
    n = len(table.paths)
    if len(features) != n:
        raise ValueError(f"{len(features)} feature rows for a damage table of {n} rows")
    if not scores:
        raise ValueError("quality_report: no scores given")
    for name, s in scores.items():
        if np.shape(s) != (n,) or not np.isfinite(s).all():
            raise ValueError(f"score {name!r}: expected {n} finite values, got shape {np.shape(s)}")
    report = {"num_pairs": int(len(i0)), "num_damaged": int(table.damaged.sum()),
              "kinds": sorted(set(table.kind[table.damaged].tolist())), "scores": list(scores),
              "reject_ratio": [round(float(r), 10) for r in REJECT_RATIOS], "fmrs": [float(f) for f in fmrs],
              "band_counts": {name: int(np.sum(band_of(table.severity) == b)) for b, name in enumerate(BANDS)},
              "spearman": {}, "median_by_band": {}, "erc": {far_key(f): {} for f in fmrs}}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        report["spearman"][name] = spearman_by_kind(s, table)
        report["median_by_band"][name] = median_by_band(s, table.severity)
        for f in fmrs:
            fnmr, area = erc(features, i0, i1, issame, s, f)
            curve = {"fnmr": fnmr.tolist(), "area": area}
            undefined = nan_rows(issame, np.minimum(s[i0], s[i1]), fnmr)
            if undefined:
                curve["nan_rows"] = undefined
            report["erc"][far_key(f)][name] = curve
    return report


def read_score_file(path: str | os.PathLike, table_paths: Sequence[str], set_dir: str | os.PathLike) -> np.ndarray:
    """``path score`` lines -> one score per table row; every row exactly once, else an error naming the line."""
    path, set_dir = Path(path), Path(set_dir).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"score file not found: {path}")
    index = {os.path.normpath(p): r for r, p in enumerate(table_paths)}
    index.update({str(set_dir / p): r for r, p in enumerate(table_paths)})
    out = np.full(len(table_paths), np.nan)
    for number, (image, text) in field_lines(path, ("path", "score")):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{path}:{number}: score {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}:{number}: score {text!r} is not finite")
        p = Path(image)
        row = index.get(str(p.resolve()) if p.is_absolute() else os.path.normpath(image))
        if row is None:
            raise ValueError(f"{path}:{number}: {image} is not an image of the damaged set")
        if not np.isnan(out[row]):
            raise ValueError(f"{path}:{number}: second score for {image}")
        out[row] = value
    missing = np.flatnonzero(np.isnan(out))
    if missing.size:
        raise ValueError(f"{path}: no score for {missing.size} images, e.g. {table_paths[int(missing[0])]}")
    return out
