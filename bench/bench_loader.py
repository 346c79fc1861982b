"""Decode throughput of the training loaders (images/s) on real faces, through the DataLoader.

    python -m bench.bench_loader [--train_list ../shared/data/celeba112/train.list] [--workers 2]

Packs the list into a temporary RecordIO set first, then times full passes of ImageListDataset and
RecordIODataset as training uses them (read + decode + CHW; the mirroring happens later, on the device,
in ``run.engine.prepare_batch``). The first pass of each warms the page cache and the
workers and is not counted.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import torch

from dataloader.builder import build_train_loader
from dataloader.image_list import ImageListDataset, read_train_list
from dataloader.pack_rec import pack_train_list
from dataloader.rec_dataset import RecordIODataset
from dataloader.sampler import EpochShuffleSampler
from utils.cpu_info import usable_cores

DEFAULT_LIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba112" / "train.list"


def time_loader(dataset, batch_size: int, workers: int, passes: int) -> float:
    """Images per second over ``passes`` epochs after one warm-up epoch."""
    sampler = EpochShuffleSampler(len(dataset), seed=0)
    loader = build_train_loader(dataset, batch_size, workers, sampler, pin_memory=False, drop_last=False)
    for _ in loader:
        pass
    n, t0 = 0, time.perf_counter()
    for epoch in range(passes):
        sampler.set_epoch(epoch + 1)
        for images, _, _ in loader:
            n += images.shape[0]
    return n / (time.perf_counter() - t0)


def time_getitem(dataset, n: int = 2000) -> float:
    """Images per second of bare ``dataset[i]`` calls in this process (read + decode + CHW)."""
    n = min(n, len(dataset))
    for i in range(n):
        dataset[i]
    t0 = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - t0)


def machine() -> str:
    cpus = usable_cores()
    return (f"{platform.processor() or platform.machine()}, {cpus} usable cores, python "
            f"{platform.python_version()}, torch {torch.__version__}, opencv {cv2.__version__}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_list", default=str(DEFAULT_LIST))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--passes", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tl = read_train_list(args.train_list)
    print(f"machine: {machine()}")
    print(f"data: {len(tl)} images of {tl.num_classes} identities from {tl.list_path}")
    with tempfile.TemporaryDirectory() as tmp:
        pack_train_list(tl, tmp, workers=args.workers)
        rec_mb = os.path.getsize(os.path.join(tmp, "train.rec")) / 2**20
        datasets = {"ImageListDataset": ImageListDataset(tl), "RecordIODataset": RecordIODataset(tmp)}
        single = {name: time_getitem(ds) for name, ds in datasets.items()}
        loader = {name: time_loader(ds, args.batch_size, args.workers, args.passes) for name, ds in datasets.items()}
    print(f"no host-side flip (training mirrors on the device); train.rec {rec_mb:.1f} MiB; "
          f"DataLoader with {args.workers} workers, batch {args.batch_size}")
    for name in datasets:
        print(f"{name:>18}: {loader[name]:6.0f} images/s through the DataLoader, "
              f"{single[name]:6.0f} images/s single process")


if __name__ == "__main__":
    main()
