"""gen_feat's PyTorch path (fp32, bf16, fp16 on the CPU or a GPU), imported only when it runs.

``inference.gen_feat`` is the command; it imports torch only for these precisions, so ``--dtype int8``
(onnxruntime) starts without it. Every BatchNorm is folded into the convs (``inference.fuse``),
channels-last, inference mode, bf16/fp16 weights stored once. On CPU the images are decoded inline
(a decode process would preempt the compute threads); on GPU worker processes feed pinned uint8
batches that become floats on the device, and features stay there until the end.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from inference.extract import embed_batch, prepare_model
from inference.gen_feat import FeatOptions
from models.checkpoint import load_backbone
from utils.convention import InputConvention, parse_convention, read_aligned_face
from utils.dist import resolve_device
from utils.feature_io import write_features
from utils.image_list import usable_cores
from utils.precision import DTYPES

GPU_FLUSH_BATCHES = 64  # features copied back to the host every N batches (one sync each time)


class FaceImages(Dataset):
    """Decoded uint8 BGR CHW aligned 112x112 faces; wrong-sized or unreadable files raise naming the file."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = read_aligned_face(self.paths[i])
        return torch.from_numpy(np.stack(cv2.split(img)))  # CHW; 3x quicker than a transpose copy


def make_loader(paths: list[str], batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """Decoding in worker processes; uint8 batches, pinned for an asynchronous copy to a GPU."""
    extra = {"prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(FaceImages(paths), batch_size=batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False, **extra)


def _pad_to(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat rows so a compiled model sees one static shape (the extra rows are dropped)."""
    idx = torch.arange(batch_size) % images.shape[0]
    return images[idx]


def run_model(model: torch.nn.Module, loader: DataLoader, num_images: int, emb: int, device: torch.device, *,
              convention: InputConvention, dtype: torch.dtype = torch.float32, flip: bool = False,
              channels_last: bool = True, static_batch: int = 0, print_freq: int = 10) -> np.ndarray:
    """Embed every batch; on GPU the features stay on the device and are copied back in blocks.

    ``static_batch`` > 0 pads a short last batch to that size (a compiled model then never recompiles).
    """
    feats = np.empty((num_images, emb), dtype=np.float32)
    pending: list[torch.Tensor] = []
    done = flushed = 0
    t0 = time.perf_counter()
    for b, images in enumerate(loader):
        n = images.shape[0]
        if n < static_batch:
            images = _pad_to(images, static_batch)
        out = embed_batch(model, images.to(device, non_blocking=True), convention, dtype, flip, channels_last)[:n]
        pending.append(out)
        done += n
        last = done == num_images
        if device.type != "cuda" or len(pending) >= GPU_FLUSH_BATCHES or last:
            block = torch.cat(pending).cpu().numpy()
            feats[flushed:flushed + len(block)] = block
            flushed += len(block)
            pending.clear()
        if (b + 1) % print_freq == 0 or last:
            print(f"[{done}/{num_images}] {done / (time.perf_counter() - t0):.1f} img/s", flush=True)
    return feats


def extract_torch(resume: str, listed: list[str], resolved: list[str], feat_list: str, opts: FeatOptions,
                  t_start: float) -> dict:
    """gen_feat's fp32 / bf16 / fp16 path: the PyTorch model on the CPU or a GPU."""
    device = resolve_device(opts.device)
    if device.type == "cpu":
        torch.set_num_threads(opts.threads or usable_cores())
    conv = parse_convention(opts.input_convention) if opts.input_convention else None
    model, conv, info = load_backbone(resume, opts.arch, "cpu", conv)
    if opts.embedding_size and opts.embedding_size != info["embedding_size"]:
        raise ValueError(f"--embedding_size {opts.embedding_size} but {resume} gives "
                         f"{info['embedding_size']}-d embeddings")
    channels_last = opts.channels_last in ("on", "auto")
    model = prepare_model(model, device, dtype=DTYPES[opts.dtype], fuse=opts.fuse == "on", channels_last=channels_last,
                          compile_model=opts.compile == "on")
    workers = opts.workers if opts.workers is not None else (8 if device.type == "cuda" else 0)
    batch_size = opts.batch_size or (256 if device.type == "cuda" else 64)
    loader = make_loader(resolved, batch_size, workers, device)
    t0 = time.perf_counter()
    feats = run_model(model, loader, len(listed), info["embedding_size"], device, convention=conv,
                      dtype=DTYPES[opts.dtype], flip=opts.flip, channels_last=channels_last,
                      static_batch=batch_size if opts.compile == "on" else 0, print_freq=opts.print_freq)
    wall = time.perf_counter() - t0
    mags = np.linalg.norm(feats, axis=1)
    write_features(feat_list, listed, feats, mags)
    total = time.perf_counter() - t_start
    print(f"wrote {len(listed)} features ({info['embedding_size']}-d, {opts.dtype}, {device}) to {feat_list} "
          f"in {wall:.1f}s ({len(listed) / wall:.1f} img/s; {total:.1f}s with loading and writing); "
          f"magnitude mean {mags.mean():.2f} [{mags.min():.2f}, {mags.max():.2f}]")
    return {"num_images": len(listed), "wall_s": wall, "total_s": total, "feat_list": str(feat_list),
            "batch_size": batch_size, "workers": workers, "device": str(device)}
