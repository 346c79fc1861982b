"""gen_feat's PyTorch path (fp32, bf16, fp16 on the CPU or a GPU), imported only when it runs.

``inference.features`` runs gen_feat; it imports torch only for these precisions, so ``--dtype int8``
(onnxruntime) starts without it. Every BatchNorm is folded into the convs (``inference.fuse``),
channels-last, inference mode, bf16/fp16 weights stored once. On CPU the images are decoded inline
(a decode process would preempt the compute threads); on GPU worker processes feed pinned uint8
batches that become floats on the device, and features stay there until the end. A face that cannot be
decoded raises naming its list line, or with ``skip_bad`` leaves a NaN row for gen_feat to drop.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from faces.face_list import ImageList, listed_face
from inference.extract import embed_batch, prepare_model
from inference.feat_options import FeatOptions
from models.checkpoint import load_backbone
from utils.convention import FACE_SIZE, InputConvention, parse_convention
from utils.cpu_info import choose_precision, usable_cores
from utils.dist import resolve_device
from utils.feature_io import check_room
from utils.precision import DTYPES

GPU_FLUSH_BATCHES = 64  # features copied back to the host every N batches (one sync each time)


class FaceImages(Dataset):
    """(uint8 BGR CHW aligned 112x112 face, True); a wrong-sized or unreadable file raises naming its list
    line (``where[i]``, e.g. ``LIST:LINE``) and the file, or with ``skip_bad`` is (zeros, False)."""

    def __init__(self, paths: list[str], where: Sequence[str] | None = None, skip_bad: bool = False) -> None:
        self.paths, self.where, self.skip_bad = paths, where, skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        img = listed_face(self.paths[i], self.where[i] if self.where else None, self.skip_bad)
        if img is None:
            return torch.zeros(3, FACE_SIZE, FACE_SIZE, dtype=torch.uint8), False
        return torch.from_numpy(np.stack(cv2.split(img))), True  # CHW; quicker than a transpose copy (bench/RESULTS.md)


def make_loader(paths: list[str], batch_size: int, workers: int, device: torch.device, *,
                where: Sequence[str] | None = None, skip_bad: bool = False) -> DataLoader:
    """Decoding in worker processes; (uint8 faces, decoded mask) batches, pinned for an asynchronous copy to a
    GPU. ``where`` names each path's list line in errors; ``skip_bad``: see ``FaceImages``."""
    extra = {"prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(FaceImages(paths, where, skip_bad), batch_size=batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False, **extra)


def _pad_to(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat rows so a compiled model sees one static shape (the extra rows are dropped)."""
    idx = torch.arange(batch_size) % images.shape[0]
    return images[idx]


def run_model(model: torch.nn.Module, loader: DataLoader, num_images: int, emb: int, device: torch.device, *,
              convention: InputConvention, dtype: torch.dtype = torch.float32, flip: bool = False,
              channels_last: bool = True, static_batch: int = 0, print_freq: int = 10) -> np.ndarray:
    """Embed every batch of ``make_loader``; on GPU the features stay on the device and are copied back in blocks.

    ``static_batch`` > 0 pads a short last batch to that size (a compiled model then never recompiles).
    The rows of faces the loader could not decode (``skip_bad``) are NaN.
    """
    feats = np.empty((num_images, emb), dtype=np.float32)
    pending: list[torch.Tensor] = []
    undecoded: list[np.ndarray] = []
    done = flushed = 0
    t0 = time.perf_counter()
    for b, (images, decoded) in enumerate(loader):
        n = images.shape[0]
        if not bool(decoded.all()):
            undecoded.append(done + np.flatnonzero(~decoded.numpy()))
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
    if undecoded:
        feats[np.concatenate(undecoded)] = np.nan
    return feats


def extract_torch(resume: str, images: ImageList, feat_list: str, opts: FeatOptions) -> tuple[np.ndarray, dict]:
    """gen_feat's fp32 / bf16 / fp16 path: (features in list order, NaN rows for skipped faces; timings)."""
    device = resolve_device(opts.device)
    choice = choose_precision(opts.dtype, device.type)  # before the model loads: fp16 on a CPU fails fast
    choice.announce()
    if device.type == "cpu":
        torch.set_num_threads(opts.threads or usable_cores())
    conv = parse_convention(opts.input_convention) if opts.input_convention else None
    model, conv, info = load_backbone(resume, opts.arch, "cpu", conv)
    emb = info["embedding_size"]
    if opts.embedding_size and opts.embedding_size != emb:
        raise ValueError(f"--embedding_size {opts.embedding_size} but {resume} gives {emb}-d embeddings")
    check_room(feat_list, images.listed, emb)  # again, with the model's own size
    channels_last = opts.channels_last in ("on", "auto")
    model = prepare_model(model, device, dtype=DTYPES[choice.dtype], fuse=opts.fuse == "on",
                          channels_last=channels_last, compile_model=opts.compile == "on")
    workers = opts.workers if opts.workers is not None else (8 if device.type == "cuda" else 0)
    batch_size = opts.batch_size or (256 if device.type == "cuda" else 64)
    loader = make_loader(images.resolved, batch_size, workers, device,
                         where=[images.where(i) for i in range(len(images))], skip_bad=opts.skip_bad_images)
    t0 = time.perf_counter()
    feats = run_model(model, loader, len(images), emb, device, convention=conv,
                      dtype=DTYPES[choice.dtype], flip=opts.flip, channels_last=channels_last,
                      static_batch=batch_size if opts.compile == "on" else 0, print_freq=opts.print_freq)
    return feats, {"wall_s": time.perf_counter() - t0, "batch_size": batch_size, "workers": workers,
                   "device": str(device), "what": f"{emb}-d, {choice.dtype}, {device}", "precision": choice.to_dict()}
