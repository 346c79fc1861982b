"""Toy example: what the MagFace magnitude means, on a handful of aligned faces.

MagFace's claim is that the embedding magnitude ranks faces by recognisability. This script embeds
some aligned faces, shows them sorted by magnitude (ascending, each captioned with its magnitude: blurry,
occluded or profile faces should come first) and the cosine-similarity matrix of the embeddings
(same-person pairs should stand out).

Usage: ``python -m inference.toy_example --resume CKPT [--arch A] --images LIST_OR_DIR [--out DIR] [--max 32]``
``--images`` is a folder (searched recursively) or a list file whose first token per line is an image
path relative to the list's folder (``img.list``, ``train.list``). Images must already be aligned
(``python -m faces.align``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root, not inference/, goes on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
from matplotlib.figure import Figure

from inference.extract import embed_array
from models.checkpoint import load_backbone
from utils.atomic import save_png
from utils.cli import run_cli
from utils.convention import read_aligned_face
from utils.text_lines import numbered_tokens

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(source: str | os.PathLike, limit: int) -> list[Path]:
    """Up to ``limit`` image paths from a folder (sorted) or a list file (in order)."""
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {source}")
        return found[:limit]
    if not source.is_file():
        raise FileNotFoundError(f"image folder or list not found: {source}")
    paths = []
    for _, tokens in numbered_tokens(source):
        if not tokens[0].startswith("#"):
            path = Path(tokens[0])
            paths.append(path if path.is_absolute() else source.parent / path)
        if len(paths) == limit:
            break
    if not paths:
        raise ValueError(f"{source}: no image paths")
    return paths


def load_images(paths: Sequence[Path]) -> np.ndarray:
    """uint8 (N, 112, 112, 3) BGR aligned faces, whatever the model's working resolution (it resizes them
    itself, ``utils.convention``); unreadable or unaligned images raise, naming the file."""
    return np.stack([read_aligned_face(path) for path in paths])


def render_magnitude_grid(
    images: np.ndarray, magnitudes: np.ndarray, path: str | os.PathLike, cols: int = 8, title: str = ""
) -> Path:
    """PNG grid of BGR ``images`` sorted by ascending magnitude, row by row, each captioned; ``title`` (the model
    and the data, say) heads it."""
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    if len(images) != len(magnitudes) or len(images) == 0:
        raise ValueError(f"need as many magnitudes as images (>0), got {len(magnitudes)} and {len(images)}")
    order = np.argsort(magnitudes, kind="stable")
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(1.5 * cols, 1.8 * rows + 0.3), layout="constrained")
    for slot, index in enumerate(order):
        ax = fig.add_subplot(rows, cols, slot + 1)
        ax.imshow(images[index][:, :, ::-1])
        ax.set_title(f"{magnitudes[index]:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}\nsorted by magnitude (ascending)" if title else "sorted by magnitude (ascending)",
                 fontsize=10)
    return save_png(fig, path, dpi=100)


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of raw (un-normalised) embeddings."""
    features = np.asarray(features, dtype=np.float64)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def render_similarity(features: np.ndarray, labels: Sequence[str], path: str | os.PathLike) -> Path:
    """PNG heat map of the cosine similarities, axes labelled; values written in when few."""
    if len(labels) != len(features):
        raise ValueError(f"need one label per feature, got {len(labels)} labels for {len(features)}")
    sim = cosine_matrix(features)
    n = len(sim)
    side = min(max(4.0, 0.35 * n + 2.0), 20.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    shown = ax.imshow(sim, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ink = "white" if abs(sim[i, j]) > 0.6 else "black"
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color=ink)
    ax.set_title("cosine similarity of the embeddings")
    return save_png(fig, path, dpi=100)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MagFace toy example: faces by magnitude, similarity map")
    parser.add_argument("--resume", required=True, help="checkpoint (released MagFace, insightface, ours)")
    parser.add_argument("--arch", default=None, help="backbone name when the checkpoint does not say")
    parser.add_argument("--images", required=True, help="folder of aligned faces, or a list file")
    parser.add_argument("--out", default="toy_example_out", help="folder for the two PNGs")
    parser.add_argument("--max", type=int, default=32, help="use at most this many images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    model, convention, info = load_backbone(args.resume, args.arch, args.device)
    paths = list_images(args.images, args.max)
    images = load_images(paths)
    features = embed_array(model, images, device=args.device, convention=convention)
    magnitudes = np.linalg.norm(features, axis=1)
    for index in np.argsort(magnitudes, kind="stable"):
        print(f"{magnitudes[index]:10.4f}  {paths[index]}")
    out = Path(args.out)
    grid = render_magnitude_grid(images, magnitudes, out / "magnitude_grid.png",
                                 title=f"{info.get('arch') or 'model'} ({Path(args.resume).name}) on {args.images}")
    heat = render_similarity(features, [p.stem for p in paths], out / "similarity.png")
    print(grid)
    print(heat)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "toy_example.py"))
