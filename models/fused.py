"""The MagFace head computed in chunks of classes: the B x C logits matrix never exists.

Same loss, gradients and parameters as ``models.magface.MagFaceHead`` (the weight is the same
[C, D] ``weight``, so checkpoints do not change), with the matmul, the margin, the scale and the
softmax cross-entropy fused in one pass over the classes, ``chunk`` rows of W at a time:

- forward: per chunk, cos = normalize(f) @ normalize(W_c)^T clamped to [-1, 1], the target entry
  replaced by the margin-penalised cosine (Mag-ArcFace cos(theta + m(a)) or Mag-CosFace
  cos(theta) - m(a), ``models.magface.target_cosine``), times s; a running row max and sum of exp
  (log-sum-exp online) give L_id = mean_i [log sum_c exp(z_ic) - z_iy] at the end;
- backward: each chunk's logits are recomputed and turned into (softmax - onehot) * s / B in place,
  then into the gradients of normalize(f) and of W_c through W's row normalisation.

The target cosine cos_y = normalize(f_i) . normalize(W_{y_i}) is computed from the B target rows
alone, and its gradient is added to those rows of dW; the margin m(a) and the regulariser g(a) stay
ordinary autograd in fp32 (``magnitude_terms``). Memory: two B x chunk buffers and the [C, D] weight
gradient, against about six B x C buffers and two extra [C, D] copies (normalize(W) and its
gradient) in the dense head. Cost: one more B x D x C matmul (the forward's logits are recomputed
in backward). Like the sharded head's fused loss, the graph can be backpropagated once.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.magface import MagFaceConfig, MagFaceHead, head_outputs, magnitude_terms, target_cosine

_NORM_EPS = 1e-12  # F.normalize's default


def _normalise_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w / max(||w||, eps), max(||w||, eps)) per row, as F.normalize computes it."""
    norm = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(_NORM_EPS)
    return w / norm, norm


def _normalise_backward(grad_unit: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Gradient of w -> w / ||w|| at w, from the gradient of the unit rows ``unit``."""
    return (grad_unit - unit * (grad_unit * unit).sum(dim=1, keepdim=True)) / norm


class _ChunkedMagFaceLoss(torch.autograd.Function):
    """Inputs: unit embeddings (B x D), the raw weight (C x D), the margin m(a) (B), labels (B).
    Outputs: the mean cross-entropy, and each row's best clamped cosine and its class (for the accuracy)."""

    @staticmethod
    def forward(ctx: Any, unit: torch.Tensor, weight: torch.Tensor, margin: torch.Tensor, labels: torch.Tensor,
                cfg: MagFaceConfig, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = unit.shape[0]
        w_y, norm_y = _normalise_rows(weight[labels])
        raw_y = (unit * w_y).sum(dim=1)
        with torch.enable_grad():  # the margin's small graph is replayed in backward
            cos_y = raw_y.clamp(-1.0, 1.0).requires_grad_()
            m = margin.detach().requires_grad_()
            penalised = target_cosine(cos_y, m, cfg)
        target_logit = cfg.scale * penalised.detach()
        row_max = unit.new_full((batch,), float("-inf"))
        sum_exp = unit.new_zeros(batch)
        best = unit.new_full((batch,), float("-inf"))
        arg = torch.zeros_like(labels)
        for start in range(0, weight.shape[0], chunk):
            z, _, _ = _chunk_logits(unit, weight, start, chunk, labels, target_logit, cfg.scale, best, arg)
            new_max = torch.maximum(row_max, z.amax(dim=1))
            sum_exp = sum_exp * torch.exp(row_max - new_max) + torch.exp(z - new_max.unsqueeze(1)).sum(dim=1)
            row_max = new_max
        loss = (sum_exp.log() + row_max - target_logit).mean()
        ctx.save_for_backward(unit, weight, labels, row_max, sum_exp, w_y, norm_y, raw_y)
        ctx.graph = (cos_y, m, penalised, target_logit)
        ctx.cfg, ctx.chunk = cfg, chunk
        ctx.mark_non_differentiable(best, arg)
        return loss, best, arg

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _best: Any, _arg: Any) -> tuple:
        if ctx.graph is None:
            raise RuntimeError("the chunked MagFace loss frees its graph in backward: backpropagate it once")
        unit, weight, labels, row_max, sum_exp, w_y, norm_y, raw_y = ctx.saved_tensors
        cos_y, m, penalised, target_logit = ctx.graph
        ctx.graph = None
        cfg, batch = ctx.cfg, unit.shape[0]
        factor = grad * (cfg.scale / batch)
        grad_unit = torch.zeros_like(unit)
        grad_weight = torch.zeros_like(weight)
        grad_penalised = unit.new_zeros(batch)
        for start in range(0, weight.shape[0], ctx.chunk):
            z, (w_c, norm_c, keep), (inside, cols) = _chunk_logits(unit, weight, start, ctx.chunk, labels,
                                                                  target_logit, cfg.scale)
            probs = z.sub_(row_max.unsqueeze(1)).exp_().div_(sum_exp.unsqueeze(1))
            at_target = probs.gather(1, cols).squeeze(1)
            # d L_id / d z_iy (before the factor) goes to the margin path; the target entry gives cos nothing
            grad_penalised = torch.where(inside, at_target - 1.0, grad_penalised)
            probs.scatter_(1, cols, torch.where(inside, 0.0, at_target).unsqueeze(1))
            d_cos = probs.mul_(keep).mul_(factor)
            grad_unit.addmm_(d_cos, w_c)
            grad_weight[start : start + w_c.shape[0]] = _normalise_backward(d_cos.t() @ unit, w_c, norm_c)
        d_cos_y, d_m = torch.autograd.grad(penalised, (cos_y, m), grad_penalised * factor)
        d_raw_y = d_cos_y * ((raw_y >= -1.0) & (raw_y <= 1.0))  # clamp passes the gradient inside its bounds
        grad_unit.add_(d_raw_y.unsqueeze(1) * w_y)
        grad_weight.index_add_(0, labels, _normalise_backward(d_raw_y.unsqueeze(1) * unit, w_y, norm_y))
        return grad_unit, grad_weight, d_m, None, None, None


def _chunk_logits(unit: torch.Tensor, weight: torch.Tensor, start: int, chunk: int, labels: torch.Tensor,
                  target_logit: torch.Tensor, scale: float, best: torch.Tensor | None = None,
                  arg: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple, tuple]:
    """s * clamp(cos) of the classes [start, start + chunk), target entries set to the penalised logit.

    Also returns (unit rows of W, their norms, clamp's pass-through mask) and which rows have their target
    in the chunk with its column there (clamped into the chunk elsewhere); with ``best``/``arg`` given,
    updates the running top-1 (first index on ties). Masks, not index lists: no host synchronisation.
    """
    w_c, norm_c = _normalise_rows(weight[start : start + chunk])
    raw = unit @ w_c.t()
    keep = (raw >= -1.0) & (raw <= 1.0)
    z = raw.clamp_(-1.0, 1.0)
    if best is not None and arg is not None:
        chunk_best, chunk_arg = z.max(dim=1)
        better = chunk_best > best
        best.copy_(torch.where(better, chunk_best, best))
        arg.copy_(torch.where(better, chunk_arg + start, arg))
    inside = (labels >= start) & (labels < start + w_c.shape[0])
    cols = (labels - start).clamp(0, w_c.shape[0] - 1).unsqueeze(1)
    z.mul_(scale)
    z.scatter_(1, cols, torch.where(inside, target_logit, z.gather(1, cols).squeeze(1)).unsqueeze(1))
    return z, (w_c, norm_c, keep), (inside, cols)


class ChunkedMagFaceHead(MagFaceHead):
    """``MagFaceHead`` (same parameters, loss and outputs) computed ``chunk`` classes at a time."""

    def __init__(self, embedding_size: int, num_classes: int, config: MagFaceConfig | None = None,
                 chunk: int = 16384, init_seed: int = 0) -> None:
        super().__init__(embedding_size, num_classes, config, init_seed)
        if chunk < 1:
            raise ValueError(f"the head's class chunk must be >= 1, got {chunk}")
        self.chunk = chunk

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk={self.chunk}"

    def _forward_fp32(self, f: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        labels = labels.long().view(-1).to(f.device)
        # checked where it is free; on a GPU it would cost a host synchronisation per step (the dense head
        # does not check either: the datasets validate labels before training)
        if f.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0
                                                          or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        terms = magnitude_terms(f, cfg)
        loss_id, _, arg = _ChunkedMagFaceLoss.apply(F.normalize(f, dim=1), self.weight.float(), terms["m_a"],
                                                    labels, cfg, self.chunk)
        loss_g = terms["g"].mean()
        return head_outputs(loss_id, loss_g, terms, (arg == labels).float().mean(), cfg)
