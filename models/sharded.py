"""The MagFace head with its class weights split over the ranks of a process group ("split FC").

Rank r holds the rows [start, end) = ``shard_range(C, W, r)`` of the [C, D] class-weight matrix. One
forward, on every rank:

1. all-gather the local embeddings (autograd-aware) and labels: the global batch f, y (B = W * b);
2. a = clamp(||f||, l_a, u_a), m(a), g(a) from the gathered f, in fp32 (``models.magface`` functions);
3. cos = normalize(f) @ normalize(W_r)^T for the local classes only; the margin (Mag-ArcFace
   cos(theta + m(a)) or Mag-CosFace cos(theta) - m(a)) only on the rank that owns the target class;
4. cross-entropy of s * logits across shards: max (MAX), sum of exp (SUM) and target logit (SUM) are
   all-reduced, so L_id = mean_i [log sum_c exp(z_ic) - z_iy] over the *global* batch;
5. L = L_id + lambda_g * mean_i g(a_i), the same value on every rank.

Class sampling (``sample_rate`` r < 1, PartialFC-style). Step 3 then uses only the rows
``sample_rows`` keeps: every class of the global batch this rank owns, plus others drawn at random, so that
ceil(r * C_local) rows are kept (more when the batch's own classes alone exceed that). The softmax in step 4
runs over the union of the ranks' kept rows: exactly the cross-entropy a dense head would give on those
classes. The magnitude, its margin m(a) and g(a) (step 2) never depend on the class rows, so they are
unchanged. The draw uses the global torch RNG of the weight's device, which the trainer seeds from
(seed, rank, global step) before each step: a resumed run draws what the uninterrupted one drew, and each
rank draws differently. Rows not kept get a zero gradient: the optimizer still applies momentum and weight
decay to them as it does at r = 1 (PartialFC v2's choice; it keeps one optimizer state layout for every r and
makes a checkpoint independent of r). At r = 1 nothing is drawn and the computation is the one above.

Gradient contract (what the trainer relies on). Let L be the dense loss, i.e. ``MagFaceHead`` on the
concatenated global batch with the full weight. After ``out["loss"].backward()`` on every rank:

- ``weight.grad`` on rank r is exactly dL/dW[start:end] (the head is NOT wrapped in DDP);
- the gradient that reaches rank r's local embeddings is ``world_size * dL/df_r`` when
  ``compensate_ddp_average=True`` (the default), and exactly dL/df_r when it is False.

The default is for a backbone wrapped in DistributedDataParallel: each rank backpropagates its own
samples, the dense backbone gradient is the SUM of those per-rank contributions, and DDP AVERAGES
them; the factor world_size cancels that average, so the backbone ends with exactly dL/dtheta.
Do not multiply or divide the loss by world_size anywhere (GradScaler's scaling is fine). With
``compensate_ddp_average=False`` the gradients equal the dense ones slice for slice (for a backbone
whose gradients are summed over ranks, or for checks).
Every rank must pass the same local batch size (use drop_last=True in the sampler/loader).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from models.collectives import all_gather_no_grad, all_gather_with_grad
from models.magface import ClassWeightHead, MagFaceConfig, head_outputs, magnitude_terms, target_cosine


def _all_reduce(tensor: torch.Tensor, op: Any, distributed: bool) -> torch.Tensor:
    if distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def sample_rows(positives: torch.Tensor, num_rows: int, rate: float) -> torch.Tensor:
    """Sorted indices of the rows one step keeps: all ``positives`` (local row indices, repeats allowed) and
    random others, ceil(rate * num_rows) in all or all positives when they are more. Draws ``num_rows``
    uniforms from the global RNG of ``positives``' device."""
    positives = positives.unique()
    keep = min(num_rows, max(math.ceil(rate * num_rows), positives.numel()))
    score = torch.rand(num_rows, device=positives.device)
    score[positives] = 2.0  # above every uniform draw: the positives always make the cut
    return score.topk(keep, sorted=False).indices.sort().values


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` (undoes DDP's average)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class _ShardedMarginCrossEntropy(torch.autograd.Function):
    """Margin, scale and softmax cross-entropy of the local cosines in one [B, C_local] buffer.

    Inputs: ``cos`` (B x C_local, unclamped), ``penalised`` (B, the margin-penalised target cosine of
    every row, used where this rank owns the target), ``local_target`` (the target's column here, -1
    where another rank owns it). Forward computes, with max, sum of exp and target logit all-reduced,
    the mean over the global batch of log sum_c exp(z_ic) - z_iy, z = s * clamp(cos) with the target
    entry replaced by s * penalised; it also returns each row's best clamped cosine and its column
    (for the accuracy), which carry no gradient.

    Backward gives (softmax - onehot) * s / B: to ``penalised`` at the target entries, to ``cos``
    elsewhere (times clamp's mask). The chain clamp -> scatter -> scale -> exp -> softmax used to make
    about six B x C tensors; here the clamped copy becomes the probabilities in place, the same buffer
    becomes the gradient, and a boolean mask is the only other B x C tensor kept. The graph can
    therefore be backpropagated once (a second backward raises).
    """

    @staticmethod
    def forward(
        ctx: Any, cos: torch.Tensor, penalised: torch.Tensor, local_target: torch.Tensor, scale: float,
        distributed: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, width = cos.shape
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        cols = local_target[rows]
        keep = (cos >= -1.0) & (cos <= 1.0)  # where clamp passes the gradient (bounds included)
        z = cos.clamp(-1.0, 1.0)
        if width > 0:
            best, arg = z.max(dim=1)
        else:
            best, arg = z.new_full((batch,), float("-inf")), torch.zeros_like(local_target)
        z[rows, cols] = penalised[rows]
        z.mul_(scale)
        row_max = z.amax(dim=1) if width > 0 else z.new_full((batch,), float("-inf"))
        row_max = _all_reduce(row_max, dist.ReduceOp.MAX, distributed)
        target_logit = torch.zeros_like(row_max)
        target_logit[rows] = z[rows, cols]
        target_logit = _all_reduce(target_logit, dist.ReduceOp.SUM, distributed)
        probs = z.sub_(row_max.unsqueeze(1)).exp_()
        sum_exp = _all_reduce(probs.sum(dim=1), dist.ReduceOp.SUM, distributed)
        loss = (sum_exp.log() + row_max - target_logit).mean()
        probs.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(probs, keep, rows, cols)
        ctx.scale, ctx.used = scale, False
        ctx.mark_non_differentiable(best, arg)
        return loss, best, arg

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _best: Any, _arg: Any) -> tuple:
        if ctx.used:
            raise RuntimeError("the sharded MagFace loss reuses its buffers in backward: backpropagate it once")
        ctx.used = True
        grad_cos, keep, rows, cols = ctx.saved_tensors
        grad_cos[rows, cols] -= 1.0
        grad_cos.mul_(grad * (ctx.scale / grad_cos.shape[0]))
        grad_penalised = grad_cos.new_zeros(grad_cos.shape[0])
        grad_penalised[rows] = grad_cos[rows, cols]
        grad_cos[rows, cols] = 0.0
        grad_cos.mul_(keep)
        return grad_cos, grad_penalised, None, None, None


class ShardedMagFaceHead(ClassWeightHead):
    """This rank's slice of the MagFace class weights; the loss is computed across all ranks.

    ``forward(local_embeddings, local_labels)`` returns the keys of ``ClassWeightHead``: ``loss``,
    ``loss_id``, ``loss_g``, ``loss_g_weighted`` (identical on every rank), and ``x_norm``, ``m_a`` for the
    global batch (rank 0's samples first) and ``accuracy`` over the global batch. See the module docstring
    for the gradient contract with DDP. The initial rows depend on ``init_seed`` only, not on the
    sharding (``models.magface.init_rows``). ``sample_rate`` < 1 samples the classes of each step (module
    docstring); ``accuracy`` is then the top-1 among the kept classes.
    """

    def __init__(self, embedding_size: int, num_classes: int, rank: int, world_size: int,
                 config: MagFaceConfig | None = None, compensate_ddp_average: bool = True, init_seed: int = 0,
                 sample_rate: float = 1.0) -> None:
        super().__init__(embedding_size, num_classes, config, rank, world_size, init_seed)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.compensate_ddp_average = compensate_ddp_average
        self.sample_rate = float(sample_rate)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def check_group(self) -> None:
        """The collectives use the default process group: it must match the head's rank and world."""
        if not (dist.is_available() and dist.is_initialized()):
            if self.distributed:
                raise ValueError(f"a ShardedMagFaceHead of world_size={self.world_size} needs a process group")
            return
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ValueError(
                f"head built for rank {self.rank} of {self.world_size}, process group says rank "
                f"{dist.get_rank()} of {dist.get_world_size()}"
            )

    def forward(
        self, local_embeddings: torch.Tensor, local_labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if local_embeddings.dim() != 2 or local_embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must be (b, {self.embedding_size}), got {tuple(local_embeddings.shape)}"
            )
        self.check_group()
        with torch.autocast(device_type=local_embeddings.device.type, enabled=False):
            return self._forward_fp32(local_embeddings.float(), local_labels)

    def _forward_fp32(self, f_local: torch.Tensor, labels_local: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, local_batch = self.config, f_local.shape[0]
        if self.compensate_ddp_average and self.distributed:
            f_local = _ScaleGrad.apply(f_local, float(self.world_size))
        f = all_gather_with_grad(f_local)
        labels = all_gather_no_grad(labels_local.to(f.device, torch.long).view(-1))
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{low}, {high}]")
        terms = magnitude_terms(f, cfg)
        owned = (labels >= self.start) & (labels < self.end)
        local_target = torch.where(owned, labels - self.start, torch.full_like(labels, -1))
        rows = None
        if self.sample_rate < 1.0:
            rows = sample_rows(local_target[owned], self.end - self.start, self.sample_rate)
            local_target = torch.where(owned, torch.searchsorted(rows, local_target), local_target)
        weight = self.weight if rows is None else self.weight[rows]
        cos = F.linear(F.normalize(f, dim=1), F.normalize(weight.float(), dim=1))
        if cos.shape[1] > 0:
            cos_y = cos.gather(1, local_target.clamp_min(0).unsqueeze(1)).squeeze(1).clamp(-1.0, 1.0)
        else:
            cos_y = cos.new_zeros(cos.shape[0])
        penalised = target_cosine(cos_y, terms["m_a"], cfg)
        loss_id, best, arg = _ShardedMarginCrossEntropy.apply(cos, penalised, local_target, cfg.scale,
                                                               self.distributed)
        loss_g = self._regulariser(terms["g"], local_batch)
        if rows is not None and rows.numel() > 0:
            arg = rows[arg]
        return head_outputs(loss_id, loss_g, terms, self._accuracy(best, arg, labels), cfg)

    def _regulariser(self, g: torch.Tensor, local_batch: int) -> torch.Tensor:
        """mean g(a) over the global batch; its gradient flows only through this rank's own rows.

        Every rank holds all of g; letting each backpropagate all of it would count the regulariser
        world_size times once the all-gather sums the gradients. Value: exactly the global mean.
        """
        if not self.distributed:
            return g.mean()
        own = g[self.rank * local_batch : (self.rank + 1) * local_batch].sum() / g.shape[0]
        return g.mean().detach() + (own - own.detach())

    def _accuracy(self, best: torch.Tensor, arg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Top-1 of the margin-free cosines over all shards (first index on ties, like argmax), from
        each rank's per-row best cosine and its local row."""
        if self.end > self.start:
            arg = arg + self.start
        else:
            arg = torch.full_like(labels, self.num_classes)
        top = _all_reduce(best.clone(), dist.ReduceOp.MAX, self.distributed)
        pred = torch.where(best == top, arg, torch.full_like(arg, self.num_classes))
        pred = _all_reduce(pred, dist.ReduceOp.MIN, self.distributed)
        return (pred == labels).float().mean()
