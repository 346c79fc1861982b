"""From gradients to an update: the fp16 overflow verdict shared by every rank, gradient clipping with the
global norm of a class-sharded model, and the guard that skips non-finite steps and stops a diverged run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from utils.logger import get_logger


class NonFiniteError(RuntimeError):
    pass


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is NaN/inf and aborts after ``limit`` consecutive ones."""

    limit: int = 20
    consecutive: int = 0
    total: int = 0

    def update(self, finite: bool, loss: float, epoch: int, step: int, global_step: int) -> bool:
        """Record one step's verdict (steps counted from 1, as in the progress lines); returns ``finite``,
        raises NonFiniteError at the limit."""
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        get_logger().warning(
            f"non-finite loss ({loss}) at epoch {epoch} step {step} (global step {global_step}): step skipped, "
            f"weights unchanged ({self.consecutive} in a row, limit --max-nonfinite {self.limit})"
        )
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite losses up to epoch {epoch} step {step} (global step "
                f"{global_step}): the run diverged. Weights were not updated by those steps; lower --lr, use "
                "--amp bf16 instead of fp16, set --grad-clip, or check the data."
            )
        return False


@dataclass(frozen=True)
class StepPolicy:
    """How the gradients of a step become an update; fixed for a run."""

    grad_clip: float = 0.0  # --grad-clip: the global gradient norm's limit (0 = off)
    # Global gradient norm for --grad-clip; None = the norm of every optimised gradient in this process.
    grad_norm_fn: Callable[[], torch.Tensor] | None = None
    # Ranks hold different parameters (sharded head): fp16 overflow verdicts must be all-reduced.
    sync_overflow: bool = False


def sharded_grad_norm(replicated: list[nn.Parameter], sharded: list[nn.Parameter],
                      distributed: bool) -> Callable[[], torch.Tensor]:
    """The global gradient L2 norm when some parameters are split over the ranks (the class-sharded head).

    ``replicated`` gradients (the DDP backbone) are identical on every rank after DDP's all-reduce and
    count once; the squared norms of the ``sharded`` slices are summed over the ranks. Every rank gets
    the same value, so clipping scales every rank's gradients by the same factor.
    """
    def norm() -> torch.Tensor:
        own = get_total_norm([p.grad for p in replicated if p.grad is not None]).float()
        shard = get_total_norm([p.grad for p in sharded if p.grad is not None]).float().to(own.device)
        shard_sq = shard * shard
        if distributed:
            tdist.all_reduce(shard_sq, op=tdist.ReduceOp.SUM)
        return torch.sqrt(own * own + shard_sq)

    return norm


def agree_on_overflow(scaler: torch.amp.GradScaler, optimizers: list[torch.optim.Optimizer], distributed: bool) -> bool:
    """After ``scaler.unscale_``: one fp16 overflow verdict for every optimizer and every rank.

    GradScaler decides per optimizer and per process. With the class-sharded head an inf in one rank's
    head shard would make that rank alone skip its update while the others step, and the ranks would
    drift apart. The found-inf flags of all optimizers are combined, all-reduced (MAX) and written back
    into GradScaler's per-optimizer state, where ``scaler.step`` and ``scaler.update`` read them (the
    place torch's own ShardedGradScaler synchronises). Returns True when the step is skipped.
    """
    states = [scaler._per_optimizer_states[id(opt)]["found_inf_per_device"] for opt in optimizers]
    flags = [flag for per_device in states for flag in per_device.values()]
    if not flags:
        return False
    verdict = torch.stack([f.to(flags[0].device, torch.float32) for f in flags]).amax()
    if distributed:
        tdist.all_reduce(verdict, op=tdist.ReduceOp.MAX)
    for per_device in states:
        for flag in per_device.values():
            flag.copy_(verdict)
    return bool(verdict)


def optimizer_step(optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   params: list[nn.Parameter], policy: StepPolicy) -> bool:
    """Unscale, agree on overflow, clip, step, update the scale; False when fp16 overflow skipped it."""
    skipped = False
    if scaler.is_enabled():
        for opt in optimizers:
            scaler.unscale_(opt)
        skipped = agree_on_overflow(scaler, optimizers, policy.sync_overflow)
    if policy.grad_clip > 0:
        norm = policy.grad_norm_fn() if policy.grad_norm_fn is not None else \
            get_total_norm([p.grad for p in params if p.grad is not None])
        clip_grads_with_norm_(params, policy.grad_clip, norm)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return not skipped
