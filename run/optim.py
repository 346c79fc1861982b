"""What the loop's update needs from the run's set-up: the guard that skips non-finite steps and stops a diverged
run, and the global gradient norm of a class-sharded model for --grad-clip (the update itself is in run.engine).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.utils import get_total_norm

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
