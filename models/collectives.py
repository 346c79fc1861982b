"""Tensor collectives of the class-sharded head: which rows a rank holds, and gathering rows across ranks.

Each works without a process group (or with one of size 1), where it is the identity, so a head can call
them unconditionally. The process group itself is set up by ``utils.dist.init_distributed``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _world_size() -> int:
    """The size of the default process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous [start, end) of the classes held by ``rank``; the first C % W ranks get one more.

    Works for any class count, including fewer classes than ranks (some shards are then empty).
    """
    if num_classes < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"shard_range needs num_classes >= 0 and 0 <= rank < world_size, got "
            f"num_classes={num_classes}, world_size={world_size}, rank={rank}"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Each rank's loss depends on every row, so the gradient of the rows this rank contributed
        # is the sum over ranks of their gradients for those rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (same shape on all ranks) in rank order, autograd-aware.

    Backward returns the sum over ranks of the gradients of this rank's rows (every rank must call
    backward). That is the exact gradient when each rank's loss holds its own share of the terms,
    as in the class-sharded head; a term that every rank computes in full is counted world_size times.
    """
    if _world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (same shape on all ranks) along dim 0, no autograd."""
    if _world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_row_shards(local: torch.Tensor, num_classes: int, dst: int | None = None) -> torch.Tensor | None:
    """Reassemble a tensor whose rows are split by ``shard_range`` (a sharded head's weight or its
    optimizer state) on rank ``dst`` (None elsewhere), or on every rank when ``dst`` is None.

    Shards may differ in size by one row (or be empty), so each is padded to the largest first.
    """
    if _world_size() == 1:
        return local.detach().clone()
    world, rank = dist.get_world_size(), dist.get_rank()
    bounds = [shard_range(num_classes, world, r) for r in range(world)]
    if local.shape[0] != bounds[rank][1] - bounds[rank][0]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, shard_range({num_classes}, {world}) "
                         f"gives it {bounds[rank][1] - bounds[rank][0]}")
    padded = local.new_zeros((-(-num_classes // world),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    if dst is None:
        dist.all_gather(parts, padded)
    else:
        dist.gather(padded, parts if rank == dst else None, dst=dst)
        if rank != dst:
            return None
    return torch.cat([part[: end - start] for part, (start, end) in zip(parts, bounds, strict=True)])
