"""1:1 verification accuracy (LFW, CFP-FP, AgeDB-30, ...) under two named protocols.

- ``magface`` (the seed's ``eval_1v1.py``): 10 contiguous folds of the pair list; per fold the mean
  embedding of the nine training folds (both sides of every pair) is subtracted, d =
  arccos(clip(cos, -1, 1)) / pi, the first of the thresholds 0, 0.01, ... 3.99 with the best training
  accuracy (a pair is "same" when d < t) is applied to the held-out fold; mean and std (ddof 0).
- ``insightface``: d = squared L2 distance of the L2-normalised embeddings, otherwise the same folds,
  thresholds and rule. Flip fusion belongs upstream (``embed_array(flip=True)``).

Also reported over all pairs, from raw cosine similarity: ROC AUC and TAR at FAR 1e-3 / 1e-4, the
latter as the highest TPR among ROC points with FPR <= FAR (never interpolated).

CLI: ``--feat-list F --pair-list P`` (pairs ``i j label``, 0-based rows of F) or ``--bin X.bin
--resume CKPT`` (the model embeds the decoded images). Text features are parsed as float64, as the seed does.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize

from eval.bin_io import read_bin
from eval.metrics import (
    angular_distance,
    cosine_rows,
    read_pair_list,
    tar_at_far_bounded,
)
from utils.atomic import write_json
from utils.cli import keyword_defaults, run_cli
from utils.feature_io import load_feature_file
from utils.table import format_table

PROTOCOLS = ("magface", "insightface")
THRESHOLDS = np.arange(0, 4, 0.01)
FARS = (1e-3, 1e-4)


@dataclass(frozen=True)
class FoldResult:
    accuracies: np.ndarray
    thresholds: np.ndarray


def kfold_splits(n: int, n_folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous folds in order, the first ``n % n_folds`` one longer (sklearn's unshuffled KFold)."""
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot be split into {n_folds} folds")
    idx = np.arange(n)
    tests = np.array_split(idx, n_folds)
    return [(np.setdiff1d(idx, t, assume_unique=True), t) for t in tests]


def accuracy_per_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of the rule ``same iff d < t`` for every t, by counting on sorted distances."""
    issame = np.asarray(issame, dtype=bool)
    gen, imp = np.sort(dist[issame]), np.sort(dist[~issame])
    tp = np.searchsorted(gen, thresholds, side="left")
    tn = len(imp) - np.searchsorted(imp, thresholds, side="left")
    return (tp + tn) / float(len(dist))


def magface_distances(emb0: np.ndarray, emb1: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Angular distance of all pairs after subtracting the training folds' mean embedding."""
    mean = np.mean(np.concatenate([emb0[train], emb1[train]]), axis=0)
    return angular_distance(emb0 - mean, emb1 - mean)


def insightface_distances(emb0: np.ndarray, emb1: np.ndarray) -> np.ndarray:
    """Squared L2 distance of the L2-normalised embeddings (0..4)."""
    return np.sum(np.square(normalize(emb0) - normalize(emb1)), axis=1)


def kfold_accuracy(
    emb0: np.ndarray,
    emb1: np.ndarray,
    issame: np.ndarray,
    protocol: str = "magface",
    n_folds: int = 10,
    thresholds: np.ndarray = THRESHOLDS,
) -> FoldResult:
    """Per-fold held-out accuracy and the threshold chosen on the other folds."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if emb0.shape != emb1.shape or emb0.ndim != 2 or len(issame) != len(emb0):
        raise ValueError(f"embeddings {emb0.shape} / {emb1.shape} and {len(issame)} labels do not match")
    issame = np.asarray(issame, dtype=bool)
    fixed = insightface_distances(emb0, emb1) if protocol == "insightface" else None
    accs, chosen = [], []
    for train, test in kfold_splits(len(issame), n_folds):
        dist = fixed if fixed is not None else magface_distances(emb0, emb1, train)
        best = int(np.argmax(accuracy_per_threshold(dist[train], issame[train], thresholds)))
        t = thresholds[best]
        accs.append(accuracy_per_threshold(dist[test], issame[test], np.array([t]))[0])
        chosen.append(t)
    return FoldResult(np.array(accs), np.array(chosen))


def evaluate_pairs(
    emb0: np.ndarray, emb1: np.ndarray, issame: np.ndarray, protocol: str = "magface", n_folds: int = 10
) -> dict:
    """The report of one verification set: fold accuracy, threshold, AUC and TAR at FAR."""
    emb0, emb1 = np.asarray(emb0, dtype=np.float64), np.asarray(emb1, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    folds = kfold_accuracy(emb0, emb1, issame, protocol, n_folds)
    cos = cosine_rows(emb0, emb1)
    auc = float(roc_auc_score(issame, cos)) if 0 < issame.sum() < len(issame) else float("nan")
    return {
        "protocol": protocol,
        "accuracy_mean": float(np.mean(folds.accuracies)),
        "accuracy_std": float(np.std(folds.accuracies)),
        "threshold": float(np.mean(folds.thresholds)),
        "fold_accuracies": folds.accuracies.tolist(),
        "fold_thresholds": folds.thresholds.tolist(),
        "auc": auc,
        "tar_at_far": tar_at_far_bounded(issame, cos, FARS),
        "tar_rule": "highest TPR with FPR <= FAR, cosine scores over all pairs",
        "num_pairs": int(len(issame)),
    }


def embed_bin(
    bin_path: str, resume: str, arch: str | None, batch_size: int, device: str, flip: bool,
    convention: str | None, dtype: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Decode a ``.bin``, embed it with the checkpoint -> (emb0, emb1, issame, precision: what ran and why).

    ``device`` "auto" takes the GPU when there is one; ``dtype`` auto (``utils.cpu_info.choose_precision``:
    bf16 where it is native, else fp32), fp32, bf16 or fp16.
    """
    # torch and the model code load only for --bin: scoring a feature file needs neither
    from inference.extract import embed_array
    from models.checkpoint import load_backbone
    from utils.convention import parse_convention
    from utils.cpu_info import choose_precision
    from utils.dist import resolve_device
    from utils.precision import DTYPES

    images, issame = read_bin(bin_path)
    conv = parse_convention(convention) if convention else None
    dev = resolve_device(device)
    choice = choose_precision(dtype, dev.type)  # before the model loads: fp16 on a CPU fails fast
    choice.announce(sys.stderr)  # stdout holds the report, as the seed's
    model, conv, _ = load_backbone(resume, arch=arch, map_location=dev, convention=conv)
    print(f"{Path(bin_path).name}: embedding {len(images)} images on {dev} ({choice.dtype}"
          f"{', with mirrors' if flip else ''})", file=sys.stderr, flush=True)
    feats = embed_array(model, images, batch_size=batch_size, device=dev, convention=conv, flip=flip,
                        dtype=DTYPES[choice.dtype], progress=Path(bin_path).name)
    return feats[0::2], feats[1::2], issame, choice.to_dict()


def features_pairs(
    feat_list: str, pair_list: str, embedding_size: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature file + pair list -> (emb0, emb1, issame), float64 as the seed parses them."""
    ff = load_feature_file(feat_list, dtype=np.float64)
    dim = ff.features.shape[1]
    if embedding_size is not None and dim != embedding_size:
        raise ValueError(f"{feat_list}: features have {dim} dimensions, expected {embedding_size}")
    i0, i1, issame = read_pair_list(pair_list, len(ff.features))
    return ff.features[i0], ff.features[i1], issame


def run(
    *, feat_list: str | None = None, pair_list: str | None = None, bin_path: str | None = None,
    resume: str | None = None, arch: str | None = None, batch_size: int = 128, device: str = "auto",
    dtype: str = "auto", flip: bool = False, input_convention: str | None = None, embedding_size: int | None = None,
    protocol: str = "magface", folds: int = 10,
) -> dict:
    """The report of a feature file with its pair list, or of a ``.bin`` set embedded by ``resume``.

    The embedding options (``arch`` .. ``input_convention``) apply to ``bin_path`` only.
    """
    if bin_path:
        if not resume:
            raise ValueError("--bin needs --resume CKPT")
        emb0, emb1, issame, precision = embed_bin(bin_path, resume, arch, batch_size, device, flip,
                                                  input_convention, dtype)
        name = Path(bin_path).stem
    else:
        if not pair_list:
            raise ValueError("--feat-list needs --pair-list")
        emb0, emb1, issame = features_pairs(feat_list, pair_list, embedding_size)
        name, precision = Path(feat_list).name, None
    if embedding_size is not None and emb0.shape[1] != embedding_size:
        raise ValueError(f"embeddings have {emb0.shape[1]} dimensions, expected {embedding_size}")
    report = evaluate_pairs(emb0, emb1, issame, protocol, folds)
    report["set"] = name
    if precision is not None:
        report["precision"] = precision
    return report


def build_parser() -> argparse.ArgumentParser:
    d = keyword_defaults(run)
    p = argparse.ArgumentParser(description="1:1 verification accuracy (k-fold) of features or a .bin set.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--feat-list", help="feature file (text, .npz or .npy)")
    src.add_argument("--bin", help="insightface verification set (.bin); needs --resume")
    p.add_argument("--pair-list", help="pairs 'i j label' (0-based feature rows), with --feat-list")
    p.add_argument("--resume", help="checkpoint to embed the --bin images with")
    p.add_argument("--arch", default=d["arch"], help="backbone name when the checkpoint does not say")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="with --bin: faces per forward pass")
    p.add_argument("--device", default=d["device"], help="with --bin: auto (the GPU when there is one), cpu, cuda[:N]")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default=d["dtype"],
                   help="with --bin: precision of the embedding pass; auto: bf16 on a GPU and on CPUs with native "
                   "bf16 (AVX512-BF16/AMX, ~2x faster), else fp32 (utils.cpu_info); in the report as 'precision'")
    p.add_argument("--flip", action="store_true", help="add the embedding of the mirrored image")
    p.add_argument("--input-convention", default=d["input_convention"], help="override the checkpoint's convention")
    p.add_argument("--embedding-size", type=int, default=d["embedding_size"], help="expected feature dimension")
    p.add_argument("--protocol", choices=PROTOCOLS, default=d["protocol"],
                   help="magface: arccos distance, mean subtraction per fold (the seed's eval_1v1.py); insightface: "
                   "squared L2 of normalised embeddings")
    p.add_argument("--folds", type=int, default=d["folds"], help="cross-validation folds of the pair list")
    p.add_argument("--json", default=None, help="write the metrics here (atomically)")
    return p


def print_report(report: dict) -> None:
    tars = report["tar_at_far"]
    header = ["set", "protocol", "pairs", "accuracy", "threshold", "AUC"] + [f"TAR@{k}" for k in tars]
    row = [report["set"], report["protocol"], report["num_pairs"],
           f"{report['accuracy_mean']:.5f}+-{report['accuracy_std']:.5f}", f"{report['threshold']:.4f}",
           f"{report['auc']:.5f}"] + [f"{v:.5f}" for v in tars.values()]
    print(format_table(header, [row]))
    print(f"    Accuracy: {report['accuracy_mean']:2.5f}+-{report['accuracy_std']:2.5f}")  # the seed's eval_1v1 line


def publish(report: dict, json_path: str | os.PathLike | None = None) -> None:
    """What the command shows and writes for a report: the table on stdout, then the JSON."""
    print_report(report)
    if json_path:
        write_json(json_path, report, nan_as_null=True)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    report = run(feat_list=args.feat_list, pair_list=args.pair_list, bin_path=args.bin, resume=args.resume,
                 arch=args.arch, batch_size=args.batch_size, device=args.device, dtype=args.dtype, flip=args.flip,
                 input_convention=args.input_convention, embedding_size=args.embedding_size,
                 protocol=args.protocol, folds=args.folds)
    publish(report, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``)."""
    return run_cli(_main, argv, "eval.verification")


if __name__ == "__main__":
    raise SystemExit(main())
