"""The MagFace head: Mag-ArcFace / Mag-CosFace logits, the magnitude regulariser and the loss.

With a = clamp(||f||, l_a, u_a) the magnitude of the un-normalised embedding f:

- adaptive margin   m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
- regulariser       g(a) = a / u_a^2 + 1 / a          (minimum at a = u_a)
- Mag-ArcFace       target logit s * cos(theta + m(a)) = s * (cos*cos m - sin*sin m)
- Mag-CosFace       target logit s * (cos(theta) - m(a))
- loss              L = CE(logits, y) + lambda_g * mean(g(a))

With ``l_margin == u_margin`` and ``lambda_g = 0`` the margin is constant and the regulariser vanishes:
the head is then exactly ArcFace (``variant="arc"``; with ``easy_margin=False`` the insightface rule for
theta + m > pi) or CosFace (``variant="cos"``).

Everything here runs in fp32 whatever the autocast dtype: the margin and the regulariser are smooth
but steep, and sin(theta) = sqrt(1 - cos^2) has an unbounded derivative at |cos| = 1, which is guarded.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.collectives import gather_row_shards, shard_range

_SIN_EPS = 1e-12
_INIT_BLOCK = 65536


VARIANTS = ("arc", "cos")


@dataclass(frozen=True)
class MagFaceConfig:
    """The MagFace loss hyper-parameters. Its defaults are the published Mag-ArcFace recipe and their only
    source: the heads take this object and ``run.config.TrainConfig`` reads its defaults from it.

    ``variant`` is the kind of margin: ``arc`` (Mag-ArcFace, cos(theta + m(a))) or ``cos`` (Mag-CosFace,
    cos(theta) - m(a)); the per-sample margin itself is m(a), the heads' output ``m_a``.
    """

    l_a: float = 10.0
    u_a: float = 110.0
    l_margin: float = 0.45
    u_margin: float = 0.8
    lambda_g: float = 35.0
    scale: float = 64.0
    variant: str = "arc"
    easy_margin: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"the margin variant must be 'arc' or 'cos', got {self.variant!r}")
        if not 0 < self.l_a < self.u_a:
            raise ValueError(f"need 0 < l_a < u_a, got l_a={self.l_a}, u_a={self.u_a}")
        if self.u_margin < self.l_margin:
            raise ValueError(f"need l_margin <= u_margin, got {self.l_margin} > {self.u_margin}")

    @property
    def slope(self) -> float:
        return (self.u_margin - self.l_margin) / (self.u_a - self.l_a)

    def lambda_min(self) -> float:
        """The seed's feasibility bound s * k * u_a^2 * l_a^2 / (u_a^2 - l_a^2) (22.59 by default)."""
        ua2, la2 = self.u_a**2, self.l_a**2
        return self.scale * self.slope * ua2 * la2 / (ua2 - la2)

    def check_feasible(self) -> None:
        bound = self.lambda_min()
        if self.lambda_g < bound:
            warnings.warn(
                f"lambda_g={self.lambda_g} is below the MagFace feasibility bound {bound:.2f} "
                f"(s={self.scale}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_margin}, "
                f"u_m={self.u_margin}): magnitudes may not be a monotone quality score",
                stacklevel=4,
            )


def clamp_magnitude(x_norm: torch.Tensor, cfg: MagFaceConfig) -> torch.Tensor:
    return x_norm.clamp(cfg.l_a, cfg.u_a)


def adaptive_margin(a: torch.Tensor, cfg: MagFaceConfig) -> torch.Tensor:
    """m(a), linear in the clamped magnitude."""
    return cfg.slope * (a - cfg.l_a) + cfg.l_margin


def regularizer(a: torch.Tensor, cfg: MagFaceConfig) -> torch.Tensor:
    """g(a) = a / u_a^2 + 1 / a, per sample."""
    return a / (cfg.u_a**2) + 1.0 / a


def target_cosine(cos_t: torch.Tensor, m_a: torch.Tensor, cfg: MagFaceConfig) -> torch.Tensor:
    """The margin-penalised cosine of the target class (before the scale s), for per-sample margins m(a)."""
    if cfg.variant == "cos":
        return cos_t - m_a
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(_SIN_EPS))
    cos_tm = cos_t * torch.cos(m_a) - sin_t * torch.sin(m_a)
    if cfg.easy_margin:
        return torch.where(cos_t > 0, cos_tm, cos_t)
    # theta + m > pi would make cos(theta + m) increase again: insightface's linear fallback.
    threshold = torch.cos(math.pi - m_a)
    return torch.where(cos_t > threshold, cos_tm, cos_t - torch.sin(math.pi - m_a) * m_a)


def magnitude_terms(embeddings: torch.Tensor, cfg: MagFaceConfig) -> dict[str, torch.Tensor]:
    """Per-sample magnitude, clamped magnitude, margin m(a) and regulariser g(a) (all fp32)."""
    x_norm = torch.linalg.vector_norm(embeddings, dim=1)
    a = clamp_magnitude(x_norm, cfg)
    return {"x_norm": x_norm, "a": a, "m_a": adaptive_margin(a, cfg), "g": regularizer(a, cfg)}


def head_outputs(loss_id: torch.Tensor, loss_g: torch.Tensor, terms: dict[str, torch.Tensor],
                 accuracy: torch.Tensor, cfg: MagFaceConfig) -> dict[str, torch.Tensor]:
    """The dict every MagFace head returns (see ``ClassWeightHead``)."""
    weighted = cfg.lambda_g * loss_g
    return {
        "loss": loss_id + weighted,
        "loss_id": loss_id,
        "loss_g": loss_g,
        "loss_g_weighted": weighted,
        "x_norm": terms["x_norm"],
        "m_a": terms["m_a"],
        "accuracy": accuracy,
    }


def init_rows(start: int, end: int, dim: int, seed: int) -> torch.Tensor:
    """N(0, 0.01) rows [start, end) of a [C, D] matrix whose values do not depend on the sharding.

    Rows are drawn in fixed blocks, each from its own seeded generator, so ranks never share an
    initialisation and a head resharded at another world size starts from the same matrix.
    """
    out = torch.empty(end - start, dim)
    for block in range(start // _INIT_BLOCK, (end + _INIT_BLOCK - 1) // _INIT_BLOCK):
        gen = torch.Generator().manual_seed(seed * 7919 + block)
        rows = torch.randn(_INIT_BLOCK, dim, generator=gen) * 0.01
        lo, hi = max(start, block * _INIT_BLOCK), min(end, (block + 1) * _INIT_BLOCK)
        out[lo - start : hi - start] = rows[lo - block * _INIT_BLOCK : hi - block * _INIT_BLOCK]
    return out


class ClassWeightHead(nn.Module):
    """What every MagFace head shares: the config, and the [C, D] class weights or this rank's rows of them.

    ``weight`` holds the classes [start, end) of ``shard_range(num_classes, world_size, rank)`` (all of them in
    a single-process head). Its initial values depend on ``init_seed`` only (``init_rows``). Checkpoints store
    the whole matrix: ``gather_rows`` reassembles the weight, or any tensor laid out like it (its SGD momentum),
    on one rank, and ``local_rows`` / ``load_full_weight`` take this rank's rows of a whole one, so a run can
    resume at another world size.

    ``forward(embeddings, labels)`` returns a dict: ``loss`` (= loss_id + lambda_g * loss_g), ``loss_id``
    (cross-entropy), ``loss_g`` (mean g(a), before lambda_g), ``loss_g_weighted`` (lambda_g * loss_g),
    ``x_norm`` (per-sample magnitude before clamping), ``m_a`` (per-sample margin m(a)) and ``accuracy``
    (top-1 on the margin-free cosines, as the seed logs).
    """

    def __init__(self, embedding_size: int, num_classes: int, config: MagFaceConfig | None = None, rank: int = 0,
                 world_size: int = 1, init_seed: int = 0) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(
                f"need num_classes >= 1 and embedding_size >= 1, got {num_classes}, {embedding_size}"
            )
        self.config = config if config is not None else MagFaceConfig()
        self.config.check_feasible()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.rank = rank
        self.world_size = world_size
        self.start, self.end = shard_range(num_classes, world_size, rank)
        self.weight = nn.Parameter(init_rows(self.start, self.end, embedding_size, init_seed))

    def extra_repr(self) -> str:
        rows = f"classes=[{self.start}, {self.end}), rank={self.rank}/{self.world_size}, "
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "\
            f"{rows if self.world_size > 1 else ''}{self.config}"

    def check_group(self) -> None:
        """A head of several ranks uses the default process group: it must match the head's rank and world."""

    @torch.no_grad()
    def gather_rows(self, local: torch.Tensor, dst: int | None = 0) -> torch.Tensor | None:
        """A tensor laid out like ``weight`` (the weight, its momentum) whole on rank ``dst`` (None on the
        others), or on every rank when ``dst`` is None. Collective for a head of several ranks."""
        if self.world_size == 1:
            return local.detach().clone()
        self.check_group()
        return gather_row_shards(local, self.num_classes, dst)

    def gather_full_weight(self, dst: int | None = 0) -> torch.Tensor | None:
        """The whole [C, D] weight in fp32 on rank ``dst`` (None elsewhere), or on every rank if dst is None."""
        return self.gather_rows(self.weight.detach().float(), dst)

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole [C, D] tensor (a checkpoint's weight or momentum, of any world size)."""
        expected = (self.num_classes, self.embedding_size)
        if tuple(full.shape) != expected:
            raise ValueError(f"full head weight must have shape {expected}, got {tuple(full.shape)}")
        return full[self.start : self.end].to(self.weight)

    @torch.no_grad()
    def load_full_weight(self, full_weight: torch.Tensor) -> None:
        """Take this rank's rows of a whole [C, D] weight."""
        self.weight.copy_(self.local_rows(full_weight))


class MagFaceHead(ClassWeightHead):
    """The dense single-process head: the B x C cosine matrix, the margin on the target and cross-entropy."""

    def __init__(self, embedding_size: int, num_classes: int, config: MagFaceConfig | None = None,
                 init_seed: int = 0) -> None:
        super().__init__(embedding_size, num_classes, config, init_seed=init_seed)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._forward_fp32(embeddings.float(), labels)

    def _forward_fp32(self, f: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms = magnitude_terms(f, cfg)
        cos = F.linear(F.normalize(f, dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1.0, 1.0)
        labels = labels.long().view(-1, 1)
        cos_y = cos.gather(1, labels).squeeze(1)
        logits = cos.scatter(1, labels, target_cosine(cos_y, terms["m_a"], cfg).unsqueeze(1))
        loss_id = F.cross_entropy(cfg.scale * logits, labels.squeeze(1))
        loss_g = terms["g"].mean()
        with torch.no_grad():
            accuracy = (cos.argmax(dim=1) == labels.squeeze(1)).float().mean()
        return head_outputs(loss_id, loss_g, terms, accuracy, cfg)
