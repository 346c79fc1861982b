"""Helpers shared by the evaluation tools: angular distance, TAR at FAR, pair lists.

Everything is plain numpy over arrays so the protocols can be tested on toy inputs with known answers.
Reports are written with ``utils.atomic.write_json(..., nan_as_null=True)``: atomic, and strict JSON.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from utils.text_lines import line_of_row, numbered_tokens, printable


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine clipped to [-1, 1], computed as the seed does (sum of products / norms)."""
    dot = np.sum(np.multiply(a, b), axis=1)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(norm == 0):
        row = int(np.flatnonzero(norm == 0)[0])
        raise ValueError(f"pair {row} has a zero-length embedding; its cosine is undefined")
    return np.clip(dot / norm, -1.0, 1.0)


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``arccos(clip(cos, -1, 1)) / pi``: 0 for identical directions, 1 for opposite ones."""
    return np.arccos(cosine_rows(a, b)) / math.pi


def far_key(far: float) -> str:
    """JSON key of a false-accept rate: ``1e-03``."""
    return f"{far:.0e}"


def tar_at_far_bounded(labels: np.ndarray, scores: np.ndarray, fars: Iterable[float]) -> dict[str, float]:
    """Highest TPR among the ROC points whose FPR does not exceed each FAR (higher score = same)."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return {far_key(f): float("nan") for f in fars}
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {far_key(f): float(tpr[fpr <= f].max()) for f in fars}


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, fars: Iterable[float]) -> dict[str, float]:
    """The seed's IJB rule: the TPR of the ROC point whose FPR is nearest each FAR.

    The ROC arrays are searched reversed and the first minimum wins, which on ties picks the point
    with the larger threshold index of the un-reversed curve (the larger TPR at equal FPR).
    """
    fpr_r, tpr_r = np.flipud(fpr), np.flipud(tpr)
    return {far_key(f): float(tpr_r[int(np.argmin(np.abs(fpr_r - f)))]) for f in fars}


def _first_bad_line(path: Path, ncols: int) -> str:
    for number, parts in numbered_tokens(path):
        if len(parts) != ncols:
            return f"{printable(path)}:{number}: expected {ncols} integers, got {len(parts)} values"
        try:
            [int(p) for p in parts]
        except ValueError:
            return f"{printable(path)}:{number}: expected {ncols} integers, got '{printable(' '.join(parts))}'"
    return f"{printable(path)}: unreadable integer table"


def read_int_table(path: str | os.PathLike, ncols: int, what: str = "table") -> np.ndarray:
    """A whitespace-separated table of ``ncols`` integers per line -> int64 (N, ncols); fast (C parser)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        table = np.loadtxt(path, dtype=np.int64, comments=None, ndmin=2, encoding="latin-1")  # any byte reads
    except ValueError:
        raise ValueError(_first_bad_line(path, ncols)) from None
    if table.size == 0:
        raise ValueError(f"{what} {path} is empty")
    if table.shape[1] != ncols:
        raise ValueError(f"{path}:{line_of_row(path, 0)}: expected {ncols} integers, got {table.shape[1]}")
    return table


def read_pair_list(path: str | os.PathLike, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``i j label`` lines (0-based feature rows, label 1 = same) -> (i, j, issame bool)."""
    table = read_int_table(path, 3, "pair list")
    idx = table[:, :2]
    bad = np.flatnonzero(((idx < 0) | (idx >= num_rows)).any(axis=1))
    if bad.size:
        r = int(bad[0])
        raise ValueError(
            f"{path}:{line_of_row(path, r)}: pair index out of range ({idx[r, 0]} {idx[r, 1]}); "
            f"the feature file has {num_rows} rows (valid 0..{num_rows - 1})"
        )
    bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{path}:{line_of_row(path, r)}: label must be 0 or 1, got {table[r, 2]}")
    return idx[:, 0].copy(), idx[:, 1].copy(), table[:, 2].astype(bool)
