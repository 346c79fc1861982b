"""One optimizer step of the trainer with the class-sharded head on 2 gloo processes.

- ``--grad-clip``: the global gradient norm (DDP backbone once + every rank's head shard) is the same
  on both ranks and equals the dense model's norm; the clipped step equals the dense clipped step.
- fp16 GradScaler: an inf in ONE rank's head-shard gradient makes EVERY rank skip the step and back
  off the scale; without the synchronisation rank 0 would step alone (the control case).
"""
from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.collectives import shard_range
from models.magface import MagFaceHead
from models.sharded import ShardedMagFaceHead
from run.engine import optimizer_step
from run.optim import sharded_grad_norm
from tests.training import free_port
from utils.dist import cleanup, exit_process, init_distributed

WORLD, LOCAL_BATCH, DIM, CLASSES, IN = 2, 4, 8, 10, 6
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def _problem() -> dict[str, torch.Tensor]:
    """A linear 'backbone' with embedding magnitudes around [l_a, u_a], a head, inputs and labels."""
    g = torch.Generator().manual_seed(11)
    return {"backbone": torch.randn(DIM, IN, generator=g) * 8.0, "head": torch.randn(CLASSES, DIM, generator=g),
            "inputs": torch.randn(WORLD * LOCAL_BATCH, IN, generator=g),
            "labels": torch.randperm(WORLD * LOCAL_BATCH, generator=g) % CLASSES}


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(IN, DIM, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _sharded_setup(rank: int, case: dict, scaler_enabled: bool):
    backbone = _linear(case["backbone"])
    model = DistributedDataParallel(backbone)
    head = ShardedMagFaceHead(DIM, CLASSES, rank, WORLD)
    start, end = shard_range(CLASSES, WORLD, rank)
    with torch.no_grad():
        head.weight.copy_(case["head"][start:end])
    opts = [torch.optim.SGD(backbone.parameters(), **SGD), torch.optim.SGD(head.parameters(), **SGD)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=scaler_enabled)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    loss = head(model(case["inputs"][rows]), case["labels"][rows])["loss"]
    scaler.scale(loss).backward()
    return backbone, head, opts, scaler, (start, end)




def _gathered(value: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(value) for _ in range(WORLD)]
    dist.all_gather(parts, value.contiguous())
    return parts


def _clip_worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    init_distributed(backend="gloo")
    try:
        case = _problem()
        # dense reference: the whole batch, the whole head, torch's own clip_grad_norm_
        ref_backbone, ref_head = _linear(case["backbone"]), MagFaceHead(DIM, CLASSES)
        with torch.no_grad():
            ref_head.weight.copy_(case["head"])
        ref_head(ref_backbone(case["inputs"]), case["labels"])["loss"].backward()
        ref_params = [*ref_backbone.parameters(), *ref_head.parameters()]
        dense_norm = torch.nn.utils.get_total_norm([p.grad for p in ref_params])
        clip = float(dense_norm) / 3
        torch.nn.utils.clip_grad_norm_(ref_params, clip)
        torch.optim.SGD(ref_params, **SGD).step()

        backbone, head, opts, scaler, (start, end) = _sharded_setup(rank, case, scaler_enabled=False)
        local_only = sharded_grad_norm(list(backbone.parameters()), list(head.parameters()), False)()
        norm_fn = sharded_grad_norm(list(backbone.parameters()), list(head.parameters()), True)
        norms = _gathered(norm_fn().reshape(1))
        torch.testing.assert_close(norms[0], norms[1], rtol=0, atol=0)
        torch.testing.assert_close(norms[0][0], dense_norm, rtol=1e-5, atol=1e-6)
        # the all-reduce matters: each rank's own shard alone gives different norms
        assert not torch.equal(*_gathered(local_only.reshape(1)))

        params = [p for opt in opts for g in opt.param_groups for p in g["params"]]
        assert optimizer_step(opts, scaler, params, grad_clip=clip, grad_norm_fn=norm_fn, distributed=True)
        torch.testing.assert_close(backbone.weight, ref_backbone.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.weight, ref_head.weight[start:end], rtol=1e-5, atol=1e-6)
    finally:
        cleanup()
    exit_process(0)  # success: skip the gloo teardown that can abort at interpreter exit


def _overflow_worker(rank: int, port: int, synchronise: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    init_distributed(backend="gloo")
    try:
        backbone, head, opts, scaler, _ = _sharded_setup(rank, _problem(), scaler_enabled=True)
        before = [copy.deepcopy(backbone.weight.detach()), copy.deepcopy(head.weight.detach())]
        if rank == 1:
            head.weight.grad[0, 0] = float("inf")
        params = [p for opt in opts for g in opt.param_groups for p in g["params"]]
        stepped = optimizer_step(opts, scaler, params, distributed=synchronise)
        changed = [not torch.equal(b, a) for b, a in zip(before, (backbone.weight, head.weight), strict=True)]
        if synchronise:
            assert not stepped and changed == [False, False], (rank, stepped, changed)
            assert scaler.get_scale() == 2.0**7  # backed off on both ranks alike
        elif rank == 0:
            # the bug this guards against: rank 0 saw no overflow and stepped alone
            assert stepped and changed == [True, True], (rank, stepped, changed)
        assert all(p.grad is None for p in params)
    finally:
        cleanup()
    exit_process(0)  # success: skip the gloo teardown that can abort at interpreter exit


def test_grad_clip_norm_is_global_and_equals_dense():
    mp.spawn(_clip_worker, args=(free_port(),), nprocs=WORLD, join=True)


def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank():
    mp.spawn(_overflow_worker, args=(free_port(), True), nprocs=WORLD, join=True)


def test_without_sync_ranks_would_diverge():
    mp.spawn(_overflow_worker, args=(free_port(), False), nprocs=WORLD, join=True)
