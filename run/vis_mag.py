"""``--vis_mag 1``: the seed's magnitude dump, and the paper's magnitude-versus-cosine scatter.

The seed (``run/trainer.py``) writes, at steps-in-epoch ``i > 10000`` with ``i % 100 == 0`` (``i`` counted
from 0 within the epoch), ``np.savez(f"{OUT}/vis/epoch_{epoch}_iter{i}", x_norm, prob, cos)``: arr_0 the
magnitude ||f|| of every sample of the batch, arr_1 the softmax probability of its class over the
margin-free logits s*cos(theta_j), arr_2 the target's margin-free logit s*cos(theta_y) (the seed names it
cos_theta; it is scaled by s, as the seed's output[0] is). The same file is written here, for the whole
global batch, plus a PNG of magnitude against cos(theta_y) beside it and the same figure in TensorBoard:
as training goes on, the easy (high-cosine) faces move to high magnitudes.

Everything is computed under no_grad from the forward pass's embeddings and the head's weights before
the update, with no random numbers: the training numerics are untouched. With the class-sharded head the
softmax is assembled from each rank's shard (max, sum of exponentials and target logit all-reduced).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from models.collectives import all_gather_no_grad, shard_range
from utils.atomic import atomic_write
from utils.logger import TensorBoard, get_logger

CHUNK_ROWS = 64  # rows of the [B, C] logits held at once


def is_vis_step(step_in_epoch: int, start: int, every: int) -> bool:
    """The seed's rule: ``i > start and i % every == 0`` with ``i`` the 0-based step in the epoch."""
    return step_in_epoch > start and step_in_epoch % every == 0


def _chunk_logits(f: torch.Tensor, w: torch.Tensor, scale: float) -> Iterator[torch.Tensor]:
    """s * cos of CHUNK_ROWS rows at a time, so that the whole [B, C] matrix never exists at once."""
    for lo in range(0, f.shape[0], CHUNK_ROWS):
        yield scale * F.linear(F.normalize(f[lo:lo + CHUNK_ROWS], dim=1), w).clamp(-1.0, 1.0)


@torch.no_grad()
def target_statistics(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, scale: float,
                      first_class: int = 0, distributed: bool = False) -> tuple[torch.Tensor, ...]:
    """(x_norm, target probability, s*cos of the target) per row, in fp32.

    ``weight`` holds the classes [first_class, first_class + len(weight)); with ``distributed`` every rank
    passes the same rows and its own shard, and the softmax is reduced over the ranks. The [B, C] logits
    are built CHUNK_ROWS rows at a time, twice (max, then the sum of exponentials), to stay small.
    """
    f = embeddings.detach().float()
    w = F.normalize(weight.detach().float(), dim=1)
    y = labels.long() - first_class
    owned = (y >= 0) & (y < w.shape[0])
    rows = f.shape[0]
    peak = torch.full((rows,), -torch.inf, device=f.device)
    target = torch.zeros(rows, device=f.device)
    if w.shape[0]:
        for i, logits in enumerate(_chunk_logits(f, w, scale)):
            part = slice(i * CHUNK_ROWS, i * CHUNK_ROWS + logits.shape[0])
            peak[part] = logits.amax(dim=1)
            picked = logits.gather(1, y[part].clamp(0, w.shape[0] - 1).view(-1, 1)).squeeze(1)
            target[part] = torch.where(owned[part], picked, 0.0)
    if distributed:
        tdist.all_reduce(peak, op=tdist.ReduceOp.MAX)
        tdist.all_reduce(target, op=tdist.ReduceOp.SUM)
    sums = torch.zeros(rows, device=f.device)
    if w.shape[0]:
        for i, logits in enumerate(_chunk_logits(f, w, scale)):
            part = slice(i * CHUNK_ROWS, i * CHUNK_ROWS + logits.shape[0])
            sums[part] = torch.exp(logits - peak[part, None]).sum(dim=1)
    if distributed:
        tdist.all_reduce(sums, op=tdist.ReduceOp.SUM)
    return torch.linalg.vector_norm(f, dim=1), torch.exp(target - peak) / sums, target


def scatter_figure(x_norm: np.ndarray, prob: np.ndarray, cos: np.ndarray, title: str, l_a: float, u_a: float):
    """The paper's view: magnitude against the target cosine, coloured by the target probability."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state to touch

    fig = Figure(figsize=(5.5, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    points = ax.scatter(cos, x_norm, c=prob, s=8, cmap="viridis", vmin=0.0, vmax=1.0, linewidths=0)
    fig.colorbar(points, ax=ax, label="softmax probability of the target")
    for bound in (l_a, u_a):
        ax.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
    defined = len(cos) > 1 and np.std(cos) > 0 and np.std(x_norm) > 0
    r = f"Pearson r = {np.corrcoef(cos, x_norm)[0, 1]:.3f}" if defined else "Pearson r n/a: a constant axis"
    ax.set_xlabel("cos(theta_y): cosine to the own class centre")
    ax.set_ylabel("feature magnitude ||f||")
    ax.set_title(f"{title}  ({r})", fontsize=9)
    fig.tight_layout()
    return fig


def run_label(out_dir: Path) -> str:
    """The model and data a picture shows, from the config.json the trainer writes beside its outputs."""
    try:
        cfg = json.loads((out_dir / "config.json").read_text())
    except (OSError, ValueError):
        return f"run {out_dir.name}"
    data = cfg.get("train_list") or cfg.get("rec") or ("synthetic faces" if cfg.get("synthetic") else "?")
    return f"{cfg.get('arch', '?')} in {out_dir.name}, training batch of {Path(str(data)).name}"


class MagnitudeVisualizer:
    """Writes the seed's ``vis/epoch_E_iterI.npz`` (rank 0), a PNG beside it and a TensorBoard figure."""

    def __init__(self, out_dir: str | Path, start: int, every: int, is_main: bool, distributed: bool,
                 num_classes: int, tb: TensorBoard | None = None) -> None:
        self.vis_dir = Path(out_dir) / "vis"
        self.start, self.every, self.is_main, self.distributed = start, every, is_main, distributed
        self.num_classes, self.tb = num_classes, tb

    def on_forward(self, epoch: int, step: int, global_step: int, embeddings: torch.Tensor, labels: torch.Tensor,
                   head: nn.Module) -> Path | None:
        """Collective under DDP at a vis step (every rank reaches it); returns the .npz written on rank 0."""
        if not is_vis_step(step, self.start, self.every):
            return None
        first = 0
        if self.distributed:
            embeddings, labels = all_gather_no_grad(embeddings.detach().float()), all_gather_no_grad(labels)
            first = shard_range(self.num_classes, tdist.get_world_size(), tdist.get_rank())[0]
        stats = target_statistics(embeddings, labels, head.weight, head.config.scale, first, self.distributed)
        if not self.is_main:
            return None
        x_norm, prob, scaled_cos = (t.cpu().numpy() for t in stats)
        path = self.vis_dir / f"epoch_{epoch}_iter{step}.npz"
        with atomic_write(path, "wb") as f:
            np.savez(f, x_norm, prob, scaled_cos)
        title = f"{run_label(self.vis_dir.parent)}\nepoch {epoch} iter {step}"
        fig = scatter_figure(x_norm, prob, scaled_cos / head.config.scale, title, head.config.l_a, head.config.u_a)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        with atomic_write(path.with_suffix(".png"), "wb") as f:
            f.write(buf.getvalue())
        if self.tb is not None:
            self.tb.figure("train/magnitude_vs_cos", fig, global_step)
        get_logger().info(f"--vis_mag: wrote {path} and {path.with_suffix('.png').name}")
        return path
