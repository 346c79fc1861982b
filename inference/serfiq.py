"""SER-FIQ-style face quality (Terhoerst et al., CVPR 2020): how stable a face's embedding stays under dropout.

    python -m inference.serfiq --resume CKPT --inf_list img.list --out serfiq.txt [--passes 20 --p 0.5]

A baseline to compare the MagFace magnitude against, written for this project from the paper's idea: the
face runs once through the backbone up to its dropout point (the input of the embedding layer), then ``passes``
random dropout masks give as many stochastic embeddings; the quality is 2 * sigmoid(-mean pairwise Euclidean
distance of the normalised embeddings), in (0, 1], higher = better. The masks are seeded, so a run repeats.
Works on any backbone with a ``dropout`` module before its embedding layer (the iResNets, MobileFaceNet).
Output: one line ``path score`` per listed face, the ``--score-file`` format of ``eval.damage`` and
``eval.quality``, written atomically.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faces.face_list import read_image_list
from inference.extract import prepare_model
from models.checkpoint import load_backbone
from utils.atomic import atomic_write
from utils.cli import HelpFormatter, run_cli
from utils.convention import InputConvention, read_aligned_face, to_model_input


class RepeatedDropout(nn.Module):
    """(B, ...) -> (B * passes, ...): each input repeated ``passes`` times, each copy under its own mask."""

    def __init__(self, passes: int, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.passes, self.p, self.generator = passes, p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rep = x.repeat_interleave(self.passes, dim=0)
        keep = torch.rand(rep.shape, generator=self.generator) >= self.p
        return rep * keep.to(rep.dtype) / (1.0 - self.p)


def stability_scores(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, passes, D) stochastic embeddings -> (B,) 2 * sigmoid(-mean pairwise distance of the unit vectors)."""
    unit = F.normalize(embeddings.float(), dim=2)
    dist = torch.cdist(unit, unit)  # (B, passes, passes), zero diagonal
    n = unit.shape[1]
    mean = dist.sum(dim=(1, 2)) / (n * (n - 1))
    return 2.0 * torch.sigmoid(-mean)


@torch.no_grad()
def serfiq_scores(model: nn.Module, images: torch.Tensor, convention: InputConvention, passes: int = 20,
                  p: float = 0.5, seed: int = 0) -> torch.Tensor:
    """uint8 BGR (B, 3, 112, 112) faces -> (B,) SER-FIQ qualities; ``model`` must have a ``dropout`` module."""
    if not isinstance(getattr(model, "dropout", None), nn.Module):
        raise ValueError(f"SER-FIQ needs a backbone with a 'dropout' module before its embedding layer; "
                         f"{type(model).__name__} has none")
    if passes < 2 or not 0.0 < p < 1.0:
        raise ValueError(f"need passes >= 2 and 0 < p < 1, got passes={passes}, p={p}")
    original = model.dropout
    model.dropout = RepeatedDropout(passes, p, torch.Generator().manual_seed(seed))
    try:
        x = to_model_input(images, convention).contiguous(memory_format=torch.channels_last)
        out = model.eval()(x)
    finally:
        model.dropout = original
    return stability_scores(out.view(images.shape[0], passes, -1))


def score_list(resume: str, inf_list: str, out: str, passes: int = 20, p: float = 0.5, batch_size: int = 64,
               seed: int = 0) -> np.ndarray:
    """Score every face of an image list and write ``out``; returns the scores in list order."""
    model, convention, _ = load_backbone(resume)
    model = prepare_model(model, "cpu")  # BatchNorms folded, channels-last: the dropout module is kept
    listed, resolved = read_image_list(inf_list)
    scores, began = [], time.perf_counter()
    for start in range(0, len(resolved), batch_size):
        faces = np.stack([read_aligned_face(path) for path in resolved[start:start + batch_size]])
        batch = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
        # each batch has its own masks, drawn from (seed, batch index): a run repeats whatever the batch count
        scores.append(serfiq_scores(model, batch, convention, passes, p, seed * 1_000_003 + start).numpy())
    values = np.concatenate(scores) if scores else np.zeros(0)
    with atomic_write(out, "w") as f:
        f.writelines(f"{path} {value:.6f}\n" for path, value in zip(listed, values, strict=True))
    print(f"wrote {len(values)} SER-FIQ scores ({passes} passes, p {p}) to {out} in "
          f"{time.perf_counter() - began:.1f}s", file=sys.stderr)
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--resume", required=True, help="backbone checkpoint (any format load_backbone reads)")
    parser.add_argument("--inf_list", required=True, help="image list: one aligned 112x112 face per line")
    parser.add_argument("--out", required=True, help="score file to write: 'path score' per line")
    parser.add_argument("--passes", type=int, default=20, help="stochastic forward passes per face")
    parser.add_argument("--p", type=float, default=0.5, help="dropout probability")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dropout masks")
    args = parser.parse_args(argv)
    score_list(args.resume, args.inf_list, args.out, args.passes, args.p, args.batch_size, args.seed)


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "serfiq"))
