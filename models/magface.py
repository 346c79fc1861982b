"""The MagFace head: Mag-ArcFace / Mag-CosFace logits, the magnitude regulariser and the loss.

With a = clamp(||f||, l_a, u_a) the magnitude of the un-normalised embedding f:

- adaptive margin   m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
- regulariser       g(a) = a / u_a^2 + 1 / a          (minimum at a = u_a)
- Mag-ArcFace       target logit s * cos(theta + m(a)) = s * (cos*cos m - sin*sin m)
- Mag-CosFace       target logit s * (cos(theta) - m(a))
- loss              L = CE(logits, y) + lambda_g * mean(g(a))

With ``l_margin == u_margin`` and ``lambda_g = 0`` the margin is constant and the regulariser vanishes:
the head is then exactly ArcFace (``margin="arc"``; with ``easy_margin=False`` the insightface rule for
theta + m > pi) or CosFace (``margin="cos"``).

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

_SIN_EPS = 1e-12


@dataclass(frozen=True)
class MagMargin:
    """The hyper-parameters of the magnitude-aware margin (published Mag-ArcFace defaults)."""

    l_a: float = 10.0
    u_a: float = 110.0
    l_margin: float = 0.45
    u_margin: float = 0.8
    lambda_g: float = 35.0
    scale: float = 64.0
    margin: str = "arc"
    easy_margin: bool = True

    def __post_init__(self) -> None:
        if self.margin not in ("arc", "cos"):
            raise ValueError(f"margin must be 'arc' or 'cos', got {self.margin!r}")
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
                stacklevel=3,
            )


def clamp_magnitude(x_norm: torch.Tensor, cfg: MagMargin) -> torch.Tensor:
    return x_norm.clamp(cfg.l_a, cfg.u_a)


def adaptive_margin(a: torch.Tensor, cfg: MagMargin) -> torch.Tensor:
    """m(a), linear in the clamped magnitude."""
    return cfg.slope * (a - cfg.l_a) + cfg.l_margin


def regularizer(a: torch.Tensor, cfg: MagMargin) -> torch.Tensor:
    """g(a) = a / u_a^2 + 1 / a, per sample."""
    return a / (cfg.u_a**2) + 1.0 / a


def target_cosine(cos_t: torch.Tensor, margin: torch.Tensor, cfg: MagMargin) -> torch.Tensor:
    """The margin-penalised cosine of the target class (before the scale s)."""
    if cfg.margin == "cos":
        return cos_t - margin
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(_SIN_EPS))
    cos_tm = cos_t * torch.cos(margin) - sin_t * torch.sin(margin)
    if cfg.easy_margin:
        return torch.where(cos_t > 0, cos_tm, cos_t)
    # theta + m > pi would make cos(theta + m) increase again: insightface's linear fallback.
    threshold = torch.cos(math.pi - margin)
    return torch.where(cos_t > threshold, cos_tm, cos_t - torch.sin(math.pi - margin) * margin)


def magnitude_terms(embeddings: torch.Tensor, cfg: MagMargin) -> dict[str, torch.Tensor]:
    """Per-sample magnitude, clamped magnitude, margin and regulariser (all fp32)."""
    x_norm = torch.linalg.vector_norm(embeddings, dim=1)
    a = clamp_magnitude(x_norm, cfg)
    return {"x_norm": x_norm, "a": a, "margin": adaptive_margin(a, cfg), "g": regularizer(a, cfg)}


def head_outputs(loss_id: torch.Tensor, loss_g: torch.Tensor, terms: dict[str, torch.Tensor],
                 accuracy: torch.Tensor, cfg: MagMargin) -> dict[str, torch.Tensor]:
    """The dict every MagFace head returns (see ``MagFaceHead``)."""
    return {
        "loss": loss_id + cfg.lambda_g * loss_g,
        "loss_id": loss_id,
        "loss_g": loss_g,
        "x_norm": terms["x_norm"],
        "margin": terms["margin"],
        "accuracy": accuracy,
    }


class MagFaceHead(nn.Module):
    """Class-weight matrix + MagFace loss; ``forward(embeddings, labels)`` returns the loss terms.

    Returns a dict: ``loss`` (= loss_id + lambda_g * loss_g), ``loss_id`` (cross-entropy),
    ``loss_g`` (mean g(a), before lambda_g), ``x_norm`` (per-sample magnitude before clamping),
    ``margin`` (per-sample m(a)) and ``accuracy`` (top-1 on the margin-free cosines, as the seed logs).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_margin: float = 0.45,
        u_margin: float = 0.8,
        lambda_g: float = 35.0,
        scale: float = 64.0,
        margin: str = "arc",
        easy_margin: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = MagMargin(l_a, u_a, l_margin, u_margin, lambda_g, scale, margin, easy_margin)
        self.cfg.check_feasible()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, {self.cfg}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._forward_fp32(embeddings.float(), labels)

    def _forward_fp32(self, f: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        terms = magnitude_terms(f, cfg)
        cos = F.linear(F.normalize(f, dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1.0, 1.0)
        labels = labels.long().view(-1, 1)
        cos_y = cos.gather(1, labels).squeeze(1)
        logits = cos.scatter(1, labels, target_cosine(cos_y, terms["margin"], cfg).unsqueeze(1))
        loss_id = F.cross_entropy(cfg.scale * logits, labels.squeeze(1))
        loss_g = terms["g"].mean()
        with torch.no_grad():
            accuracy = (cos.argmax(dim=1) == labels.squeeze(1)).float().mean()
        return head_outputs(loss_id, loss_g, terms, accuracy, cfg)
