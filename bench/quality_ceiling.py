"""How far can a recognizer's own quality score go on the damaged benchmark? (issue #22)

    python -m bench.quality_ceiling --runs /tmp/ft_runs [--names pretrained,ftwide] [--seeds 0,1,2]

For each scored run of ``bench.quality_study --seeds`` (RUNS/NAME_sS/score/{clean,dmg}.npz and the damaged set
RUNS/damaged_lfw_sS), over the damaged faces, Spearman's rho against severity of

- ``magnitude``: the model's magnitude (what the study reports);
- ``ratio``: the magnitude divided by that of the face's own undamaged original (the magnitude with the
  spread between different clean faces taken out);
- ``cos``: the cosine between the damaged face's embedding and its original's (how far the damage moved the
  face for this recognizer: the best a score that tracks recognisability could follow);

overall and per kind. The gap between ``magnitude`` and ``ratio`` is what the spread of clean magnitudes
costs; ``cos`` bounds what a recognisability-driven score (MagFace's premise) reaches on this benchmark.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.quality_study import DATA, damage_sources
from eval.damage_set import read_damage_table
from faces.face_list import read_image_list
from utils.feature_io import load_feature_file
from utils.table import format_markdown


def ceiling(damaged_set: Path, clean_npz: Path, dmg_npz: Path) -> dict[str, dict[str, float]]:
    """{measure: {overall, kind...}} Spearman rho against severity over the damaged rows."""
    table = read_damage_table(damaged_set / "damage.csv")
    sources = damage_sources(damaged_set)
    clean = load_feature_file(clean_npz).features.astype(np.float64)
    index = {p: i for i, p in enumerate(read_image_list(DATA / "lfw" / "img.list")[1])}
    dmg = load_feature_file(dmg_npz).features.astype(np.float64)
    rows = np.flatnonzero(table.damaged)
    f, g = dmg[rows], clean[[index[sources[r]] for r in rows]]
    nf, ng = np.linalg.norm(f, axis=1), np.linalg.norm(g, axis=1)
    measures = {"magnitude": nf, "ratio": nf / ng, "cos": (f * g).sum(1) / (nf * ng)}
    sev, kinds = table.severity[rows], table.kind[rows]
    out = {}
    for name, values in measures.items():
        out[name] = {"overall": float(spearmanr(sev, values)[0])}
        out[name] |= {str(k): float(spearmanr(sev[kinds == k], values[kinds == k])[0]) for k in sorted(set(kinds))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the --runs folder of bench.quality_study --seeds")
    p.add_argument("--names", default="pretrained,ftpub,ftseed,ftwide")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    runs, cells = Path(args.runs), []
    for name in args.names.split(","):
        per_seed = []
        for seed in (int(s) for s in args.seeds.split(",")):
            work = runs / f"{name}_s{seed}" / "score"
            if (work / "dmg.npz").exists():
                per_seed.append(ceiling(runs / f"damaged_lfw_s{seed}", work / "clean.npz", work / "dmg.npz"))
        if not per_seed:
            continue
        row = [name, str(len(per_seed))]
        for measure in ("magnitude", "ratio", "cos"):
            row.append(f"{np.mean([c[measure]['overall'] for c in per_seed]):+.3f}")
        kinds = [k for k in per_seed[0]["cos"] if k != "overall"]
        row.append(", ".join(f"{k} {np.mean([c['ratio'][k] for c in per_seed]):+.2f}" for k in kinds))
        row.append(", ".join(f"{k} {np.mean([c['cos'][k] for c in per_seed]):+.2f}" for k in kinds))
        cells.append(row)
    print(format_markdown(("config", "seeds", "rho magnitude", "rho ratio to own original",
                           "rho cos to own original", "ratio per kind", "cos per kind"), cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
