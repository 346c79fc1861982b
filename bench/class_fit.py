"""The largest class count whose training step fits in memory: a search and the probe it runs.

``largest_fitting(fits, start, limit)`` needs only a predicate ``fits(classes) -> bool`` that is true up
to some unknown count and false beyond it: it doubles from ``start`` until a count fails (or ``limit``
is reached), then bisects between the last count that fitted and the first that did not, to within
``rel_tol`` (rounded to ``quantum`` classes). ``step_fits`` is the predicate the GPU script gives it:
two real training steps (``run.engine.train_one_epoch``: forward under autocast, fp32 head, backward,
SGD with momentum) of a given backbone at a given batch with a head of that many classes; a CUDA
out-of-memory error means "does not fit".
"""
from __future__ import annotations

import gc
from collections.abc import Callable

import torch
from torch import nn

from models import MagFaceHead
from models.fused import ChunkedMagFaceHead
from models.sharded import ShardedMagFaceHead
from run.engine import Progress, StepConfig, train_one_epoch

HEAD_KINDS = ("dense", "sharded1", "fused")


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int, rel_tol: float = 0.02,
                    quantum: int = 1, growth: float = 2.0) -> dict:
    """Bracket then bisect; returns ``largest_fit`` (0 if not even one quantum fits), ``smallest_fail``
    (None when ``limit`` itself fits) and the ``probes`` made, as (classes, fitted) in order."""
    if not 1 <= start <= limit or quantum < 1 or growth <= 1 or rel_tol < 0:
        raise ValueError(f"need 1 <= start <= limit, quantum >= 1, growth > 1, rel_tol >= 0; got start={start}, "
                         f"limit={limit}, quantum={quantum}, growth={growth}, rel_tol={rel_tol}")
    probes: list[tuple[int, bool]] = []

    def probe(classes: int) -> bool:
        ok = bool(fits(classes))
        probes.append((classes, ok))
        return ok

    lo, hi, count = 0, None, start
    while True:
        if not probe(count):
            hi = count
            break
        lo = count
        if count >= limit:
            break
        count = min(limit, max(count + quantum, int(count * growth) // quantum * quantum))
    while hi is not None and hi - lo > max(quantum, rel_tol * lo):
        mid = (lo + hi) // 2 // quantum * quantum
        if mid <= lo:
            mid = lo + quantum
        if mid >= hi:
            break
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return {"largest_fit": lo, "smallest_fail": hi, "probes": probes}


def build_probe_head(kind: str, classes: int, embedding: int, device: torch.device, chunk: int = 16384) -> nn.Module:
    """A head of ``classes`` rows made directly on ``device`` (N(0, 0.01), no host-side initialisation)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
    with torch.device("meta"):
        if kind == "dense":
            head = MagFaceHead(embedding, classes)
        elif kind == "fused":
            head = ChunkedMagFaceHead(embedding, classes, chunk=chunk)
        else:
            head = ShardedMagFaceHead(embedding, classes, rank=0, world_size=1)
    head = head.to_empty(device=device)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01)
    return head


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def step_fits(model: nn.Module, kind: str, classes: int, batch: int, embedding: int, device: torch.device,
              amp_dtype: torch.dtype | None, channels_last: bool, input_size: int = 112, steps: int = 2) -> bool:
    """Two training steps of ``model`` with a ``kind`` head of ``classes`` rows at ``batch``: True if they ran.

    Only the head and its optimizer are built here; ``model`` (compiled or not) is reused between probes,
    so each probe costs seconds. Everything the probe allocated is released before it returns.
    """
    head = opt_head = opt_model = None
    try:
        head = build_probe_head(kind, classes, embedding, device)
        opt_model = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        opt_head = torch.optim.SGD(head.parameters(), lr=1e-4, momentum=0.9)
        gen = torch.Generator().manual_seed(classes)
        images = torch.randint(0, 256, (batch, 3, input_size, input_size), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, classes, (batch,), generator=gen)
        step_cfg = StepConfig(device, batch, steps_per_epoch=steps, total_steps=steps, lr_fn=lambda step: 1e-4,
                              channels_last=channels_last, amp_dtype=amp_dtype, print_freq=10**9)
        train_one_epoch(model, head, [opt_model, opt_head], torch.amp.GradScaler(device.type, enabled=False),
                        [(images, labels, 0)] * steps, 0, 0, step_cfg, Progress())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        return False
    finally:
        del head, opt_head, opt_model
        model.zero_grad(set_to_none=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
