"""Clustering metrics from the contingency table: pairwise and BCubed precision / recall / F, and NMI.

With n_ij faces of identity i in predicted cluster j, a_j = sum_i n_ij (cluster sizes), b_i = sum_j n_ij
(identity sizes) and N faces:

- pairwise (the face-clustering papers' "F-score", Shi et al. / Wang et al.): over unordered pairs of faces,
  TP = sum C(n_ij, 2), precision = TP / sum C(a_j, 2), recall = TP / sum C(b_i, 2).
- BCubed (Bagga & Baldwin; Amigo et al.): per face, precision = n_ij / a_j and recall = n_ij / b_i,
  averaged over faces: P = sum n_ij^2 / a_j / N, R = sum n_ij^2 / b_i / N.
- NMI: ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic normalisation).

F is the harmonic mean of P and R (0 when both are 0). Convention for empty denominators: when no pair
is predicted together (all singletons) pairwise precision is 1 (no false merge was made); when no two
faces share an identity pairwise recall is 1. Everything runs on the sparse contingency table, so memory
is O(N + non-zero cells), never O(N^2).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.sum(counts * (counts - 1) / 2))


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _table(labels_true: np.ndarray, labels_pred: np.ndarray) -> sparse.csr_matrix:
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(f"labels must be 1-D and of equal length, got {labels_true.shape} and {labels_pred.shape}")
    if len(labels_true) == 0:
        raise ValueError("no faces to score")
    return sparse.csr_matrix(contingency_matrix(labels_true, labels_pred, sparse=True))


def pairwise_prf(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F from sums of C(n, 2) over the contingency table."""
    table = _table(labels_true, labels_pred)
    tp = _pairs(table.data)
    pred_pairs = _pairs(np.asarray(table.sum(axis=0)).ravel())
    true_pairs = _pairs(np.asarray(table.sum(axis=1)).ravel())
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return {"pairwise_precision": p, "pairwise_recall": r, "pairwise_f": _f(p, r)}


def bcubed_prf(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """BCubed precision, recall and F, averaged over faces."""
    table = _table(labels_true, labels_pred).tocoo()
    a = np.asarray(table.sum(axis=0)).ravel()  # predicted cluster sizes
    b = np.asarray(table.sum(axis=1)).ravel()  # identity sizes
    n = float(table.sum())
    sq = table.data.astype(np.float64) ** 2
    p = float(np.sum(sq / a[table.col]) / n)
    r = float(np.sum(sq / b[table.row]) / n)
    return {"bcubed_precision": p, "bcubed_recall": r, "bcubed_f": _f(p, r)}


def cluster_scores(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Every metric of one clustering, plus the numbers of identities and predicted clusters."""
    out = pairwise_prf(labels_true, labels_pred)
    out.update(bcubed_prf(labels_true, labels_pred))
    out["nmi"] = float(normalized_mutual_info_score(labels_true, labels_pred))
    out["num_clusters"] = int(len(np.unique(labels_pred)))
    out["num_identities"] = int(len(np.unique(labels_true)))
    out["num_faces"] = int(len(labels_true))
    return out
