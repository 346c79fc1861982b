"""The class-sharded MagFace head on 2 and 3 gloo processes equals the dense head on the whole batch.

Every worker builds the same global batch and full weight, runs ``MagFaceHead`` on all of it and
``ShardedMagFaceHead`` on its own rows and classes, and compares loss, outputs and gradients.
"""
from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close

from models.collectives import all_gather_with_grad
from models.magface import MagFaceConfig, MagFaceHead
from models.sharded import ShardedMagFaceHead
from tests.training import head_step
from utils.dist import DistInfo, barrier, broadcast_object, cleanup, get_world_size, init_distributed

DIM = 8
LOCAL_BATCH = 4
MARGINS = {
    "arc": {},
    "arc_hard": {"easy_margin": False},
    "cos": {"variant": "cos", "l_margin": 0.35, "u_margin": 0.8, "lambda_g": 150.0},
}
# uneven shards; 2 classes on 3 ranks leaves rank 2 without classes
CLASS_COUNTS = {2: (10, 7), 3: (10, 2)}
DDP_CLASSES = 10
# fork: the workers reuse the parent's imported torch (spawn re-imports it: 3-4x slower on 2 cores);
# they set one intra-op thread, so no OpenMP pool inherited from the parent is ever entered.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
DEADLINE_S = 180.0
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_case(num_classes: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full weight, embeddings and labels; magnitudes straddle [l_a, u_a], targets on every class."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, DIM, generator=gen)
    labels = torch.arange(batch) % num_classes
    labels = labels[torch.randperm(batch, generator=gen)]
    direction = torch.randn(batch, DIM, generator=gen)
    unit_w = nn.functional.normalize(weight, dim=1)
    # half the samples lean towards their class (cos > 0, often the argmax), one points away from it
    pull = torch.tensor([3.0 if i % 2 == 0 else 0.0 for i in range(batch)])
    direction = nn.functional.normalize(direction + pull[:, None] * unit_w[labels], dim=1)
    direction[1] = -unit_w[labels[1]]
    magnitudes = torch.linspace(3.0, 150.0, batch)[torch.randperm(batch, generator=gen)]
    return weight, direction * magnitudes[:, None], labels


def _dense(weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, kwargs: dict) -> tuple:
    return head_step(MagFaceHead(DIM, weight.shape[0], MagFaceConfig(**kwargs)), weight, emb, labels)


def _ddp_case(world: int) -> dict[str, torch.Tensor]:
    """A linear 'backbone' whose outputs have magnitudes around [l_a, u_a], its inputs and targets."""
    gen = torch.Generator().manual_seed(7)
    weight, _, labels = _global_case(DDP_CLASSES, LOCAL_BATCH * world, seed=3)
    inputs = torch.randn(LOCAL_BATCH * world, 6, generator=gen)
    return {"head": weight, "labels": labels, "inputs": inputs,
            "backbone": torch.randn(DIM, 6, generator=gen) * 8.0}


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer


# ---------------------------------------------------------------- worker side (no assertions needed)
def _sharded_case(rank: int, world: int, num_classes: int, kwargs: dict) -> dict:
    weight, emb, labels = _global_case(num_classes, LOCAL_BATCH * world, seed=10 * num_classes + world)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    head = ShardedMagFaceHead(DIM, num_classes, rank, world, MagFaceConfig(**kwargs), compensate_ddp_average=False)
    head.load_full_weight(weight)
    x = emb[rows].clone().requires_grad_(True)
    out = head(x, labels[rows])
    out["loss"].backward()
    result = {k: v.detach() for k, v in out.items()}
    losses = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(losses, out["loss"].detach().reshape(1))
    result.update(x_grad=x.grad, w_grad=head.weight.grad, range=(head.start, head.end), all_losses=losses)
    return result


def _ddp_run(rank: int, world: int) -> dict:
    """DDP-wrapped backbone + head with the default (compensating) gradient scale."""
    case = _ddp_case(world)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    backbone = _linear(case["backbone"])
    ddp = DistributedDataParallel(backbone)
    head = ShardedMagFaceHead(DIM, DDP_CLASSES, rank, world)
    head.load_full_weight(case["head"])
    emb = ddp(case["inputs"][rows])
    emb.retain_grad()
    head(emb, case["labels"][rows])["loss"].backward()
    return {"backbone_w": backbone.weight.grad, "backbone_b": backbone.bias.grad,
            "head_w": head.weight.grad, "emb": emb.grad, "range": (head.start, head.end)}


def _gather_run(rank: int, world: int, num_classes: int) -> dict:
    full = torch.randn(num_classes, DIM, generator=torch.Generator().manual_seed(5))
    head = ShardedMagFaceHead(DIM, num_classes, rank, world)
    head.load_full_weight(full)
    return {"to_0": head.gather_full_weight(dst=0), "to_last": head.gather_full_weight(dst=world - 1),
            "to_all": head.gather_full_weight(dst=None)}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    info = init_distributed(backend="gloo", timeout_s=60)
    try:
        result = {"info": (info.rank, info.world_size, info.local_rank, info.is_main, info.backend)}
        result["helpers"] = (get_world_size(), broadcast_object(f"from rank {rank}", src=world - 1))
        barrier()
        for num_classes in CLASS_COUNTS[world]:
            for name, kwargs in MARGINS.items():
                result[num_classes, name] = _sharded_case(rank, world, num_classes, kwargs)
            result[num_classes, "gather"] = _gather_run(rank, world, num_classes)
        result["ddp"] = _ddp_run(rank, world)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


# ---------------------------------------------------------------- test side
def _launch(world: int, out_dir: str) -> None:
    """Run the workers; a worker's exception re-raises here, a hang fails the test after DEADLINE_S."""
    context = mp.start_processes(
        _worker, args=(world, _free_port(), out_dir), nprocs=world, join=False, start_method=START_METHOD
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{world} gloo workers did not finish within {DEADLINE_S} s")


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list]:
    """Spawn the gloo workers once per world size; every test below reads their results."""
    world = request.param
    out_dir = tmp_path_factory.mktemp(f"sharded{world}")
    _launch(world, str(out_dir))
    return world, [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_init_distributed_reads_torchrun_env(runs: tuple[int, list]) -> None:
    world, results = runs
    for rank, res in enumerate(results):
        assert res["info"] == (rank, world, rank, rank == 0, "gloo")
        assert res["helpers"] == (world, f"from rank {world - 1}")


@pytest.mark.parametrize("name", list(MARGINS))
def test_sharded_equals_dense(runs: tuple[int, list], name: str) -> None:
    world, results = runs
    for num_classes in CLASS_COUNTS[world]:
        weight, emb, labels = _global_case(num_classes, LOCAL_BATCH * world, seed=10 * num_classes + world)
        dense, x_grad, w_grad = _dense(weight, emb, labels, MARGINS[name])
        assert 0 < dense["accuracy"].item() < 1
        for rank, res in enumerate(r[num_classes, name] for r in results):
            msg = f"{name}, {num_classes} classes, rank {rank} of {world}"
            for key in ("loss", "loss_id", "loss_g", "loss_g_weighted", "x_norm", "m_a", "accuracy"):
                assert_close(res[key], dense[key].detach(), **TOL, msg=f"{key}: {msg}")
            start, end = res["range"]
            rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            assert_close(res["x_grad"], x_grad[rows], **TOL, msg=f"embedding grad: {msg}")
            assert_close(res["w_grad"], w_grad[start:end], **TOL, msg=f"weight grad: {msg}")
            assert all(torch.equal(v, res["all_losses"][0]) for v in res["all_losses"]), msg
            owns_a_target = bool(((labels >= start) & (labels < end)).any())
            assert owns_a_target or end == start, f"rank {rank} owns no target: {msg}"


def test_gather_full_weight(runs: tuple[int, list]) -> None:
    world, results = runs
    for num_classes in CLASS_COUNTS[world]:
        full = torch.randn(num_classes, DIM, generator=torch.Generator().manual_seed(5))
        for rank, res in enumerate(r[num_classes, "gather"] for r in results):
            assert torch.equal(res["to_all"], full)
            assert (res["to_0"] is None) == (rank != 0)
            assert (res["to_last"] is None) == (rank != world - 1)
            for got in (res["to_0"], res["to_last"]):
                assert got is None or torch.equal(got, full)


def test_ddp_backbone_gets_dense_gradient(runs: tuple[int, list]) -> None:
    """The trainer's contract: loss.backward() under DDP leaves every gradient equal to the dense one."""
    world, results = runs
    case = _ddp_case(world)
    backbone = _linear(case["backbone"])
    emb = backbone(case["inputs"])
    emb.retain_grad()
    norms = emb.detach().norm(dim=1)
    assert ((norms > 10) & (norms < 110)).sum() >= 2  # the magnitude path carries gradient
    head = MagFaceHead(DIM, DDP_CLASSES)
    with torch.no_grad():
        head.weight.copy_(case["head"])
    head(emb, case["labels"])["loss"].backward()
    for rank, res in enumerate(r["ddp"] for r in results):
        start, end = res["range"]
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        assert_close(res["backbone_w"], backbone.weight.grad, **TOL)
        assert_close(res["backbone_b"], backbone.bias.grad, **TOL)
        assert_close(res["head_w"], head.weight.grad[start:end], **TOL)
        assert_close(res["emb"], world * emb.grad[rows], **TOL)


def test_single_process_head_equals_dense() -> None:
    weight, emb, labels = _global_case(10, 6, seed=1)
    dense, dense_x_grad, dense_w_grad = _dense(weight, emb, labels, MARGINS["arc"])
    head = ShardedMagFaceHead(DIM, 10, 0, 1)
    head.load_full_weight(weight)
    x = emb.clone().requires_grad_(True)
    out = head(x, labels)
    out["loss"].backward()
    assert_close(out["loss"], dense["loss"], **TOL)
    assert_close(x.grad, dense_x_grad, **TOL)
    assert_close(head.weight.grad, dense_w_grad, **TOL)
    assert torch.equal(head.gather_full_weight(), weight)
    assert_close(out["accuracy"], dense["accuracy"], **TOL)


def test_cosines_beyond_one_and_a_second_backward() -> None:
    """An embedding parallel to its class row (cos = 1 up to rounding, where clamp may cut the gradient)
    matches the dense head; the fused loss reuses its buffers, so a second backward is refused."""
    weight, emb, labels = _global_case(10, 6, seed=2)
    emb[0] = weight[labels[0]] * 3.0
    for name, kwargs in MARGINS.items():
        dense, dense_x_grad, dense_w_grad = _dense(weight, emb, labels, kwargs)
        head = ShardedMagFaceHead(DIM, 10, 0, 1, MagFaceConfig(**kwargs))
        head.load_full_weight(weight)
        x = emb.clone().requires_grad_(True)
        out = head(x, labels)
        out["loss"].backward(retain_graph=True)
        assert_close(out["loss"], dense["loss"], **TOL, msg=name)
        assert_close(x.grad, dense_x_grad, **TOL, msg=name)
        assert_close(head.weight.grad, dense_w_grad, **TOL, msg=name)
        with pytest.raises(RuntimeError, match="backpropagate it once"):
            out["loss"].backward()


def test_input_errors() -> None:
    head = ShardedMagFaceHead(DIM, 10, 0, 1)
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, DIM), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(2, DIM + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="process group"):
        ShardedMagFaceHead(DIM, 10, 0, 2)(torch.randn(2, DIM), torch.tensor([0, 1]))


def test_single_process_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed()
    assert info == DistInfo(0, 1, 0, None) and info.is_main and not info.distributed
    assert get_world_size() == 1
    barrier()
    obj = {"epoch": 3}
    assert broadcast_object(obj) is obj
    t = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(t) is t
    cleanup()


def test_init_distributed_environment_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not set"):
        init_distributed()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        init_distributed()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="outside"):
        init_distributed()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed()
