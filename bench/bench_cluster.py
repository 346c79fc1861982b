"""Time and peak memory of ``eval.cluster`` on synthetic clustered features: k-NN graph, then each method.

Identities are random unit directions in ``--dim`` dimensions, ``--per-id`` faces each on average; a face
is its identity's direction plus Gaussian noise of norm ``noise`` x U(0.5, 1.5) (two faces of one identity
have cosine about 1 / (1 + noise^2)), times a random magnitude. The k-NN graph is exact brute force:
O(N^2 D) time, O(N k) memory plus one score tile. ``growth_mb`` = peak resident memory during the stage
minus the resident memory before it.

``--graph-only N`` times the clustering step alone on N faces whose k-NN lists are drawn synthetically
(mostly same-identity neighbours), for sizes where the brute-force graph would take hours on a CPU; it
measures the memory and time of what follows the graph, not the graph itself.

    python -m bench.bench_cluster --sizes 10000,100000 [--graph-only 1000000] [--json out.json]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import PeakRss, csv_arg, format_machine, format_rows, machine_info
from eval.cluster_graph import METHODS, cluster, knn_graph
from eval.cluster_metrics import cluster_scores
from utils.atomic import write_json

COLUMNS = ["faces", "stage", "seconds", "peak_rss_mb", "growth_mb", "pairwise_f", "bcubed_f", "nmi", "clusters"]


def synthetic_faces(n: int, dim: int, per_id: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = max(1, n // per_id)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, ids, n)
    feats = rng.standard_normal((n, dim), dtype=np.float32)
    feats *= rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32) * (noise / np.sqrt(dim))  # faces of mixed quality
    feats += centres[labels]
    feats *= rng.uniform(10, 40, (n, 1)).astype(np.float32)
    return feats, labels


def synthetic_graph(n: int, k: int, per_id: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-NN lists without features: 80 % same-identity neighbours (cosine ~0.6), the rest random (~0.1)."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, max(1, n // per_id), n))
    start = np.searchsorted(labels, labels)
    size = np.bincount(labels)[labels]
    same = start[:, None] + rng.integers(0, size[:, None], (n, k))
    other = rng.integers(0, n, (n, k))
    pick = rng.random((n, k)) < 0.8
    idx = np.where(pick, same, other).astype(np.int64)
    sim = np.where(pick, rng.normal(0.6, 0.1, (n, k)), rng.normal(0.1, 0.1, (n, k))).astype(np.float32)
    order = np.argsort(-sim, axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1), labels


def time_methods(feats, idx, sim, labels, methods, threshold) -> list[dict]:
    rows = []
    for m in methods:
        with PeakRss() as mem:
            t0 = time.perf_counter()
            pred = cluster(m, feats, idx, sim, threshold)
            seconds = time.perf_counter() - t0
            s = cluster_scores(labels, pred)  # inside: the peak has always included scoring
        rows.append({"stage": m, "seconds": round(seconds, 2), "peak_rss_mb": round(mem.peak_mb, 1),
                     "growth_mb": round(mem.growth_mb, 1),
                     "pairwise_f": round(s["pairwise_f"], 4), "bcubed_f": round(s["bcubed_f"], 4),
                     "nmi": round(s["nmi"], 4), "clusters": s["num_clusters"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000", help="numbers of faces (brute-force k-NN graph)")
    p.add_argument("--graph-only", default="", help="numbers of faces for the clustering step alone")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per-id", type=int, default=10, help="faces per identity on average")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--agg-max", type=int, default=20000, help="skip agglomerative above this many faces")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    info = machine_info()
    print(format_machine(info))
    rows = []
    for n in [int(v) for v in csv_arg(args.sizes)]:
        feats, labels = synthetic_faces(n, args.dim, args.per_id, args.noise)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            idx, sim = knn_graph(feats, args.k)
            seconds = time.perf_counter() - t0
        rows.append({"faces": n, "stage": "k-NN graph", "seconds": round(seconds, 2),
                     "peak_rss_mb": round(mem.peak_mb, 1), "growth_mb": round(mem.growth_mb, 1)})
        methods = [m for m in csv_arg(args.methods) if m != "agglomerative" or n <= args.agg_max]
        rows += [{"faces": n, **r} for r in time_methods(feats, idx, sim, labels, methods, args.threshold)]
        print(format_rows(rows[-len(methods) - 1:], COLUMNS), flush=True)
        del feats, idx, sim
    for n in [int(v) for v in csv_arg(args.graph_only)]:
        idx, sim, labels = synthetic_graph(n, args.k, args.per_id)
        methods = [m for m in csv_arg(args.methods) if m != "agglomerative"]
        new = [{"faces": n, **r, "stage": r["stage"] + " (graph given)"}
               for r in time_methods(None, idx, sim, labels, methods, args.threshold)]
        rows += new
        print(format_rows(new, COLUMNS), flush=True)
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "rows": rows}, nan_as_null=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
