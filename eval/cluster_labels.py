"""Identity labels for ``eval.cluster``: plain ``path label`` lists and IJB-B's clustering protocol CSVs.

Plain list: one ``path label`` line per face, in the feature file's order (blank lines skipped); the label
is any token. When the feature file stores paths, each line's path must name the same image as the row
(equal, or one a ``/``-suffix of the other, so relative and absolute paths match).

IJB-B (Janus release, ``clustering_protocols/test7_clustering``): ``ijbb_clustering_<N>_hint_<H>.csv`` with a
header row; one data row per face with ``TEMPLATE_ID`` and ``FILENAME`` (+ box and landmark columns); the
identities come from a ``SUBJECT_ID`` column when the file has one, else from
``ijbb_clustering_test7_ground_truth.csv`` (``TEMPLATE_ID,SUBJECT_ID,...``) found beside it or given. Feature
row i is the face of data row i (the crops carry their own names, so only the counts are checked).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from utils.text_lines import field_lines, open_text, printable


def _same_image(a: str, b: str) -> bool:
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def read_plain_labels(path: Path, n: int, feat_paths: list[str] | None, feat_source: str) -> np.ndarray:
    """``path label`` lines -> labels (str array), checked against the ``n`` feature rows."""
    labels: list[str] = []
    for number, (image, label) in field_lines(path, ("path", "label")):
        row = len(labels)
        if row >= n:
            raise ValueError(f"{printable(path)}:{number}: line for face {row + 1}, but {feat_source} has only "
                             f"{n} rows")
        if feat_paths is not None and not _same_image(image, feat_paths[row]):
            raise ValueError(f"{printable(path)}:{number}: path {printable(image)} does not match feature row "
                             f"{row} ({printable(feat_paths[row])}) of {feat_source}")
        labels.append(label)
    if not labels:
        raise ValueError(f"label list {path} is empty")
    return np.asarray(labels)


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open_text(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty")
    return [c.strip().upper() for c in rows[0]], rows[1:]


def read_ground_truth(path: Path) -> dict[str, str]:
    """``TEMPLATE_ID,SUBJECT_ID,...`` (header row) -> {template id: subject id}."""
    header, rows = _csv_rows(path)
    if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
        raise ValueError(f"{path}:1: ground truth needs TEMPLATE_ID and SUBJECT_ID columns, got {header}")
    t, s = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
    return {r[t].strip(): r[s].strip() for r in rows}


def read_ijbb_labels(path: Path, ground_truth: Path | None) -> np.ndarray:
    """Subject of every data row of an IJB-B clustering CSV."""
    header, rows = _csv_rows(path)
    if "TEMPLATE_ID" not in header:
        raise ValueError(f"{path}:1: not an IJB-B clustering file (no TEMPLATE_ID column in {header})")
    t = header.index("TEMPLATE_ID")
    if "SUBJECT_ID" in header:
        s = header.index("SUBJECT_ID")
        return np.asarray([r[s].strip() for r in rows])
    if ground_truth is None:
        found = sorted(path.parent.glob("*ground_truth*.csv"))
        if not found:
            raise FileNotFoundError(f"{path} has no SUBJECT_ID column and no *ground_truth*.csv lies beside it "
                                    "(pass --ground-truth)")
        ground_truth = found[0]
    truth = read_ground_truth(ground_truth)
    labels = []
    for number, r in enumerate(rows, start=2):
        tid = r[t].strip()
        if tid not in truth:
            raise ValueError(f"{path}:{number}: template {tid} is not in {ground_truth}")
        labels.append(truth[tid])
    return np.asarray(labels)


def find_ijbb_protocol(base_dir: str | os.PathLike, subset: int) -> Path:
    """``ijbb_clustering_<subset>_*.csv`` under ``base_dir/meta`` or anywhere below ``base_dir``."""
    base = Path(base_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"IJB-B folder not found: {base}")
    pattern = f"ijbb_clustering_{subset}_*.csv"
    found = sorted((base / "meta").glob(pattern)) or sorted(base.rglob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {base}/meta or below {base}")
    return found[0]


def read_labels(
    path: str | os.PathLike, n: int, feat_paths: list[str] | None, feat_source: str,
    ground_truth: str | None = None,
) -> np.ndarray:
    """Labels of an IJB-B CSV (by suffix) or a plain list for ``n`` feature rows (paths checked if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label list not found: {path}")
    if path.suffix.lower() == ".csv":
        labels = read_ijbb_labels(path, Path(ground_truth) if ground_truth else None)
        kind = "data rows"
    else:
        labels = read_plain_labels(path, n, feat_paths, feat_source)
        kind = "labelled lines"
    if len(labels) > n:  # only a CSV gets here (a plain list stops at its first extra line)
        raise ValueError(f"{path}:{n + 2}: data row {n + 1} has no feature row ({feat_source} has {n} rows)")
    if len(labels) < n:
        raise ValueError(f"{path}: {len(labels)} {kind} but {feat_source} has {n} feature rows; feature row "
                         f"{len(labels)} has no label (one line per row, in the feature file's order)")
    return labels
