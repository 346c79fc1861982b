"""Quality benchmark with known damage: does a quality score (e.g. the MagFace magnitude) fall as damage grows?

    python -m eval.damage make --out work/lfw_damaged          # LFW View 2 from ../shared/data/lfw112
    python -m inference.gen_feat --resume CKPT --inf_list work/lfw_damaged/img.list --feat_list work/f.npz
    python -m eval.damage score --set work/lfw_damaged --feat-list work/f.npz --json r.json --plot r.png

``make`` writes a damaged copy of a pair list (see eval/damage_set.py: the second face of every pair
degraded by faces/degrade.py at a seeded severity, a severity table ``damage.csv``, ``img.list`` and
``pair.list``). ``score`` reads features of that img.list (any utils/feature_io.py format) and reports, for
the magnitude, a seeded random score, the Laplacian sharpness and any ``--score-file`` (lines ``path
score``, higher = better): Spearman's rho against severity, medians by severity band and ERC at each FMR
(eval/damage_report.py documents the JSON keys). Bad input: one line naming the file and line, exit 2,
nothing written.

Library use (typed values, no argv): ``make_damaged_set``, ``read_damage_table`` (eval.damage_set),
``load_scores``, ``quality_report``, ``read_score_file`` (eval.damage_report) and ``plot_report``.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval.damage_report import BAND_EDGES, BANDS, DEFAULT_FMRS, band_of, quality_report, read_score_file
from eval.damage_set import DamageTable, make_damaged_set, read_damage_table
from eval.erc_plot import (
    add_caption,
    area_label,
    nan_reason,
    random_caption,
    score_label,
    title_text,
    undefined_text,
)
from eval.metrics import read_pair_list
from eval.quality import REJECT_RATIOS, SCORES, image_qualities, min_impostor_pairs
from utils.atomic import save_png, write_json
from utils.cli import keyword_defaults, run_cli
from utils.feature_io import FeatureFile, load_feature_file
from utils.table import format_table
from utils.text_lines import line_of_row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["make_damaged_set", "read_damage_table", "load_scores", "quality_report", "read_score_file",
           "plot_report", "score_set", "main"]


def _check_rows(ff: FeatureFile, feat_list: Path, table: DamageTable, table_path: Path) -> None:
    if len(ff.features) != len(table.paths):
        raise ValueError(f"{feat_list} has {len(ff.features)} feature rows but {table_path} has "
                         f"{len(table.paths)} rows: features of another img.list?")
    if not ff.has_paths:
        return
    for r, (a, b) in enumerate(zip(ff.paths, table.paths, strict=True)):
        if os.path.normpath(a) != os.path.normpath(b):
            where = feat_list if feat_list.suffix in (".npz", ".npy") else f"{feat_list}:{line_of_row(feat_list, r)}"
            raise ValueError(f"{where}: row {r} is {a} but {table_path} row {r} is {b}")


def load_scores(ff: FeatureFile, table: DamageTable, set_dir: Path, names: Sequence[str], seed: int = 0,
                score_files: Sequence[str | os.PathLike] = ()) -> dict[str, np.ndarray]:
    """Per-row scores: each of ``names`` (eval.quality.SCORES), then one per score file (named by its stem)."""
    named = FeatureFile(list(table.paths), ff.features, ff.magnitudes, True)  # sharpness reads the set's images
    rows = np.arange(len(table.paths))
    scores = {name: image_qualities(name, named, rows, set_dir, seed) for name in names}
    for f in score_files:
        name = base = Path(f).stem
        k = 2
        while name in scores:
            name, k = f"{base}_{k}", k + 1
        scores[name] = read_score_file(f, table.paths, set_dir)
    return scores


def score_set(set_dir: str | os.PathLike, feat_list: str | os.PathLike, names: Sequence[str] = SCORES,
              score_files: Sequence[str | os.PathLike] = (), fmrs: Sequence[float] = DEFAULT_FMRS,
              seed: int = 0) -> tuple[dict, dict[str, np.ndarray], DamageTable]:
    """Read a damaged set and its features; (report, per-row scores, table)."""
    set_dir, feat_list = Path(set_dir), Path(feat_list)
    table_path = set_dir / "damage.csv"
    table = read_damage_table(table_path)
    i0, i1, issame = read_pair_list(set_dir / "pair.list", len(table.paths))
    ff = load_feature_file(feat_list, dtype=np.float64)
    _check_rows(ff, feat_list, table, table_path)
    scores = load_scores(ff, table, set_dir, names, seed, score_files)
    return quality_report(ff.features, table, i0, i1, issame, scores, fmrs), scores, table


def plot_report(path: str | os.PathLike, report: dict, scores: dict[str, np.ndarray], table: DamageTable, *,
                model: str = "the model of the features", data: str = "the damaged set") -> Figure:
    """PNG (atomic): one ERC panel per FMR, and each score's median percentile rank by severity band; titled with
    ``model`` and ``data``, an undefined area named as such (``eval.erc_plot``). The figure is returned."""
    from matplotlib.figure import Figure
    from scipy.stats import rankdata

    fmr_keys = list(report["erc"])
    fig = Figure(figsize=(5 * (len(fmr_keys) + 1), 5), layout="constrained")
    axes = fig.subplots(1, len(fmr_keys) + 1)
    for ax, key in zip(axes, fmr_keys, strict=False):
        fmr, curves = float(key), report["erc"][key]
        for name, curve in curves.items():
            label = area_label(name, curve["area"], curve.get("nan_rows"), min_impostor_pairs(fmr))
            ax.plot(100 * REJECT_RATIOS, np.array(curve["fnmr"], dtype=float), marker="o", markersize=3, label=label)
        empty = undefined_text([c.get("nan_rows") for c in curves.values()], fmr, min_impostor_pairs(fmr))
        if empty:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", fontsize=8)
            ax.set_ylim(0, 1)
        ax.set(xlabel="rejected pairs [%]", ylabel="FNMR", title=f"ERC, FMR = {fmr:g}", xlim=(-5, 100))
        ax.grid(linestyle="--", linewidth=0.5)
        ax.legend(fontsize=7)
    bands = band_of(table.severity)
    centres = [0.0] + [(lo + hi) / 2 for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:], strict=True)]
    ax = axes[-1]
    for name, s in scores.items():
        pct = 100 * (rankdata(s) - 0.5) / len(s)
        ax.plot(centres, [np.median(pct[bands == b]) if np.any(bands == b) else np.nan for b in range(len(BANDS))],
                marker="o", label=score_label(name))
    ax.set(xlabel="severity (band centre; 0 = clean)", ylabel="median score percentile",
           title="score vs known damage")
    ax.grid(linestyle="--", linewidth=0.5)
    ax.legend(fontsize=7)
    fig.suptitle(title_text(model, f"{data} ({report['num_pairs']} pairs, {report['num_damaged']} damaged faces)"),
                 fontsize=9)
    if "random" in scores:
        add_caption(fig, random_caption(report["num_pairs"], REJECT_RATIOS))
    save_png(fig, path, dpi=110)
    return fig


def undefined_areas(report: dict) -> str | None:
    """One line naming the ERC areas that are undefined and why, None when all are defined."""
    parts = []
    for key, curves in report["erc"].items():
        fmr = float(key)
        for name, curve in curves.items():
            row = curve.get("nan_rows")
            if curve["area"] is not None and np.isfinite(curve["area"]):
                continue
            why = "" if not row else (f" from {100 * row['from_reject_ratio']:.0f}% rejected "
                                      f"({nan_reason(row, fmr, min_impostor_pairs(fmr))})")
            parts.append(f"{name} at FMR {fmr:g}{why}")
    return f"note: area n/a where too few pairs remain after rejection: {', '.join(parts)}" if parts else None


def _fmt(x: float) -> str:
    return "nan" if x is None or np.isnan(x) else f"{x:.3f}"


def _area(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


def print_report(report: dict) -> None:
    kinds, fmr_keys = report["kinds"], list(report["erc"])
    header = ["score", "rho all"] + [f"rho {k}" for k in kinds] + [f"ERC area {k}" for k in fmr_keys]
    rows = [[name, _fmt(rho["overall"])] + [_fmt(rho.get(k, np.nan)) for k in kinds]
            + [_area(report["erc"][k][name]["area"]) for k in fmr_keys]
            for name, rho in report["spearman"].items()]
    print(f"{report['num_pairs']} pairs, {report['num_damaged']} damaged faces; Spearman rho of score vs severity "
          "(-1 = score falls as damage grows)")
    print(format_table(header, rows))
    note = undefined_areas(report)
    if note:
        print(note)
    counts = report["band_counts"]
    print("median score by severity band")
    print(format_table(["score"] + [f"{b} n={counts[b]}" for b in BANDS],
                       [[name] + [f"{m:.4g}" for m in med.values()] for name, med in report["median_by_band"].items()]))


def build_parser() -> argparse.ArgumentParser:
    made, scored = keyword_defaults(make_damaged_set), keyword_defaults(score_set)
    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("MAGFACE_SHARED_DATA", repo.parent / "shared" / "data")) / "lfw112"
    lfw = shared if (shared / "img.list").is_file() else repo / "raw" / "demo_data" / "lfw"  # users: the demo's
    p = argparse.ArgumentParser(prog="python -m eval.damage", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, help="make a damaged set, or score features of one")
    m = sub.add_parser("make", help="write a damaged copy of a pair list")
    m.add_argument("--img-list", default=str(lfw / "img.list"),
                   help="image list (default: all LFW View 2 pairs where the shared data is, else the demo's 2,400)")
    m.add_argument("--pair-list", default=str(lfw / "pair.list"), help="'i j label' rows of --img-list")
    m.add_argument("--out", required=True, help="output folder (written atomically)")
    m.add_argument("--kinds", default=",".join(made["kinds"]), help="comma-separated damage kinds")
    m.add_argument("--seed", type=int, default=made["seed"], help="seed of the damage parameters")
    m.add_argument("--force", action="store_true", help="replace a different existing set")
    s = sub.add_parser("score", aliases=["eval"], help="correlate quality scores with the known damage")
    s.add_argument("--set", required=True, help="folder written by 'make'")
    s.add_argument("--feat-list", required=True, help="features of SET/img.list (text, .npz or .npy)")
    s.add_argument("--scores", default=",".join(scored["names"]), help=f"comma-separated, from {', '.join(SCORES)}")
    s.add_argument("--score-file", action="append", default=[], help="'path score' lines (repeatable)")
    s.add_argument("--fmr", default=",".join(f"{f:g}" for f in scored["fmrs"]), help="comma-separated FMRs")
    s.add_argument("--seed", type=int, default=scored["seed"], help="seed of the random score")
    s.add_argument("--json", default=None, help="write the report here (atomically)")
    s.add_argument("--plot", default=None, help="PNG: ERC per FMR and score vs severity")
    s.add_argument("--model-name", default=None, help="the model, for the plot's title (default: the feature file)")
    return p


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{what} is empty")
    return items


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make":
        out = make_damaged_set(args.img_list, args.pair_list, args.out, _split(args.kinds, "--kinds"),
                               args.seed, args.force)
        print(f"damaged set in {out}")
        return 0
    names = _split(args.scores, "--scores")
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise ValueError(f"--scores: unknown {unknown} (choose from {', '.join(SCORES)})")
    try:
        fmrs = [float(f) for f in _split(args.fmr, "--fmr")]
    except ValueError:
        raise ValueError(f"--fmr: not a list of numbers: {args.fmr!r}") from None
    report, scores, table = score_set(args.set, args.feat_list, names, args.score_file, fmrs, args.seed)
    print_report(report)
    if args.plot:
        plot_report(args.plot, report, scores, table, model=args.model_name or f"features {args.feat_list}",
                    data=f"damaged set {args.set}")
    if args.json:
        write_json(args.json, report, nan_as_null=True)
    return 0



def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``); --debug for a traceback."""
    return run_cli(_main, argv, "eval.damage")


if __name__ == "__main__":
    raise SystemExit(main())
