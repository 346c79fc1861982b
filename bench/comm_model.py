"""Per-step communication of multi-GPU training and the scaling efficiency it allows (a model, not a run).

    python -m bench.comm_model                      # the README's tables (markdown)
    python -m bench.comm_model --json comm.json     # also the rows as JSON
    python -m bench.comm_model --head-classes 2000000 --head-gpus 8,64,256 --sample-rates 1,0.1   # the head table

What one training step sends, per rank, with ``run/train_dist.py`` (DDP backbone + class-sharded head,
``models/sharded.py``), n ranks, b images per rank, D-dim embeddings, P backbone parameters:

- DDP: one all-reduce of every backbone gradient, fp32 (the trainer registers no compression hook,
  so bf16 autocast still reduces fp32 gradients: 4 P bytes; a bf16 hook would halve it). BatchNorm
  statistics are not broadcast (``broadcast_buffers=False``).
- sharded head, forward: all-gather of the fp32 embeddings (n b D x 4 bytes in all) and of the int64
  labels; five all-reduces of one number per global row (row max, target logit, sum of exp, and the
  best cosine and its class for the accuracy).
- sharded head, backward: the embedding gradient of the global batch (n b D fp32) is all-reduced
  (``models.collectives._AllGatherWithGrad``); a reduce-scatter would move half of it.
- one int32 all-reduce per step (the preemption verdict, ``run.preempt``).

Costs (ring algorithms, bus bandwidth ``bw`` per GPU): all-reduce of S bytes 2 (n-1)/n S / bw,
all-gather of S bytes in total (n-1)/n S / bw, plus a fixed latency per collective. The step time at
n ranks is the measured single-GPU step T1 (per-rank work is unchanged: the sharded head gives each rank
C/n classes but n b rows) plus the communication the step waits for:

- no overlap (upper bound): T1 + head + DDP;
- overlap (lower bound): DDP's all-reduce runs under the backward pass (a fraction ``backward`` of T1)
  except the last bucket, which can only start when the backward ends; the head's collectives sit on
  the critical path either way: T1 + head + max(last bucket, DDP - backward T1).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from bench.common import format_rows
from utils.atomic import write_json
from utils.table import format_markdown

GB = 1e9
DDP_BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket_cap_mb=25
# measured on one H200, batch 256, bf16, compile, RecordIO loader (bench/results/h200_2026-11-27/)
MEASURED_IMG_S = {"iresnet50": 5791.0, "iresnet100": 3778.0}


@dataclass(frozen=True)
class Fabric:
    """A link as the collectives see it: bus bandwidth per GPU (bytes/s) and a fixed cost per collective."""

    name: str
    bytes_per_s: float
    latency_s: float


# NVLink4 (H100/H200 SXM): ~450 GB/s per direction per GPU; the networks: one NIC per GPU at line rate.
FABRICS = (
    Fabric("NVLink 450 GB/s", 450 * GB, 10e-6),
    Fabric("400 Gb/s", 400 * GB / 8, 30e-6),
    Fabric("100 Gb/s", 100 * GB / 8, 30e-6),
)


@dataclass(frozen=True)
class Collective:
    name: str
    kind: str  # "all_reduce" or "all_gather"
    nbytes: float  # all-reduce: the buffer; all-gather: the gathered result (all ranks together)
    part: str  # "ddp" or "head"


def ring_all_reduce_s(nbytes: float, n: int, bytes_per_s: float) -> float:
    """Bandwidth time of a ring all-reduce of ``nbytes`` over ``n`` ranks: 2 (n-1)/n * S / bw."""
    return 0.0 if n <= 1 else 2 * (n - 1) / n * nbytes / bytes_per_s


def ring_all_gather_s(total_bytes: float, n: int, bytes_per_s: float) -> float:
    """Bandwidth time of a ring all-gather whose result is ``total_bytes``: (n-1)/n * S / bw."""
    return 0.0 if n <= 1 else (n - 1) / n * total_bytes / bytes_per_s


def wire_bytes(c: Collective, n: int) -> float:
    """Bytes each rank sends for one collective (ring)."""
    factor = 2 * (n - 1) / n if c.kind == "all_reduce" else (n - 1) / n
    return factor * c.nbytes


def step_collectives(params: int, n: int, local_batch: int, embedding: int, grad_bytes: int = 4) -> list[Collective]:
    """The collectives of one distributed training step (see the module docstring)."""
    rows = n * local_batch
    return [
        Collective("DDP gradient all-reduce", "all_reduce", grad_bytes * params, "ddp"),
        Collective("embedding all-gather (fp32)", "all_gather", 4 * rows * embedding, "head"),
        Collective("label all-gather (int64)", "all_gather", 8 * rows, "head"),
        *(Collective(f"softmax {what} all-reduce", "all_reduce", 4 * rows, "head")
          for what in ("row max", "target logit", "sum of exp")),
        Collective("accuracy best-cosine all-reduce", "all_reduce", 4 * rows, "head"),
        Collective("accuracy class all-reduce (int64)", "all_reduce", 8 * rows, "head"),
        Collective("embedding-gradient all-reduce (fp32)", "all_reduce", 4 * rows * embedding, "head"),
        Collective("preemption flag all-reduce", "all_reduce", 4, "head"),
    ]


def collective_s(c: Collective, n: int, fabric: Fabric) -> float:
    if n <= 1:
        return 0.0
    if c.kind == "all_reduce":
        return fabric.latency_s + ring_all_reduce_s(c.nbytes, n, fabric.bytes_per_s)
    return fabric.latency_s + ring_all_gather_s(c.nbytes, n, fabric.bytes_per_s)


def step_time_bounds(t1: float, ddp_s: float, head_s: float, last_bucket_s: float,
                     backward_fraction: float) -> tuple[float, float]:
    """(no-overlap, best-overlap) step time at n ranks, given the single-GPU step ``t1``."""
    slow = t1 + head_s + ddp_s
    exposed = max(last_bucket_s, ddp_s - backward_fraction * t1)
    fast = t1 + head_s + min(ddp_s, exposed)
    return slow, fast


def model_rows(params: dict[str, int], gpus: list[int], local_batch: int, embedding: int,
               img_s: dict[str, float], backward_fraction: float, fabrics=FABRICS) -> list[dict]:
    """One row per (arch, GPU count, fabric): bytes, seconds and scaling efficiency."""
    rows = []
    for arch, p in params.items():
        t1 = local_batch / img_s[arch]
        for n in gpus:
            colls = step_collectives(p, n, local_batch, embedding)
            for fabric in fabrics:
                ddp = sum(collective_s(c, n, fabric) for c in colls if c.part == "ddp")
                head = sum(collective_s(c, n, fabric) for c in colls if c.part == "head")
                last = collective_s(Collective("last bucket", "all_reduce", min(DDP_BUCKET_BYTES, 4 * p), "ddp"),
                                    n, fabric)
                slow, fast = step_time_bounds(t1, ddp, head, last, backward_fraction)
                rows.append({
                    "arch": arch, "gpus": n, "fabric": fabric.name, "params_m": p / 1e6,
                    "ddp_mb": sum(c.nbytes for c in colls if c.part == "ddp") / 1e6,
                    "head_mb": sum(c.nbytes for c in colls if c.part == "head") / 1e6,
                    "sent_mb": sum(wire_bytes(c, n) for c in colls) / 1e6,
                    "t1_ms": 1e3 * t1, "ddp_ms": 1e3 * ddp, "head_ms": 1e3 * head,
                    "eff_no_overlap": t1 / slow, "eff_overlap": t1 / fast,
                    "img_s_no_overlap": n * local_batch / slow, "img_s_overlap": n * local_batch / fast,
                })
    return rows


def parameter_counts(archs: list[str], embedding: int) -> dict[str, int]:
    """Trainable parameters of the real backbones (built on the meta device: no memory, no init cost)."""
    from models import build_backbone

    counts = {}
    for arch in archs:
        with torch.device("meta"):
            model = build_backbone(arch, embedding)
        counts[arch] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


# H200 SXM dense fp32 (no tensor cores; the head runs in fp32 and torch leaves TF32 off for matmuls by default)
FP32_FLOPS = 67e12
HBM_BYTES_PER_S = 4.8e12


def head_rows(gpus: list[int], classes: int, rates: list[float], local_batch: int, embedding: int,
              flops: float = FP32_FLOPS, mem_bytes_per_s: float = HBM_BYTES_PER_S) -> list[dict]:
    """Per-rank cost of the class-sharded head at n GPUs, with class sampling at rate r (models/sharded.py).

    Each rank holds ceil(C/n) class rows and scores all n b rows of the global batch against the
    rows it keeps, max(ceil(r C/n), b) (the positives: about b distinct classes of the global batch fall in each
    rank's share): three (n b) x (r C/n) x D matmuls (forward, and the embedding and weight
    gradients), one fp32 buffer of that size plus a boolean mask (5 bytes per entry), about six passes over it
    (clamp, exp, sum, normalise, gradient, mask). The bytes sent do not depend on C nor on r: the head
    exchanges embeddings and per-row numbers only (``step_collectives``). The time is a lower bound from peak
    fp32 throughput and memory bandwidth, not a measurement.
    """
    rows = []
    for n in gpus:
        head_comm = sum(c.nbytes for c in step_collectives(0, n, local_batch, embedding) if c.part == "head")
        held = math.ceil(classes / n)
        for r in rates:
            kept = min(held, max(math.ceil(r * held), local_batch))
            batch = n * local_batch
            gflop = 3 * 2 * batch * kept * embedding / 1e9
            logits_mb = 5 * batch * kept / 1e6
            rows.append({"classes": classes, "gpus": n, "sample_rate": r, "rows_held": held, "rows_kept": kept,
                         "weight_state_mb": 3 * 4 * held * embedding / 1e6, "logits_mb": logits_mb,
                         "head_gflop": gflop, "head_comm_mb": head_comm / 1e6,
                         "head_ms": 1e3 * (gflop * 1e9 / flops + 6 * logits_mb * 1e6 / mem_bytes_per_s)})
    return rows


HEAD_HEADER = ("classes", "GPUs", "r", "class rows held / kept per GPU", "weight + grad + momentum MB",
               "logits MB", "head GFLOP", "head sends MB", "head ms (bound)")


def head_markdown(rows: list[dict]) -> str:
    return format_markdown(HEAD_HEADER, [
        (f"{r['classes']:,}", r["gpus"], f"{r['sample_rate']:g}", f"{r['rows_held']:,} / {r['rows_kept']:,}",
         f"{r['weight_state_mb']:,.0f}", f"{r['logits_mb']:,.0f}", f"{r['head_gflop']:,.0f}",
         f"{r['head_comm_mb']:.1f}", f"{r['head_ms']:.1f}") for r in rows])


MARKDOWN_HEADER = ("backbone", "GPUs", "fabric", "DDP MB", "head MB", "sent/GPU MB", "DDP ms", "head ms",
                   "efficiency (no overlap / overlap)", "img/s (no overlap / overlap)")


def markdown(rows: list[dict]) -> str:
    return format_markdown(MARKDOWN_HEADER, [
        (r["arch"], r["gpus"], r["fabric"], f"{r['ddp_mb']:.1f}", f"{r['head_mb']:.1f}", f"{r['sent_mb']:.1f}",
         f"{r['ddp_ms']:.2f}", f"{r['head_ms']:.2f}",
         f"{100 * r['eff_no_overlap']:.0f}% / {100 * r['eff_overlap']:.0f}%",
         f"{r['img_s_no_overlap']:,.0f} / {r['img_s_overlap']:,.0f}") for r in rows])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="iresnet50,iresnet100")
    p.add_argument("--gpus", default="8,16,64")
    p.add_argument("--local-batch", type=int, default=256, help="images per GPU per step")
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--backward-fraction", type=float, default=2 / 3,
                   help="share of the step spent in the backward pass (DDP overlaps its all-reduce with it)")
    p.add_argument("--head-classes", type=int, default=0,
                   help="also print the sharded head's per-GPU cost at this class count (e.g. 2000000)")
    p.add_argument("--head-gpus", default="8,64,256")
    p.add_argument("--sample-rates", default="1,0.1", help="class sampling rates for the head table")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in MEASURED_IMG_S]
    if unknown:
        raise ValueError(f"--archs: no measured single-GPU speed for {unknown} (have {sorted(MEASURED_IMG_S)})")
    gpus = [int(g) for g in args.gpus.split(",") if g]
    rows = model_rows(parameter_counts(archs, args.embedding_size), gpus, args.local_batch, args.embedding_size,
                      MEASURED_IMG_S, args.backward_fraction)
    print(markdown(rows))
    print("\n" + format_rows(rows, ("arch", "gpus", "fabric", "t1_ms", "ddp_ms", "head_ms", "eff_no_overlap",
                                     "eff_overlap")))
    heads = []
    if args.head_classes:
        heads = head_rows([int(g) for g in args.head_gpus.split(",") if g], args.head_classes,
                          [float(r) for r in args.sample_rates.split(",") if r], args.local_batch, args.embedding_size)
        print("\n" + head_markdown(heads))
    if args.json:
        write_json(args.json, {"args": vars(args), "fabrics": [f.__dict__ for f in FABRICS], "rows": rows,
                               "head_rows": heads}, default=str)
    return rows


if __name__ == "__main__":
    main()
