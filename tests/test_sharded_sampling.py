"""Class sampling in the sharded head (``sample_rate``): r = 1 is today's head, r < 1 the exact softmax over the
kept classes, checked against the dense head restricted to the same classes, on one process and on 2 and 3 gloo
processes.
"""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from models.collectives import all_gather_no_grad, shard_range
from models.magface import MagFaceConfig, MagFaceHead
from models.sharded import ShardedMagFaceHead, sample_rows
from tests.training import head_step

DIM = 8
TOL = {"rtol": 1e-5, "atol": 1e-6}
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _case(num_classes: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, DIM, generator=gen)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    direction = nn.functional.normalize(torch.randn(batch, DIM, generator=gen)
                                        + 2.0 * nn.functional.normalize(weight[labels], dim=1), dim=1)
    return weight, direction * torch.linspace(5.0, 140.0, batch)[:, None], labels


def _dense_on(kept: torch.Tensor, weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor,
              config: MagFaceConfig) -> tuple:
    """The dense head over the classes ``kept`` (sorted global indices) only, labels renumbered."""
    head = MagFaceHead(DIM, kept.numel(), config)
    return head_step(head, weight[kept], emb, torch.searchsorted(kept, labels))


def test_sample_rows_keeps_every_positive_and_the_asked_count() -> None:
    torch.manual_seed(0)
    positives = torch.tensor([3, 3, 17, 40])
    rows = sample_rows(positives, 100, 0.1)
    assert rows.numel() == 10 and torch.equal(rows, rows.unique())  # sorted, no repeats
    assert set(positives.tolist()) <= set(rows.tolist())
    torch.manual_seed(0)
    assert torch.equal(sample_rows(positives, 100, 0.1), rows)  # the global RNG decides it
    torch.manual_seed(1)
    assert not torch.equal(sample_rows(positives, 100, 0.1), rows)
    many = torch.arange(0, 100, 4)  # 25 positives, more than 10% of 100
    assert torch.equal(sample_rows(many, 100, 0.1), many)
    assert sample_rows(torch.tensor([], dtype=torch.long), 0, 0.5).numel() == 0
    assert sample_rows(torch.tensor([1]), 7, 0.3).numel() == math.ceil(0.3 * 7)


def test_rate_one_is_the_head_of_before_and_draws_nothing() -> None:
    weight, emb, labels = _case(12, 10)
    config = MagFaceConfig()
    ref = head_step(ShardedMagFaceHead(DIM, 12, 0, 1, config), weight, emb, labels)
    state = torch.random.get_rng_state()
    got = head_step(ShardedMagFaceHead(DIM, 12, 0, 1, config, sample_rate=1.0), weight, emb, labels)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(ref[1:], got[1:], strict=True):
        assert torch.equal(a, b)
    for key in ref[0]:
        assert torch.equal(ref[0][key], got[0][key]), key


@pytest.mark.parametrize("variant", ["arc", "cos"])
def test_one_process_sampled_head_is_the_dense_head_on_the_kept_classes(variant: str) -> None:
    config = MagFaceConfig() if variant == "arc" else MagFaceConfig(variant="cos", l_margin=0.35, u_margin=0.8,
                                                                    lambda_g=150.0)
    weight, emb, labels = _case(40, 8, seed=3)
    torch.manual_seed(11)
    kept = sample_rows(labels, 40, 0.3)
    torch.manual_seed(11)
    out, emb_grad, weight_grad = head_step(ShardedMagFaceHead(DIM, 40, 0, 1, config, sample_rate=0.3),
                                      weight, emb, labels)
    assert kept.numel() == 12 and set(labels.tolist()) <= set(kept.tolist())
    ref, ref_emb_grad, ref_weight_grad = _dense_on(kept, weight, emb, labels, config)
    for key in ("loss", "loss_id", "loss_g", "x_norm", "m_a", "accuracy"):
        assert_close(out[key], ref[key], **TOL, msg=key)
    assert_close(emb_grad, ref_emb_grad, **TOL)
    assert_close(weight_grad[kept], ref_weight_grad, **TOL)
    dropped = torch.ones(40, dtype=torch.bool)
    dropped[kept] = False
    assert torch.count_nonzero(weight_grad[dropped]) == 0


def test_bad_rate_is_refused() -> None:
    for rate in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sample_rate"):
            ShardedMagFaceHead(DIM, 10, 0, 1, sample_rate=rate)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, num_classes: int, rate: float, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        local = 4
        weight, emb, labels = _case(num_classes, local * world, seed=5)
        start, end = shard_range(num_classes, world, rank)
        mine = slice(rank * local, (rank + 1) * local)
        seed = 1000 + rank  # what the trainer's per-(seed, rank, step) seeding gives each rank
        torch.manual_seed(seed)
        owned = labels[(labels >= start) & (labels < end)] - start
        kept_local = sample_rows(owned, end - start, rate)
        kept = torch.cat(all_gather_no_grad_list(kept_local + start, world))
        torch.manual_seed(seed)
        head = ShardedMagFaceHead(DIM, num_classes, rank, world, MagFaceConfig(), compensate_ddp_average=False,
                                  sample_rate=rate)
        out, emb_grad, weight_grad = head_step(head, weight[start:end], emb[mine], labels[mine])
        ref, ref_emb_grad, ref_weight_grad = _dense_on(kept, weight, emb, labels, MagFaceConfig())
        pos = torch.searchsorted(kept, kept_local + start)
        for key in ("loss", "loss_id", "loss_g", "accuracy"):
            assert_close(out[key], ref[key], **TOL, msg=key)
        assert_close(emb_grad, ref_emb_grad[mine], **TOL)
        assert_close(weight_grad[kept_local], ref_weight_grad[pos], **TOL)
        assert int(torch.count_nonzero(weight_grad)) == int(torch.count_nonzero(weight_grad[kept_local]))
        queue.put((rank, "ok", kept_local.numel(), end - start, owned.unique().numel()))
    except Exception as exc:  # reported to the test, which names the rank
        queue.put((rank, f"{type(exc).__name__}: {exc}", 0, 0, 0))
    finally:
        dist.destroy_process_group()


def all_gather_no_grad_list(tensor: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's (differently sized) 1-D tensor, padded with -1 for the gather, in rank order."""
    size = all_gather_no_grad(torch.tensor([tensor.numel()]))
    padded = torch.full((int(size.max()),), -1, dtype=tensor.dtype)
    padded[: tensor.numel()] = tensor
    parts = all_gather_no_grad(padded).view(world, -1)
    return [part[: int(n)] for part, n in zip(parts, size, strict=True)]


@pytest.mark.parametrize("world,num_classes,rate", [(2, 30, 0.25), (3, 20, 0.5)])
def test_sharded_sampled_head_is_the_dense_head_on_the_union_of_kept_classes(world: int, num_classes: int,
                                                                             rate: float) -> None:
    ctx = mp.get_context(START_METHOD)
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, num_classes, rate, queue)) for r in range(world)]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert [r[1] for r in results] == ["ok"] * world, results
    for _rank, _, kept, held, positives in results:
        assert kept == min(held, max(math.ceil(rate * held), positives)) < held
