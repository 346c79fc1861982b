"""Face clustering evaluation (MagFace paper Sec. 5): cluster the features, score against the identities.

    python -m eval.cluster --feat-list F --label-list L --json OUT

One exact cosine k-NN graph (``eval.cluster_graph``) feeds every method (agglomerative, k-NN connected
components, DBSCAN), each cut at the cosine-similarity ``--threshold``; the metrics (``eval.cluster_metrics``)
are pairwise and BCubed precision / recall / F and NMI. ``--quality-reject 0,0.1,...`` leaves out the
faces with the lowest magnitude (or a random order, the baseline) and clusters the rest again: the paper's
point is that low-quality faces are what breaks clusters.

Choosing ``--threshold``: it plays the role of the verification threshold. Take the cosine at which
same and different pairs separate on a labelled development set (e.g. ``eval.verification``'s best
threshold on LFW, as a cosine), or run this tool on a labelled subset with a few values and keep the best
F; then use it unchanged on the test set. Higher values give purer, smaller clusters.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.cluster_graph import METHODS, cluster, knn_graph
from eval.cluster_labels import find_ijbb_protocol, read_labels
from eval.cluster_metrics import cluster_scores
from utils.atomic import write_json
from utils.cli import keyword_defaults, run_cli
from utils.feature_io import FeatureFile, load_feature_file
from utils.table import format_table

REJECT_SCORES = ("magnitude", "random")
CURVE_KEYS = ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_precision", "bcubed_recall",
              "bcubed_f", "nmi", "num_clusters")


def run_methods(
    feats: np.ndarray, labels: np.ndarray, methods: list[str], threshold: float, k: int, mutual: bool = False,
    min_samples: int = 3, device: str = "cpu",
) -> tuple[dict[str, dict], float]:
    """Scores (and seconds) of every method on one set of faces; also the k-NN graph's seconds."""
    t0 = time.perf_counter()
    idx, sim = knn_graph(feats, k, device)
    knn_s = time.perf_counter() - t0
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        pred = cluster(m, feats, idx, sim, threshold, mutual, min_samples)
        seconds = time.perf_counter() - t0
        out[m] = {**cluster_scores(labels, pred), "seconds": seconds}
    return out, knn_s


def reject_order(score: str, magnitudes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Faces from lowest to highest quality (stable, so ties keep the file order)."""
    if score == "magnitude":
        return np.argsort(magnitudes, kind="stable")
    if score == "random":
        return np.random.default_rng(seed).permutation(len(magnitudes))
    raise ValueError(f"unknown reject score {score!r}; choose from {REJECT_SCORES}")


def quality_reject(
    feats: np.ndarray, labels: np.ndarray, magnitudes: np.ndarray, fractions: list[float], score: str,
    methods: list[str], threshold: float, k: int, mutual: bool = False, min_samples: int = 3,
    device: str = "cpu", seed: int = 0,
) -> dict:
    """Metrics of every method after leaving out the lowest-quality ``int(r * N)`` faces, per fraction r."""
    order = reject_order(score, magnitudes, seed)
    n = len(order)
    curves: dict[str, dict[str, list]] = {m: {key: [] for key in CURVE_KEYS} for m in methods}
    kept = []
    for r in fractions:
        keep = np.sort(order[int(r * n):])
        if len(keep) < 2:
            raise ValueError(f"--quality-reject {r} leaves {len(keep)} faces; at least 2 are needed")
        kept.append(int(len(keep)))
        res, _ = run_methods(feats[keep], labels[keep], methods, threshold, k, mutual, min_samples, device)
        for m in methods:
            for key in CURVE_KEYS:
                curves[m][key].append(res[m][key])
    return {"score": score, "fractions": [float(r) for r in fractions], "num_faces": kept, "methods": curves}


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--quality-reject: expected comma-separated fractions, got {text!r}") from None
    bad = [v for v in values if not 0 <= v < 1]
    if bad or not values:
        raise ValueError(f"--quality-reject: fractions must lie in [0, 1), got {text!r}")
    return values


def _check(items: Sequence[str], allowed: tuple[str, ...], flag: str) -> list[str]:
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise ValueError(f"{flag}: unknown {unknown} (choose from {allowed})")
    return list(items)


def face_labels(ff: FeatureFile, feat_list: str, label_list: str | None, ijbb_dir: str | None,
                labels_from_dirs: bool, subset: int, ground_truth: str | None) -> tuple[str, np.ndarray]:
    """(where the labels came from, one label per feature row) from the one source given (``run`` checks)."""
    if labels_from_dirs:
        if not ff.has_paths:
            raise ValueError(f"--labels-from-dirs: {feat_list} stores no image paths (.npy)")
        return "folders of the image paths", np.asarray([str(Path(p).parent) for p in ff.paths])
    label_path = label_list or find_ijbb_protocol(ijbb_dir, subset)
    return label_path, read_labels(label_path, len(ff.features), ff.paths if ff.has_paths else None,
                                   str(feat_list), ground_truth)


def run(
    feat_list: str, *, label_list: str | None = None, ijbb_dir: str | None = None, labels_from_dirs: bool = False,
    subset: int = 1845, ground_truth: str | None = None, methods: Sequence[str] = METHODS, threshold: float = 0.5,
    knn: int = 10, mutual: bool = False, min_samples: int = 3, reject_fractions: Sequence[float] | None = None,
    reject_scores: Sequence[str] = ("magnitude",), device: str = "cpu", seed: int = 0,
) -> dict:
    """Cluster the faces of ``feat_list`` with every method and score them against the labels (one source).

    ``reject_fractions`` (--quality-reject): fractions of lowest-quality faces (by each of ``reject_scores``)
    to leave out and cluster again.
    """
    methods = _check(methods, METHODS, "--methods")
    scores = _check(reject_scores, REJECT_SCORES, "--reject-scores")
    if knn < 1:
        raise ValueError(f"--knn must be >= 1, got {knn}")
    if (label_list is not None) + (ijbb_dir is not None) + labels_from_dirs != 1:
        raise ValueError("give exactly one of --label-list, --ijbb-dir and --labels-from-dirs")
    ff = load_feature_file(feat_list)
    label_path, labels = face_labels(ff, feat_list, label_list, ijbb_dir, labels_from_dirs, subset, ground_truth)
    if len(labels) < 2:
        raise ValueError(f"{label_path}: at least 2 faces are needed to cluster")
    common = dict(methods=methods, threshold=threshold, k=knn, mutual=mutual, min_samples=min_samples, device=device)
    results, knn_s = run_methods(ff.features, labels, **common)
    report = {
        "feat_list": str(feat_list), "label_list": str(label_path), "num_faces": int(len(labels)),
        "num_identities": int(len(np.unique(labels))), "threshold": threshold, "knn": knn,
        "mutual": mutual, "min_samples": min_samples, "knn_seconds": knn_s, "methods": results,
    }
    if reject_fractions:
        report["quality_reject"] = [quality_reject(ff.features, labels, ff.magnitudes, list(reject_fractions), s,
                                                   seed=seed, **common) for s in scores]
    return report


def build_parser() -> argparse.ArgumentParser:
    d = keyword_defaults(run)
    p = argparse.ArgumentParser(description="Face clustering: F-scores and NMI against identity labels.")
    p.add_argument("--feat-list", required=True, help="feature file (text, .npz or .npy)")
    p.add_argument("--label-list", default=d["label_list"],
                   help="'path label' per line in the feature file's order, or an IJB-B clustering .csv")
    p.add_argument("--ijbb-dir", default=d["ijbb_dir"], help="IJB-B folder: take ijbb_clustering_<--subset>_*.csv from "
                   "its meta/ (or anywhere below) instead of --label-list")
    p.add_argument("--labels-from-dirs", action="store_true",
                   help="label = the folder of each feature row's image path (LFW / CelebA layout)")
    p.add_argument("--subset", type=int, default=d["subset"], help="IJB-B clustering subset (number of identities)")
    p.add_argument("--ground-truth", default=d["ground_truth"],
                   help="IJB-B TEMPLATE_ID,SUBJECT_ID csv (default: beside it)")
    p.add_argument("--methods", default=",".join(d["methods"]), help=f"comma-separated, from {METHODS}")
    p.add_argument("--threshold", type=float, default=d["threshold"],
                   help="cosine similarity at which faces join (agglomerative: 1 - distance threshold)")
    p.add_argument("-k", "--knn", type=int, default=d["knn"], help="neighbours per face in the k-NN graph")
    p.add_argument("--mutual", action="store_true", help="knn-cc: keep only mutual k-NN edges")
    p.add_argument("--min-samples", type=int, default=d["min_samples"],
                   help="dbscan: faces (itself included) within eps")
    p.add_argument("--quality-reject", default=None, help="fractions of lowest-quality faces to leave out, "
                   "e.g. 0,0.1,0.2,0.3")
    p.add_argument("--reject-scores", default=",".join(d["reject_scores"]),
                   help=f"comma-separated, from {REJECT_SCORES}")
    p.add_argument("--device", default=d["device"], help="where the k-NN graph is computed (cpu, cuda)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of the random reject order")
    p.add_argument("--json", default=None, help="write the report here (atomically)")
    return p


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def format_report(report: dict) -> str:
    header = ["method", "clusters", "pair P", "pair R", "pair F", "BCubed P", "BCubed R", "BCubed F", "NMI", "s"]
    rows = [[m, r["num_clusters"]] + [f"{r[key]:.4f}" for key in CURVE_KEYS[:7]] + [f"{r['seconds']:.1f}"]
            for m, r in report["methods"].items()]
    lines = [f"{report['num_faces']} faces, {report['num_identities']} identities; cosine threshold "
             f"{report['threshold']:g}, k = {report['knn']} (k-NN graph {report['knn_seconds']:.1f} s)",
             format_table(header, rows)]
    for curve in report.get("quality_reject", []):
        methods = list(curve["methods"])
        head = ["left out", "faces"] + [f"{m} {key}" for m in methods for key in ("pair F", "BCubed F", "NMI")]
        body = [[f"{100 * r:.0f}%", curve["num_faces"][i]]
                + [f"{curve['methods'][m][key][i]:.4f}" for m in methods for key in ("pairwise_f", "bcubed_f", "nmi")]
                for i, r in enumerate(curve["fractions"])]
        lines += ["", f"leaving out the lowest-{curve['score']} faces:", format_table(head, body)]
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    fractions = parse_fractions(args.quality_reject) if args.quality_reject else None
    report = run(args.feat_list, label_list=args.label_list, ijbb_dir=args.ijbb_dir,
                 labels_from_dirs=args.labels_from_dirs, subset=args.subset, ground_truth=args.ground_truth,
                 methods=_split(args.methods), threshold=args.threshold, knn=args.knn, mutual=args.mutual,
                 min_samples=args.min_samples, reject_fractions=fractions, reject_scores=_split(args.reject_scores),
                 device=args.device, seed=args.seed)
    print(format_report(report))
    if args.json:
        write_json(args.json, report, nan_as_null=True)
    return 0



def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``); --debug for a traceback."""
    return run_cli(_main, argv, "eval.cluster")


if __name__ == "__main__":
    raise SystemExit(main())
