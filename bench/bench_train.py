"""Training throughput of the real training step (run.build.build_run + run.engine.train_one_epoch).

    python -m bench.bench_train --archs iresnet50 --amp bf16 --channels-last on --compile on \\
        --batch-size 256 --classes 85742 --steps 30 --warmup 5 --data rec,tensor --workers 12 --json out.json

Each configuration of the matrix (archs x amp x channels-last x compile x data) builds the run the
trainer builds (backbone, dense MagFace head with --classes rows, SGD, GradScaler, torch.compile) and
times ``train_one_epoch`` over a loader: ``rec`` reads a RecordIO set of real JPEG faces (written once
to a cache folder) through RecordIODataset + build_train_loader with --workers, ``tensor`` serves the
same faces pre-decoded from memory (TensorImageDataset), so the gap between the two is the input cost.
Reported: images/s over --steps steps after --warmup steps, the first step's time (torch.compile's
warm-up) and the warm-up total apart, the fraction of time spent waiting for data, and peak memory
(GPU: max allocated; CPU: the main process's peak RSS). A failing configuration (e.g. OOM) is
reported and the others still run.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import RandomSampler

from bench.common import (
    csv_arg,
    format_machine,
    format_rows,
    generated_face_jpegs,
    machine_info,
    peak_memory_mb,
    reset_peak_memory,
    row_line,
)
from dataloader import RecordIODataset, TensorImageDataset, build_train_loader
from dataloader.pack_rec import write_rec_set
from run.build import build_run, uses_cudagraphs
from run.config import TrainConfig
from run.engine import Progress, StepConfig, train_one_epoch
from utils.atomic import write_json
from utils.dist import DistInfo
from utils.precision import amp_dtype

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAW = Path(__file__).resolve().parents[1] / "raw" / "demo_data"
# Real faces: ../shared/data where it exists, else the demo faces shipped in raw/ (e.g. on a GPU machine).
FACE_LISTS = (SHARED / "celeba112" / "train.list", SHARED / "lfw112" / "img.list", RAW / "celeba" / "train.list",
              RAW / "lfw" / "img.list")
COLUMNS = ("arch", "data", "amp", "cl", "compile", "batch", "img_s", "step_ms", "data_wait_pct", "first_step_s",
           "warmup_s", "peak_gpu_alloc_mb", "peak_rss_mb", "status")


def face_jpegs(count: int, seed: int = 0) -> tuple[list[bytes], str]:
    """Up to ``count`` JPEG files of real aligned faces (as stored), else generated face-sized JPEGs."""
    for lst in FACE_LISTS:
        if lst.is_file():
            paths = [lst.parent / line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
            return [p.read_bytes() for p in paths[:count]], str(lst)
    return generated_face_jpegs(count, seed), "generated"


def ensure_rec(cache_dir: Path, count: int, num_classes: int) -> Path:
    """A RecordIO set of ``count`` faces with random labels below ``num_classes``, written once."""
    folder = cache_dir / f"faces_{count}_{num_classes}"
    if (folder / "complete").is_file():
        return folder
    jpegs, source = face_jpegs(count)
    labels = np.random.default_rng(0).integers(0, num_classes, len(jpegs))
    write_rec_set(folder, zip(labels.tolist(), jpegs, strict=True), num_classes)
    (folder / "complete").write_text(f"{len(jpegs)} images from {source}\n")
    return folder


def timed(iterator, counter: dict):
    """Yield from ``iterator``, adding the seconds spent waiting on it to ``counter['wait']``."""
    while True:
        t = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        counter["wait"] += time.perf_counter() - t
        yield item


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(run, state: tuple[StepConfig, Progress], batches, steps: int) -> float:
    """Seconds for ``steps`` training steps of the real loop (synchronised at both ends)."""
    step_cfg, progress = state
    sync(run.device)
    t = time.perf_counter()
    train_one_epoch(run.model, run.head, [run.opt_backbone, run.opt_head], run.scaler,
                    itertools.islice(batches, steps), 0, 0, dataclasses.replace(step_cfg, steps_per_epoch=steps),
                    progress)
    sync(run.device)
    return time.perf_counter() - t


def bench_config(spec: dict, size: int, args: argparse.Namespace, workers: int, out_dir: str,
                 extra: dict | None = None) -> TrainConfig:
    """The TrainConfig of one configuration; ``extra``: more fields (``batch_size``, ``compile_mode``,
    ``head_impl``...) over the ones ``spec`` and the arguments give."""
    fields = dict(arch=spec["arch"], synthetic=size, last_fc_size=args.classes, batch_size=args.batch_size,
                  embedding_size=args.embedding_size, amp=spec["amp"], channels_last=spec["cl"],
                  compile=spec["compile"], device=args.device, workers=workers, print_freq=10**9, tensorboard=False,
                  pth_save_fold=out_dir, input_size=args.input_size)
    return TrainConfig(**(fields | (extra or {})))


def build_bench_run(cfg: TrainConfig, dataset, steps: int, lr: float = 0.1):
    """(run, loader, (step configuration, progress)) for ``steps`` steps of ``cfg`` over ``dataset`` in a fixed
    random order."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    reset_peak_memory(device)
    run = build_run(cfg, DistInfo())
    sampler = RandomSampler(dataset, num_samples=steps * cfg.batch_size, generator=torch.Generator().manual_seed(0))
    loader = build_train_loader(dataset, cfg.batch_size, cfg.workers, sampler, pin_memory=run.device.type == "cuda",
                                persistent_workers=False)
    step_cfg = StepConfig(run.device, cfg.batch_size, steps_per_epoch=1, total_steps=steps, lr_fn=lambda step: lr,
                          channels_last=run.channels_last, amp_dtype=amp_dtype(cfg.amp),
                          cudagraph_steps=uses_cudagraphs(cfg, run.device), print_freq=10**9)
    return run, loader, (step_cfg, Progress())


def bench_one(spec: dict, dataset, args: argparse.Namespace, workers: int, out_dir: str,
              extra: dict | None = None) -> dict:
    """Build the run of one configuration (``bench_config``) and time it; returns the table row."""
    cfg = bench_config(spec, len(dataset), args, workers, out_dir, extra)
    batch = cfg.batch_size
    run, loader, state = build_bench_run(cfg, dataset, args.warmup + args.steps)
    wait = {"wait": 0.0}
    batches = timed(iter(loader), wait)
    first = run_steps(run, state, batches, 1)
    rest = run_steps(run, state, batches, args.warmup - 1) if args.warmup > 1 else 0.0
    wait["wait"] = 0.0
    seconds = run_steps(run, state, batches, args.steps)
    row = dict(spec, batch=batch, img_s=args.steps * batch / seconds,
               step_ms=1000 * seconds / args.steps, data_wait_pct=100 * wait["wait"] / seconds,
               first_step_s=first, warmup_s=first + rest, status="ok", device=str(run.device))
    row.update(peak_memory_mb(run.device))
    del batches, loader, run
    return row


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def datasets(kinds: list[str], rec_dir: Path, classes: int):
    """The ``rec`` dataset and, when asked, its pre-decoded in-memory copy."""
    rec = RecordIODataset(rec_dir, num_classes=classes)
    out = {}
    for kind in kinds:
        if kind == "rec":
            out[kind] = rec
        elif kind == "tensor":
            out[kind] = TensorImageDataset.from_dataset(rec)
        else:
            raise ValueError(f"--data: unknown source {kind!r} (rec, tensor)")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", type=csv_arg, default="iresnet50")
    p.add_argument("--amp", type=csv_arg, default="bf16", help="none, bf16, fp16 (comma list)")
    p.add_argument("--channels-last", type=csv_arg, default="on", help="on, off (comma list)")
    p.add_argument("--compile", type=csv_arg, default="off", help="on, off (comma list)")
    p.add_argument("--data", type=csv_arg, default="tensor", help="rec, tensor (comma list)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=int, default=85742, help="head rows (MS1MV2: 85,742)")
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    p.add_argument("--workers", type=int, default=8, help="decode workers for --data rec")
    p.add_argument("--tensor-workers", type=int, default=None,
                   help="loader workers for --data tensor (default: 2 on GPU, 0 on CPU)")
    p.add_argument("--rec-images", type=int, default=4096, help="faces in the cached RecordIO set")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "magface_bench"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        raise ValueError("--warmup and --steps must be >= 1 (the first step is always a warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(format_machine(info), flush=True)
    rec_dir = ensure_rec(Path(args.cache_dir), args.rec_images, args.classes)
    data = datasets(args.data, rec_dir, args.classes)
    tensor_workers = args.tensor_workers if args.tensor_workers is not None else (2 if info["gpu"] else 0)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for arch, amp, cl, comp, kind in itertools.product(args.archs, args.amp, args.channels_last, args.compile,
                                                           args.data):
            spec = {"arch": arch, "data": kind, "amp": amp, "cl": cl, "compile": comp}
            workers = args.workers if kind == "rec" else tensor_workers
            try:
                row = bench_one(spec, data[kind], args, workers, out_dir)
            except Exception as e:  # one failing configuration (OOM...) must not stop the matrix
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                row = dict(spec, batch=args.batch_size, status=f"FAILED {type(e).__name__}: {first[:160]}",
                           traceback=traceback.format_exc(limit=4))
            cleanup()
            rows.append(row)
            print(row_line(row), flush=True)
            if args.json:  # after every row: a run cut short by a time limit keeps what it measured
                write_json(args.json, {"machine": info, "args": vars(args), "rec_dir": str(rec_dir),
                                       "results": rows, "complete": False}, default=str)
    print(f"\ntraining step, {args.classes} classes, batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup} warm-up; rec workers {args.workers}, tensor workers {tensor_workers}; data: {rec_dir}")
    print(format_machine(info))
    print(format_rows(rows, COLUMNS), flush=True)
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "rec_dir": str(rec_dir), "results": rows,
                               "complete": True}, default=str)
    return rows


if __name__ == "__main__":
    main()
