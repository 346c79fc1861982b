"""Error-versus-reject curves (ERC): how FNMR at a fixed FMR falls as low-quality pairs are dropped.

The seed's rule (``eval_quality.py``), reproduced exactly: pair quality = min of its two images'
qualities; for r in ``np.arange(0, 0.98, 0.05)`` the first ``int(r * N)`` pairs of numpy's default
argsort of the pair qualities are dropped; on the rest d = arccos(clip(cos, -1, 1)) / pi (no mean
subtraction), impostor distances sorted ascending, threshold = impostor distance at index
``(N_imp - 1) // 10**k`` for FMR = 10^-k (the seed's repeated floor division by 10), FNMR = fraction
of genuine pairs with d >= threshold.

Generalised: for an FMR that is not a power of ten the index is ``floor((N_imp - 1) * FMR)``. The seed
walks the decades from FMR = 1 and stops as soon as the index reaches 0, printing nothing for the
FMRs below; we report NaN where it would stop, i.e. when ``(N_imp - 1) * 10 * FMR < 1``, or when no
genuine pair is left. The area under each curve is the trapezoid over the reject ratios (0..0.95).
A pair list with which not even the first row (nothing rejected) is defined is an error; NaN rows
further down are named in a one-line note (``nan_rows`` in the report) saying what was left there.

Quality scores: ``magnitude`` (feature norm), ``random`` (seeded uniform, the no-information
baseline) and ``sharpness`` (variance of the Laplacian of the grayscale image). ``--plot`` draws the curves
(``eval.erc_plot``: titled with ``--model-name`` / ``--data-name``, an undefined area named as such).
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from eval.erc_plot import nan_reason, plot_erc
from eval.metrics import angular_distance, read_pair_list
from utils.atomic import write_json
from utils.cli import keyword_defaults, run_cli
from utils.feature_io import FeatureFile, load_feature_file
from utils.table import format_table

REJECT_RATIOS = np.arange(0, 0.98, 0.05)
SCORES = ("magnitude", "random", "sharpness")


def fmr_index(n_impostor: int, fmr: float) -> int | None:
    """Index of the threshold in the ascending impostor distances; None where the seed reports nothing."""
    if not 0 < fmr < 1:
        raise ValueError(f"FMR must lie in (0, 1), got {fmr}")
    if n_impostor < 1:
        return None
    inv = 1.0 / fmr
    if abs(inv - round(inv)) < 1e-9 * inv:
        step = round(inv)
        index, walk = (n_impostor - 1) // step, (n_impostor - 1) * 10 // step
    else:
        index, walk = math.floor((n_impostor - 1) * fmr), math.floor((n_impostor - 1) * 10 * fmr)
    return index if walk >= 1 else None


def min_impostor_pairs(fmr: float) -> int:
    """Fewest impostor pairs with which the seed's rule gives a threshold at ``fmr`` (fmr_index not None)."""
    n = max(1, math.floor(0.1 / fmr) - 1) if 0 < fmr < 1 else 1  # fmr_index names a bad FMR
    while fmr_index(n, fmr) is None:
        n += 1
    return n


def check_pair_counts(issame: np.ndarray, fmr: float, where: str) -> None:
    """ValueError when no entry of the ERC is defined. The first row rejects nothing and every later row
    keeps a subset of its pairs, so when that row is NaN all are; an all-NaN table would look like a result."""
    n_gen = int(np.count_nonzero(issame))
    n_imp = len(issame) - n_gen
    if n_gen >= 1 and fmr_index(n_imp, fmr) is not None:
        return
    raise ValueError(
        f"{where}: {len(issame)} pairs ({n_gen} genuine, {n_imp} impostor); FNMR at FMR = {fmr:g} needs at "
        f"least 1 genuine and {min_impostor_pairs(fmr)} impostor pairs ((N_imp - 1) * 10 * FMR >= 1), so no "
        "entry of the error-versus-reject curve can be computed: use more pairs or a larger --fmr"
    )


def fnmr_at_fmr(dist: np.ndarray, issame: np.ndarray, fmr: float) -> float:
    """FNMR at the seed's FMR threshold (same when d < threshold)."""
    issame = np.asarray(issame, dtype=bool)
    genuine, impostor = dist[issame], np.sort(dist[~issame])
    index = fmr_index(len(impostor), fmr)
    if index is None or len(genuine) == 0:
        return float("nan")
    threshold = impostor[index]
    return float(np.count_nonzero(genuine >= threshold) / len(genuine))


def error_versus_reject(
    dist: np.ndarray, issame: np.ndarray, pair_quality: np.ndarray, fmr: float = 1e-3,
    reject_ratios: np.ndarray = REJECT_RATIOS,
) -> np.ndarray:
    """FNMR after dropping the lowest-quality ``int(r * N)`` pairs, for each reject ratio r."""
    order = np.argsort(pair_quality)
    n = len(order)
    return np.array([fnmr_at_fmr(dist[order[int(r * n):]], issame[order[int(r * n):]], fmr)
                     for r in reject_ratios])


def nan_rows(issame: np.ndarray, pair_quality: np.ndarray, fnmr: np.ndarray,
             reject_ratios: np.ndarray = REJECT_RATIOS) -> dict | None:
    """Where a curve turns NaN and the pairs left there (rows keep nested subsets: NaN rows are a suffix)."""
    bad = np.flatnonzero(np.isnan(fnmr))
    if not len(bad):
        return None
    r = reject_ratios[bad[0]]
    kept = issame[np.argsort(pair_quality)[int(r * len(issame)):]]
    n_gen = int(np.count_nonzero(kept))
    return {"from_reject_ratio": round(float(r), 10), "genuine_pairs_left": n_gen,
            "impostor_pairs_left": len(kept) - n_gen}


def nan_note(report: dict) -> str | None:
    """One line saying why the report's NaN rows are NaN, None when it has none."""
    parts = [f"{name} from {100 * row['from_reject_ratio']:.0f}% rejected "
             f"({nan_reason(row, report['fmr'], report['min_impostor_pairs'])})"
             for name, row in report.get("nan_rows", {}).items()]
    if not parts:
        return None
    return f"note: nan where too few pairs remain after rejection: {', '.join(parts)}; such a curve's AUC is nan"


def curve_area(fnmr: np.ndarray, reject_ratios: np.ndarray = REJECT_RATIOS) -> float:
    """Trapezoid area under the ERC, reject ratio as a fraction (lower is better)."""
    return float(np.trapezoid(fnmr, reject_ratios))


def laplacian_sharpness(image_bgr: np.ndarray) -> float:
    """Variance of the Laplacian of the grayscale image: low for blurred faces."""
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def find_image_root(paths: list[str], rows: np.ndarray, roots: Sequence[Path]) -> Path:
    """The first of ``roots`` under which the images of every row exist (absolute paths stand alone).

    With a single root it is returned as it is: ``sharpness_scores`` then names the first missing image.
    """
    for root in roots[:-1]:
        if all(os.path.exists(Path(root) / paths[r]) for r in rows):  # an absolute path ignores the root
            return Path(root)
    return Path(roots[-1])


def sharpness_scores(paths: list[str], rows: np.ndarray, image_root: Path) -> np.ndarray:
    """Sharpness of the images at ``rows`` (others NaN); relative paths resolve against ``image_root``."""
    out = np.full(len(paths), np.nan)
    for r in rows:
        p = Path(paths[r])
        p = p if p.is_absolute() else image_root / p
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"image of feature row {r} not found or unreadable: {p} (set "
                                    "--image-root, or leave sharpness out of --scores)")
        out[r] = laplacian_sharpness(img)
    return out


def image_qualities(
    name: str, ff: FeatureFile, rows: np.ndarray, image_roots: Path | Sequence[Path], seed: int = 0
) -> np.ndarray:
    """Per-image quality of one named score (higher = better)."""
    if name == "magnitude":
        return np.asarray(ff.magnitudes, dtype=np.float64)
    if name == "random":
        return np.random.default_rng(seed).random(len(ff.paths))
    if name == "sharpness":
        if not ff.has_paths:
            raise ValueError("sharpness needs image paths; this feature file (.npy) has none")
        roots = [image_roots] if isinstance(image_roots, (str, os.PathLike)) else list(image_roots)
        return sharpness_scores(ff.paths, rows, find_image_root(ff.paths, rows, roots))
    raise ValueError(f"unknown quality score {name!r}; choose from {SCORES}")


def evaluate_quality(
    ff: FeatureFile, i0: np.ndarray, i1: np.ndarray, issame: np.ndarray, scores: list[str], fmr: float,
    image_roots: Sequence[Path] = (Path("."),), seed: int = 0, optional: frozenset[str] = frozenset(),
) -> dict:
    """The ERC report of every requested quality score on one pair list.

    Image paths resolve against the first of ``image_roots`` that holds them all. A score in ``optional``
    that cannot be computed (images not found, no paths) is left out with its reason in ``left_out``.
    """
    feats = np.asarray(ff.features, dtype=np.float64)
    dist = angular_distance(feats[i0], feats[i1])
    rows = np.unique(np.concatenate([i0, i1]))
    curves, areas, left_out, missing = {}, {}, {}, {}
    for name in scores:
        try:
            q = image_qualities(name, ff, rows, image_roots, seed)
        except (ValueError, FileNotFoundError) as e:
            if name not in optional:
                raise
            left_out[name] = str(e)
            continue
        pair_quality = np.minimum(q[i0], q[i1])
        curves[name] = error_versus_reject(dist, issame, pair_quality, fmr)
        areas[name] = curve_area(curves[name])
        where_nan = nan_rows(issame, pair_quality, curves[name])
        if where_nan:
            missing[name] = where_nan
    return {
        "reject_ratio": [round(float(r), 10) for r in REJECT_RATIOS],
        "fnmr": {k: v.tolist() for k, v in curves.items()},
        "auc": areas, "fmr": fmr, "num_pairs": int(len(issame)), "left_out": left_out,
        "nan_rows": missing, "min_impostor_pairs": min_impostor_pairs(fmr),
        "variant": "predefined pairs, min pair quality, FNMR at FMR from the remaining impostors, "
                   "AUC = trapezoid over reject ratio 0..0.95",
    }


def run(feat_list: str, pair_list: str, *, fmr: float = 1e-3, scores: Sequence[str] | None = None,
        image_root: str | None = None, seed: int = 0) -> dict:
    """The ERC report of a feature file and its pair list.

    ``scores`` None means all of SCORES, sharpness then optional (left out, with the reason, when the images
    cannot be found). Without ``image_root`` the images are looked for beside the feature file, beside the
    pair list, then in the current folder.
    """
    names = list(scores) if scores is not None else list(SCORES)
    unknown = [s for s in names if s not in SCORES]
    if unknown or not names:
        raise ValueError(f"--scores: unknown {unknown} (choose from {SCORES})")
    ff = load_feature_file(feat_list, dtype=np.float64)
    i0, i1, issame = read_pair_list(pair_list, len(ff.features))
    check_pair_counts(issame, fmr, f"pair list {pair_list} (features {feat_list})")
    if image_root:
        roots = [Path(image_root)]
    else:
        roots = [Path(feat_list).resolve().parent, Path(pair_list).resolve().parent, Path.cwd()]
    optional = frozenset() if scores is not None else frozenset({"sharpness"})
    return evaluate_quality(ff, i0, i1, issame, names, fmr, roots, seed, optional)


def build_parser() -> argparse.ArgumentParser:
    d = keyword_defaults(run)
    p = argparse.ArgumentParser(description="Error-versus-reject curves of quality scores.")
    p.add_argument("--feat-list", required=True, help="feature file (text, .npz or .npy)")
    p.add_argument("--pair-list", required=True, help="pairs 'i j label' (0-based feature rows)")
    p.add_argument("--fmr", type=float, default=d["fmr"], help="false match rate at which FNMR is reported")
    p.add_argument("--scores", default=d["scores"],
                   help=f"comma-separated, from {SCORES} (default: all three; sharpness is then left out, with one "
                   "line saying why, when the images cannot be found, as for the seed's features-and-pairs call)")
    p.add_argument("--image-root", default=d["image_root"],
                   help="base of relative image paths (default: the first of the feature file's folder, the pair "
                   "list's folder and the current folder that holds them all)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of the random score")
    p.add_argument("--plot", default=None, help="PNG of the curves")
    p.add_argument("--model-name", default=None,
                   help="the model, for the plot's title (default: the feature file, all that is known of it)")
    p.add_argument("--data-name", default=None, help="the data, for the plot's title (default: the pair list)")
    p.add_argument("--json", default=None, help="write the curves here (atomically)")
    return p


def publish(report: dict, json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
            *, model: str = "the model of the features", data: str = "the pair list") -> None:
    """What the command shows and writes for a report: the table on stdout, then the plot (titled with
    ``model`` and ``data``, ``eval.erc_plot``) and the JSON."""
    for name, why in report["left_out"].items():
        print(f"{name} left out: {why}")
    header = ["reject"] + list(report["fnmr"])
    rows = [[f"{100 * r:.0f}%"] + [f"{report['fnmr'][k][i]:.4f}" for k in report["fnmr"]]
            for i, r in enumerate(report["reject_ratio"])]
    rows.append(["AUC"] + [f"{report['auc'][k]:.5f}" for k in report["fnmr"]])
    print(f"FNMR at FMR = {report['fmr']:g} ({report['num_pairs']} pairs)")
    print(format_table(header, rows))
    note = nan_note(report)
    if note:
        print(note)
    if plot_path:
        plot_erc(plot_path, report, model=model, data=data)
    if json_path:
        write_json(json_path, report, nan_as_null=True)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    scores = [s.strip() for s in args.scores.split(",") if s.strip()] if args.scores else None
    report = run(args.feat_list, args.pair_list, fmr=args.fmr, scores=scores, image_root=args.image_root,
                 seed=args.seed)
    publish(report, args.json, args.plot, model=args.model_name or f"features {args.feat_list}",
            data=args.data_name or f"pairs {args.pair_list}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``)."""
    return run_cli(_main, argv, "eval.quality")


if __name__ == "__main__":
    raise SystemExit(main())
