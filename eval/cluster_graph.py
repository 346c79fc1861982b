"""The cosine k-NN graph of the faces and the clustering methods that run on it.

The graph is exact (brute force): the L2-normalised features are multiplied a block of query rows at a
time against all rows and only each row's ``k`` best neighbours are kept, so memory is O(N k) for the
graph plus one (block, N) score tile, chosen to stay under ``tile_mb``; never O(N^2). Time is O(N^2 D):
about 2 * N^2 * D flops (see ``bench/bench_cluster.py``). On a GPU pass ``device="cuda"``.

Methods (all from scikit-learn / scipy, none hand-written), each cutting at one cosine-similarity
threshold ``T``:

- ``agglomerative``: ``sklearn.cluster.AgglomerativeClustering``, average linkage, cosine distance,
  ``distance_threshold = 1 - T``, merges only along k-NN edges (``connectivity``), run separately on
  each connected component of the k-NN graph (sklearn would otherwise join components with an O(N^2)
  search). sklearn copies the two end points of every edge (O(N k D) transient memory), so this method
  is the accurate one for sets up to ~10^5 faces; the two below scale further.
- ``knn-cc``: k-NN edges with cosine >= T (``--mutual``: only edges both ends chose), clusters =
  ``scipy.sparse.csgraph.connected_components``.
- ``dbscan``: ``sklearn.cluster.DBSCAN`` on the k-NN graph as a sparse precomputed distance matrix,
  ``eps = 1 - T``; points that are not dense enough (noise) become singletons.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN, AgglomerativeClustering

METHODS = ("agglomerative", "knn-cc", "dbscan")
TINY = 1e-9  # sparse precomputed distances: a stored zero would read as "not a neighbour"


def normalised(feats: np.ndarray) -> np.ndarray:
    """float32 rows of unit length; a zero row is an error (its direction is undefined)."""
    feats = np.asarray(feats, dtype=np.float32)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"feature row {int(np.flatnonzero(norms.ravel() == 0)[0])} is all zeros")
    return feats / norms


def knn_graph(
    feats: np.ndarray, k: int, device: str = "cpu", tile_mb: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours (N, k) int64, cosine (N, k) float32) of every row, itself excluded, best first."""
    n = len(feats)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    base = torch.from_numpy(normalised(feats)).to(device)
    block = int(max(1, min(n, tile_mb * 2**20 // (4 * n))))
    idx = np.empty((n, k), np.int64)
    sim = np.empty((n, k), np.float32)
    with torch.inference_mode():
        for start in range(0, n, block):
            stop = min(n, start + block)
            scores = base[start:stop] @ base.T
            rows = torch.arange(stop - start, device=device)
            scores[rows, rows + start] = -float("inf")
            top = torch.topk(scores, k, dim=1)
            sim[start:stop] = top.values.cpu().numpy()
            idx[start:stop] = top.indices.cpu().numpy()
    return idx, np.clip(sim, -1.0, 1.0)


def graph_matrix(idx: np.ndarray, sim: np.ndarray, min_sim: float = -2.0, mutual: bool = False) -> sparse.csr_matrix:
    """Symmetric sparse graph holding the cosine of the kept edges (sim >= ``min_sim``)."""
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    keep = sim.ravel() >= min_sim
    # store sim + 2 (> 0) so that a cosine of 0 is not dropped as a structural zero
    g = sparse.csr_matrix((sim.ravel()[keep] + 2.0, (rows[keep], idx.ravel()[keep])), shape=(n, n))
    if mutual:
        return g.minimum(g.T).tocsr()
    return g.maximum(g.T).tocsr()


def knn_components(idx: np.ndarray, sim: np.ndarray, threshold: float, mutual: bool = False) -> np.ndarray:
    """Connected components over the k-NN edges with cosine >= ``threshold``."""
    g = graph_matrix(idx, sim, threshold, mutual)
    return connected_components(g, directed=False)[1]


def dbscan_labels(idx: np.ndarray, sim: np.ndarray, threshold: float, min_samples: int) -> np.ndarray:
    """DBSCAN with eps = 1 - threshold on the k-NN graph (self included, as sklearn counts it)."""
    n = len(idx)
    g = graph_matrix(idx, sim).tocoo()
    dist = np.maximum(1.0 - (g.data - 2.0), TINY)
    rows = np.concatenate([g.row, np.arange(n)])
    cols = np.concatenate([g.col, np.arange(n)])
    data = np.concatenate([dist, np.full(n, TINY)])
    d = sparse.csr_matrix((data, (rows, cols)), shape=(n, n))
    labels = DBSCAN(eps=1.0 - threshold, min_samples=min_samples, metric="precomputed").fit_predict(d)
    noise = labels < 0
    labels[noise] = labels.max() + 1 + np.arange(int(noise.sum()))
    return labels


def agglomerative_labels(feats: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage cosine clustering along k-NN edges, one sklearn run per graph component."""
    n = len(feats)
    g = graph_matrix(idx, np.zeros(idx.shape, np.float32))
    g.data[:] = 1.0
    n_comp, comp = connected_components(g, directed=False)
    labels = np.empty(n, np.int64)
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
    unit = normalised(feats)
    next_label = 0
    for c in range(n_comp):
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) < 3:  # sklearn needs 2 samples; 2 linked faces merge iff their cosine >= T
            same = len(members) == 2 and float(unit[members[0]] @ unit[members[1]]) >= threshold
            labels[members] = next_label if same else next_label + np.arange(len(members))
            next_label += 1 if same else len(members)
            continue
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=1.0 - threshold, metric="cosine", linkage="average",
            connectivity=g[members][:, members],
        )
        sub = model.fit_predict(unit[members])
        labels[members] = next_label + sub
        next_label += int(sub.max()) + 1
    return labels


def cluster(
    method: str, feats: np.ndarray, idx: np.ndarray, sim: np.ndarray, threshold: float,
    mutual: bool = False, min_samples: int = 3,
) -> np.ndarray:
    """Cluster labels (N,) of one method on a precomputed k-NN graph."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if method == "agglomerative":
        return agglomerative_labels(feats, idx, threshold)
    if method == "knn-cc":
        return knn_components(idx, sim, threshold, mutual)
    if method == "dbscan":
        return dbscan_labels(idx, sim, threshold, min_samples)
    raise ValueError(f"unknown clustering method {method!r}; choose from {METHODS}")
