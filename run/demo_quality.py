"""The demo's quality half: is the magnitude a quality score? Known damage, three models, three pictures.

``quality_stage`` damages the second face of every held-out demo pair (``eval.damage_set``: blur,
down-scaling, JPEG, under- and over-exposure, noise, occlusion, each at a seeded severity in [0, 1)),
embeds that set with each candidate checkpoint (the model the demo trained from scratch, the one it
fine-tuned from the pretrained MobileFaceNet, and the shipped quality model in ``raw/quality``), scores
magnitude, random order and sharpness against the known severity (``eval.damage.score_set``) and keeps
the candidate whose magnitude falls most with damage (lowest Spearman rho over the damaged faces). With
that one it draws

- ``damage_ladder.png``: one face per damage kind at rising severity, each captioned with its magnitude;
  this picture and the next name that model (role, backbone, checkpoint) and the data in their titles;
- ``damage_erc.png``: the error-versus-reject curves on the damaged pairs and the median score by band;
- ``faces_by_magnitude.png``: faces of the damaged set (clean and damaged) at evenly spaced magnitude
  quantiles, lowest first.

Every candidate's numbers are returned (and written to ``quality_<name>.json``), not only the winner's.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LADDER_SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def shown(path: Path) -> str:
    """``path`` as a picture's title shows it: relative to the current folder when under it (no /tmp/... or home
    folders in the pictures the repository ships)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def embed_list(ckpt: Path, img_list: Path, feats: Path, device: str) -> Path:
    """Features of every face of ``img_list`` by ``ckpt`` (gen_feat's code path), written to ``feats``."""
    from inference import gen_feat

    gen_feat.extract(str(ckpt), str(img_list), str(feats),
                     gen_feat.FeatOptions(device=device, dtype="fp32", print_freq=100000))
    return feats


def score_candidate(name: str, ckpt: Path, set_dir: Path, out: Path, device: str) -> dict:
    """The damaged-set report of one checkpoint, condensed: Spearman per kind, ERC areas, band medians."""
    from eval.damage import score_set
    from utils.atomic import write_json

    feats = embed_list(ckpt, set_dir / "img.list", out / f"damaged_{name}.npz", device)
    report, scores, table = score_set(set_dir, feats)
    result = {
        "name": name, "checkpoint": str(ckpt), "features": str(feats),
        "spearman": report["spearman"]["magnitude"],
        "erc_auc": {fmr: {score: curve["area"] for score, curve in curves.items()}
                    for fmr, curves in report["erc"].items()},
        "median_magnitude_by_band": report["median_by_band"]["magnitude"],
    }
    write_json(out / f"quality_{name}.json", result, nan_as_null=True)
    return {**result, "_report": report, "_scores": scores, "_table": table}


def ladder_faces(set_dir: Path, kinds: tuple[str, ...]) -> list[tuple[str, Path]]:
    """One clean source face per kind (the first pair damaged by that kind), for the ladder picture."""
    from eval.damage_set import read_damage_table

    table = read_damage_table(set_dir / "damage.csv")
    picks = []
    for kind in kinds:
        rows = np.flatnonzero(table.kind == kind)
        if len(rows):
            picks.append((kind, set_dir / table.paths[rows[0] - 1]))  # the clean first face of that pair
    return picks


def damage_ladder(ckpt: Path, faces: list[tuple[str, Path]], path: Path, device: str,
                  severities: tuple[float, ...] = LADDER_SEVERITIES, *, model: str | None = None,
                  data: str = "clean faces of the damaged demo LFW pairs") -> dict[str, list[float]]:
    """PNG of each (kind, face) at rising severity, captioned with magnitudes; returns the magnitudes.
    The title names ``model`` (default: the checkpoint's arch and file) and ``data``."""
    from faces.degrade import degrade
    from inference.extract import embed_array
    from models.checkpoint import load_backbone
    from utils.convention import read_aligned_face

    net, conv, info = load_backbone(ckpt)
    images, mags = [], {}
    for r, (kind, face_path) in enumerate(faces):
        face = read_aligned_face(face_path)
        images.append(np.stack([degrade(face, kind, s, np.random.default_rng([r, k]))
                                for k, s in enumerate(severities)]))
    stack = np.concatenate(images)
    m = np.linalg.norm(embed_array(net, stack, device=device, convention=conv), axis=1)
    m = m.reshape(len(faces), len(severities))
    for r, (kind, _) in enumerate(faces):
        mags[kind] = [round(float(v), 3) for v in m[r]]
    render_ladder(stack.reshape(len(faces), len(severities), *stack.shape[1:]), m, [k for k, _ in faces],
                  severities, path, model=model or f"{info['arch']} ({ckpt.name})", data=data)
    return mags


def render_ladder(images: np.ndarray, mags: np.ndarray, kinds: list[str], severities: tuple[float, ...],
                  path: Path, *, model: str, data: str) -> Figure:
    """The ladder PNG: rows = damage kinds, columns = severities; the title names the model and the faces."""
    from matplotlib.figure import Figure

    from eval.erc_plot import title_text
    from utils.atomic import save_png

    rows, cols = images.shape[:2]
    fig = Figure(figsize=(1.45 * cols + 0.9, 1.6 * rows + 0.8), layout="constrained")
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(images[r, c][:, :, ::-1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"s {severities[c]:.1f}: |f| {mags[r, c]:.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(kinds[r], fontsize=10)
    fig.suptitle("the same face at rising damage, captioned with severity and magnitude\n"
                 + title_text(model, data), fontsize=9)
    save_png(fig, path, dpi=100)
    return fig


def model_label(name: str, ckpt: Path) -> str:
    """How a picture names a candidate: its role in the demo, backbone and checkpoint file."""
    from eval.checkpoint_arch import checkpoint_arch

    arch = checkpoint_arch(ckpt)[0] or "backbone not recorded"
    return f"{name}: {arch} ({ckpt.name})"


def magnitude_grid(feats_npz: Path, root: Path, path: Path, count: int = 32, title: str = "") -> Path:
    """A grid of faces at evenly spaced magnitude quantiles (one per distinct image), lowest first."""
    from inference.toy_example import render_magnitude_grid

    z = np.load(feats_npz)
    paths, mags = [str(p) for p in z["paths"]], z["magnitudes"]
    unique = {p: i for i, p in enumerate(paths)}
    order = sorted(unique.values(), key=lambda i: mags[i])
    pick = [order[int(round(q))] for q in np.linspace(0, len(order) - 1, min(count, len(order)))]
    images = np.stack([cv2.imread(str(root / paths[i])) for i in pick])
    return render_magnitude_grid(images, mags[pick], path, cols=8, title=title)


def quality_stage(candidates: dict[str, Path], data: Path, out: Path, device: str) -> dict:
    """Score every candidate on the damaged demo pairs, keep the best, draw its pictures; summary keys."""
    from eval.damage import plot_report
    from eval.damage_set import make_damaged_set
    from faces.degrade import KINDS

    set_dir = make_damaged_set(data / "lfw" / "img.list", data / "lfw" / "pair.list", out / "damaged_lfw")
    results = {name: score_candidate(name, ckpt, set_dir, out, device) for name, ckpt in candidates.items()}
    best = min(results.values(), key=lambda r: r["spearman"]["overall"])
    erc_png, ladder_png, grid_png = out / "damage_erc.png", out / "damage_ladder.png", out / "faces_by_magnitude.png"
    model = model_label(best["name"], Path(best["checkpoint"]))
    plot_report(erc_png, best["_report"], best["_scores"], best["_table"], model=model,
                data=f"demo LFW pairs with the second face damaged ({shown(set_dir)})")
    ladder = damage_ladder(Path(best["checkpoint"]), ladder_faces(set_dir, KINDS), ladder_png, device, model=model,
                           data=f"clean first faces of {shown(set_dir)}, damaged here")
    magnitude_grid(Path(best["features"]), set_dir, grid_png,
                   title=f"{model}: damaged demo LFW faces at evenly spaced magnitudes")
    return {
        "quality_spearman": best["spearman"]["overall"], "quality_spearman_by_kind": best["spearman"],
        "quality_erc_auc": best["erc_auc"], "quality_checkpoint": best["checkpoint"], "quality_model": best["name"],
        "quality_candidates": {name: {k: v for k, v in r.items() if not k.startswith("_")}
                               for name, r in results.items()},
        "damaged_set": str(set_dir), "damage_ladder": str(ladder_png), "damage_ladder_magnitudes": ladder,
        "damage_erc_plot": str(erc_png), "face_grid": str(grid_png),
    }
