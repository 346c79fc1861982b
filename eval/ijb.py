"""IJB-B / IJB-C 1:1 template verification: TAR at FAR 1e-6 ... 1e-1.

Template features, following the seed's ``eval_ijb.py``, from image features in the order of
``meta/ijb{b,c}_face_tid_mid.txt`` (media ids are grouped within each template):

- ``mean`` (seed default, ``--magface_qlt 0``): media = mean of the raw image features; media features
  L2-normalised; template = mean of its media features. Every media weighs the same.
- ``norm-mean`` (insightface's recipe): image features L2-normalised first, then as ``mean``.
- ``magnitude`` (MagFace+, seed ``--magface_qlt 1``): as ``mean`` but media features are *not*
  normalised, so a media of high-magnitude (high-quality) faces pulls the template harder; within a
  media the raw mean already weights images by magnitude in every mode but ``norm-mean``.

Score = 1 - arccos(clip(cos, -1, 1)) / pi of the two template features; ROC by
``sklearn.metrics.roc_curve(label, score)``; TAR at each FAR = TPR of the ROC point whose FPR is nearest
(arrays reversed, first minimum). Computed in float32 like the seed, so scores agree with it to ~1e-7,
not bit for bit.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_curve

from eval.metrics import (
    read_int_table,
    tar_at_far_nearest,
)
from utils.atomic import write_json
from utils.cli import keyword_defaults, run_cli
from utils.feature_io import load_features
from utils.table import format_table
from utils.text_lines import line_of_row, numbered_tokens, printable

AGGREGATIONS = ("mean", "norm-mean", "magnitude")
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_CHUNK = 1024


class UnknownTemplateError(ValueError):
    """A pair names a template absent from the face/template/media list; ``row`` is the pair's row."""

    def __init__(self, template: int, row: int):
        super().__init__(f"template {template} (pair row {row}) is not in the face/template/media list")
        self.template, self.row = template, row


def read_face_tid_mid(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``image_name template_id media_id`` lines -> (templates, medias) int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB face list not found: {path}")
    try:
        # latin-1 reads any byte; the image names (any bytes) are dropped by the converter
        table = np.loadtxt(path, dtype=np.int64, comments=None, ndmin=2, converters={0: lambda s: 0},
                           encoding="latin-1")
    except ValueError:
        table = None
    if table is None or table.shape[1] != 3:
        for number, parts in numbered_tokens(path):
            if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts[1:]):
                raise ValueError(f"{printable(path)}:{number}: expected 'image_name template_id media_id', "
                                 f"got '{printable(' '.join(parts))}'")
        raise ValueError(f"{printable(path)}: unreadable face/template/media list")
    if len(table) == 0:
        raise ValueError(f"IJB face list {path} is empty")
    return table[:, 1].copy(), table[:, 2].copy()


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``template1 template2 label`` lines -> (t1, t2, label) int64."""
    table = read_int_table(path, 3, "IJB pair list")
    bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{path}:{line_of_row(path, r)}: label must be 0 or 1, got {table[r, 2]}")
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def _row_scaled_mean(group: np.ndarray, ngroups: int, weights: np.ndarray) -> sp.csr_matrix:
    """Sparse (ngroups, n) matrix whose product with rows averages them per group, row i scaled by w_i."""
    counts = np.bincount(group, minlength=ngroups).astype(np.float64)
    data = (weights / counts[group]).astype(np.float32)
    return sp.csr_matrix((data, (group, np.arange(len(group)))), shape=(ngroups, len(group)))


def _inverse_norms(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1).astype(np.float64)
    if np.any(norms == 0):
        raise ValueError(f"{what} {int(np.flatnonzero(norms == 0)[0])} has a zero-length feature")
    return 1.0 / norms


def template_features(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, aggregation: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """-> (sorted unique template ids, float32 (T, D) template features), with sparse averaging."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    if not (len(feats) == len(templates) == len(medias)):
        raise ValueError(f"{len(feats)} features for {len(templates)} face-list lines")
    feats = np.asarray(feats, dtype=np.float32)
    uniq_t, t_idx = np.unique(templates, return_inverse=True)
    span = int(medias.max() - medias.min()) + 1
    _, m_idx = np.unique(t_idx.astype(np.int64) * span + (medias - medias.min()), return_inverse=True)
    n_media = int(m_idx.max()) + 1
    image_w = _inverse_norms(feats, "image row") if aggregation == "norm-mean" else np.ones(len(feats))
    media = _row_scaled_mean(m_idx, n_media, image_w) @ feats
    media_t = np.empty(n_media, dtype=np.int64)
    media_t[m_idx] = t_idx
    media_w = np.ones(n_media) if aggregation == "magnitude" else _inverse_norms(media, "media")
    tfeats = _row_scaled_mean(media_t, len(uniq_t), media_w) @ media
    return uniq_t, np.asarray(tfeats, dtype=np.float32)


def template_rows(uniq_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row of each template id in the sorted ``uniq_t``; an unknown id raises ``UnknownTemplateError``.

    A lookup table over the id range when it is compact (IJB ids are), else a binary search.
    """
    lo, hi = int(uniq_t[0]), int(uniq_t[-1])
    if hi - lo < max(4 * len(t), 1 << 22):
        lut = np.full(hi - lo + 1, -1, dtype=np.int64)
        lut[uniq_t - lo] = np.arange(len(uniq_t))
        rows = lut[np.clip(t, lo, hi) - lo]
        rows[(t < lo) | (t > hi)] = -1
    else:
        rows = np.clip(np.searchsorted(uniq_t, t), 0, len(uniq_t) - 1)
        rows[uniq_t[rows] != t] = -1
    bad = np.flatnonzero(rows < 0)
    if bad.size:
        raise UnknownTemplateError(int(t[bad[0]]), int(bad[0]))
    return rows


def _cosines(unit: np.ndarray, r1: np.ndarray, r2: np.ndarray, out: np.ndarray, chunk: int) -> None:
    for s in range(0, len(r1), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", unit[r1[s:s + chunk]], unit[r2[s:s + chunk]])


def pair_scores(
    tfeats: np.ndarray, uniq_t: np.ndarray, t1: np.ndarray, t2: np.ndarray,
    chunk: int = PAIR_CHUNK, workers: int | None = None,
) -> np.ndarray:
    """1 - arccos(clip(cos)) / pi for every template pair (float64 out).

    Pairs are visited sorted by their first template, in small chunks (the gathered rows stay in
    cache), split over threads (numpy releases the GIL in the gather and the dot products).
    """
    unit = (tfeats * _inverse_norms(tfeats, "template row")[:, None]).astype(np.float32)
    r1, r2 = template_rows(uniq_t, t1), template_rows(uniq_t, t2)
    key_dtype = np.uint16 if len(uniq_t) <= 1 << 16 else np.uint32  # 16-bit keys: a radix sort
    order = None if np.all(r1[:-1] <= r1[1:]) else np.argsort(r1.astype(key_dtype), kind="stable")
    if order is not None:
        r1, r2 = r1[order], r2[order]
    cos = np.empty(len(r1), dtype=np.float32)
    workers = workers or min(4, os.cpu_count() or 1)
    bounds = np.linspace(0, len(r1), workers + 1).astype(np.int64)
    with ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(_cosines, unit, r1[a:b], r2[a:b], cos[a:b], chunk)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        for job in jobs:
            job.result()
    np.clip(cos, -1.0, 1.0, out=cos)
    scores = np.empty(len(r1), dtype=np.float64)
    sorted_scores = 1.0 - np.arccos(cos) / np.float32(math.pi)
    if order is None:
        scores[:] = sorted_scores
    else:
        scores[order] = sorted_scores
    return scores


def ijb_tar_at_far(labels: np.ndarray, scores: np.ndarray, fars=FARS) -> tuple[dict[str, float], float]:
    """(TAR at each FAR by the seed's nearest-FPR rule, ROC AUC)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return tar_at_far_nearest(fpr, tpr, fars), float(np.trapezoid(tpr, fpr))


def evaluate_ijb(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, t1: np.ndarray, t2: np.ndarray,
    labels: np.ndarray, aggregation: str = "mean",
) -> dict:
    """Whole protocol on arrays; the report holds wall and CPU (all threads) seconds of each stage."""
    marks = [(time.perf_counter(), time.process_time())]
    uniq_t, tfeats = template_features(feats, templates, medias, aggregation)
    marks.append((time.perf_counter(), time.process_time()))
    scores = pair_scores(tfeats, uniq_t, t1, t2)
    marks.append((time.perf_counter(), time.process_time()))
    tars, auc = ijb_tar_at_far(labels, scores)
    marks.append((time.perf_counter(), time.process_time()))
    stages = ("templates", "scores", "roc")
    return {
        "tar_at_far": tars, "auc": auc, "aggregation": aggregation, "num_pairs": int(len(labels)),
        "num_genuine": int(np.sum(labels == 1)), "num_templates": int(len(uniq_t)),
        "seconds": {k: marks[i + 1][0] - marks[i][0] for i, k in enumerate(stages)},
        "cpu_seconds": {k: marks[i + 1][1] - marks[i][1] for i, k in enumerate(stages)},
    }


def load_protocol(base_dir: str | Path, kind: str) -> tuple[np.ndarray, ...]:
    """(templates, medias, t1, t2, labels) from ``meta/`` under ``base_dir``; ids checked against each other."""
    meta = Path(base_dir) / "meta"
    face_path = meta / f"ijb{kind}_face_tid_mid.txt"
    pair_path = meta / f"ijb{kind}_template_pair_label.txt"
    templates, medias = read_face_tid_mid(face_path)
    t1, t2, labels = read_template_pairs(pair_path)
    uniq_t = np.unique(templates)
    for t in (t1, t2):
        try:
            template_rows(uniq_t, t)
        except UnknownTemplateError as e:
            raise ValueError(f"{pair_path}:{line_of_row(pair_path, e.row)}: template {e.template} is not "
                             f"in {face_path}") from None
    return templates, medias, t1, t2, labels


def run(feat_list: str, *, base_dir: str = "data/IJBC/", kind: str = "c", embedding_size: int = 512,
        aggregation: str = "mean") -> dict:
    """The report of the features of IJB-``kind`` (b or c) under ``base_dir``/meta, rows in face_tid_mid order."""
    templates, medias, t1, t2, labels = load_protocol(base_dir, kind)
    _, feats = load_features(feat_list)
    if feats.shape[1] != embedding_size:
        raise ValueError(f"{feat_list}: features have {feats.shape[1]} dimensions, "
                         f"expected --embedding_size {embedding_size}")
    face_path = Path(base_dir) / "meta" / f"ijb{kind}_face_tid_mid.txt"
    if len(feats) != len(templates):
        raise ValueError(f"{feat_list} has {len(feats)} feature rows but {face_path} has "
                         f"{len(templates)} lines; rows must follow that file's order")
    report = evaluate_ijb(feats, templates, medias, t1, t2, labels, aggregation)
    report["set"] = f"IJB-{kind.upper()}"
    return report


def build_parser() -> argparse.ArgumentParser:
    d = keyword_defaults(run)
    p = argparse.ArgumentParser(description="IJB-B/C 1:1 verification: TAR at FAR 1e-6..1e-1.")
    p.add_argument("--feat_list", "--feat-list", required=True, help="features in face_tid_mid order")
    p.add_argument("--base_dir", "--base-dir", default=d["base_dir"], help="folder holding meta/")
    p.add_argument("--type", choices=("b", "c"), default=d["kind"], help="IJB-B or IJB-C meta files")
    p.add_argument("--embedding_size", "--embedding-size", type=int, default=d["embedding_size"],
                   help="feature dimension expected in the feature file")
    p.add_argument("--magface_qlt", "--magface-qlt", type=int, choices=(0, 1), default=0,
                   help="1 = magnitude-aware aggregation (same as --aggregation magnitude)")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None, help=f"default: {d['aggregation']}")
    p.add_argument("--json", default=None, help="write the metrics here (atomically)")
    return p


def resolve_aggregation(aggregation: str | None, magface_qlt: int) -> str:
    """--aggregation, or the seed's --magface_qlt 1 (magnitude), or run's default."""
    if aggregation is None:
        return "magnitude" if magface_qlt == 1 else keyword_defaults(run)["aggregation"]
    if magface_qlt == 1 and aggregation != "magnitude":
        raise ValueError(f"--magface_qlt 1 contradicts --aggregation {aggregation}")
    return aggregation


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    aggregation = resolve_aggregation(args.aggregation, args.magface_qlt)
    report = run(args.feat_list, base_dir=args.base_dir, kind=args.type, embedding_size=args.embedding_size,
                 aggregation=aggregation)
    tars = report["tar_at_far"]
    print(format_table(["set", "aggregation", "pairs"] + [f"TAR@{k}" for k in tars],
                       [[report["set"], report["aggregation"], report["num_pairs"]]
                        + [f"{v:.4f}" for v in tars.values()]]))
    if args.json:
        write_json(args.json, report, nan_as_null=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``)."""
    return run_cli(_main, argv, "eval.ijb")


if __name__ == "__main__":
    raise SystemExit(main())
