"""Memory and step time of the class-sharded MagFace head (models/sharded.py) against class count and ranks.

    python -m bench.bench_sharded_head [--classes 100000,1000000,2000000] [--world-sizes 1,2,4]
                                       [--sample-rates 1.0,0.3,0.1] [--json out.json]

Each (classes, world size) runs ``world_size`` CPU processes joined by gloo; each holds its shard of the
[C, D] class weights and runs forward + backward of ``ShardedMagFaceHead`` on its slice of one fixed
global batch (the same embeddings and labels whatever the world size, so the loss must agree). The
embedding size and batch are reduced (default D = 128, global batch 64) so that 2M classes fit a small
machine. Reported per configuration: the bytes of one weight shard, the largest per-rank peak RSS and
its growth over the rank's RSS before the head was built, wall and CPU time of a step (the slowest
rank), and the loss. ``--sample-rates`` adds PartialFC-style class sampling (the head's ``sample_rate``): each
step then keeps ceil(r * C_local) class rows per rank (the loss is over those, so it differs from r = 1).
Each rank uses --threads threads: with more ranks than cores the wall time
stops falling while the per-rank CPU time still does.
"""
from __future__ import annotations

import argparse
import itertools
import os
import queue
import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import PeakRss, csv_arg, format_machine, machine_info, print_results, row_line
from models.sharded import ShardedMagFaceHead

COLUMNS = ("classes", "world", "sample_rate", "dim", "global_batch", "shard_mb", "peak_rss_mb", "rss_growth_mb",
           "step_ms", "cpu_ms_per_rank", "loss", "status")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch_data(batch: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings with magnitudes spread over ~[15, 75] (inside [l_a, u_a]) and labels, fixed by the seed."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1)
    norms = 15 + 60 * torch.rand(batch, 1, generator=g)
    return direction * norms, torch.randint(0, classes, (batch,), generator=g)


def rank_main(rank: int, world: int, port: int, classes: int, rate: float, dim: int, batch: int, steps: int,
              warmup: int, threads: int, results) -> None:
    """One rank: join the group, build the shard, time forward + backward; puts a dict on ``results``."""
    try:
        torch.set_num_threads(threads)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        feats, labels = global_batch_data(batch, dim, classes)
        local = batch // world
        emb = feats[rank * local:(rank + 1) * local].clone().requires_grad_(True)
        y = labels[rank * local:(rank + 1) * local].clone()
        with PeakRss() as mem:
            head = ShardedMagFaceHead(dim, classes, rank, world, compensate_ddp_average=False, sample_rate=rate)
            walls, cpus, loss = [], [], float("nan")
            for i in range(warmup + steps):
                torch.manual_seed(1000 * i + rank)  # as the trainer seeds each step: the class draw differs
                dist.barrier()
                t, c = time.perf_counter(), time.process_time()
                out = head(emb, y)
                out["loss"].backward()
                head.weight.grad, emb.grad = None, None
                dist.barrier()
                if i >= warmup:
                    walls.append(time.perf_counter() - t)
                    cpus.append(time.process_time() - c)
                loss = float(out["loss"].detach())
        results.put({"rank": rank, "shard_bytes": head.weight.numel() * head.weight.element_size(),
                     "peak_rss_mb": mem.peak_mb, "base_rss_mb": mem.before_mb, "step_s": min(walls),
                     "cpu_s": min(cpus), "loss": loss})
    except Exception as e:  # reported by the parent, which stops the other ranks
        results.put({"rank": rank, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_config(classes: int, world: int, rate: float, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, world, port, classes, rate, args.dim, args.global_batch,
                                                  args.steps, args.warmup, args.threads, results))
             for r in range(world)]
    for p in procs:
        p.start()
    got, deadline = [], time.monotonic() + args.timeout
    try:
        while len(got) < world:
            try:
                got.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                raise TimeoutError(f"no result from {world - len(got)} rank(s) after {args.timeout}s") from None
            if "error" in got[-1]:
                raise RuntimeError(f"rank {got[-1]['rank']}: {got[-1]['error']}")
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and len(got) < world and results.empty():
                raise RuntimeError(f"a rank exited with code {dead[0].exitcode} (killed for memory?)")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
    losses = [g["loss"] for g in got]
    return {"classes": classes, "world": world, "sample_rate": rate, "dim": args.dim, "global_batch": args.global_batch,
            "shard_mb": max(g["shard_bytes"] for g in got) / 2**20,
            "peak_rss_mb": max(g["peak_rss_mb"] for g in got),
            "rss_growth_mb": max(g["peak_rss_mb"] - g["base_rss_mb"] for g in got),
            "step_ms": 1000 * max(g["step_s"] for g in got), "cpu_ms_per_rank": 1000 * max(g["cpu_s"] for g in got),
            "loss": losses[0], "loss_spread": max(losses) - min(losses), "status": "ok"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--classes", type=lambda s: [int(float(v)) for v in csv_arg(s)], default="100000,1000000,2000000")
    p.add_argument("--world-sizes", type=lambda s: [int(v) for v in csv_arg(s)], default="1,2,4")
    p.add_argument("--sample-rates", type=lambda s: [float(v) for v in csv_arg(s)], default="1.0",
                   help="class sampling rates of the head (1.0: every class, the exact softmax)")
    p.add_argument("--dim", type=int, default=128, help="embedding size (512 in the paper; reduced to fit)")
    p.add_argument("--global-batch", type=int, default=64, help="embeddings per step over all ranks")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    bad = [w for w in args.world_sizes if args.global_batch % w]
    if bad:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by world size(s) {bad}")
    info = machine_info()
    print(format_machine(info), flush=True)
    rows = []
    for classes, world, rate in itertools.product(args.classes, args.world_sizes, args.sample_rates):
        try:
            row = run_config(classes, world, rate, args)
        except Exception as e:  # one configuration failing (memory, timeout) must not stop the others
            row = {"classes": classes, "world": world, "sample_rate": rate, "status": f"FAILED {e}"[:200]}
        rows.append(row)
        print(row_line(row), flush=True)
    print_results(f"sharded MagFace head, forward + backward, gloo on CPU, {args.threads} thread(s) per rank, "
                  f"best of {args.steps} steps after {args.warmup}", info, rows, COLUMNS, args.json, args)
    return rows


if __name__ == "__main__":
    main()
