"""Dump features (and magnitudes, the MagFace quality score) for a list of aligned faces.

The seed's flags and text output (``path f1 ... fD``, raw features) are the default, so existing
scripts keep working; a ``.npz`` feature file also stores the magnitudes and paths.

    python -m inference.gen_feat --arch iresnet100 --resume magface_epoch_00025.pth \\
        --inf_list lfw/img.list --feat_list lfw_feats.txt
    python -m inference.gen_feat --resume CKPT --inf_list L --feat_list feats.npz --dtype bf16 --flip

Speed (bench/bench_gen_feat.py): every BatchNorm folded into the convs (``inference.fuse``),
channels-last, inference mode, bf16/fp16 weights stored once. On CPU the images are decoded inline
(a decode process would preempt the compute threads); on GPU worker processes feed pinned uint8
batches that become floats on the device, and features stay there until the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from eval.feature_io import write_features  # noqa: E402
from inference.extract import embed_batch, prepare_model  # noqa: E402
from utils.checkpoint import load_backbone  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.convention import InputConvention, parse_convention, read_aligned_face  # noqa: E402
from utils.dist import resolve_device  # noqa: E402
from utils.image_list import read_image_list  # noqa: E402,F401  (re-exported: calibrate, eval use it from here)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Dump MagFace features and magnitudes",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=None, help="backbone; read from the checkpoint when absent")
    p.add_argument("--inf_list", "--inf-list", required=True, help="image list, first token = path")
    p.add_argument("--feat_list", "--feat-list", required=True,
                   help="output: text (seed format), .npz (features, magnitudes, paths) or .npy")
    p.add_argument("--resume", required=True, help="checkpoint (released MagFace, insightface or ours)")
    p.add_argument("-b", "--batch_size", "--batch-size", type=int, default=None,
                   help="images per forward (default: 64 on CPU: 5%% slower than 16 on an idle machine but "
                   "twice as fast when other processes share the cores; 256 on GPU)")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="decode worker processes (default: 0 on CPU, where decoding inline costs ~1%% and a "
                   "worker would preempt the compute threads; 8 on GPU)")
    p.add_argument("--embedding_size", "--embedding-size", type=int, default=None,
                   help="expected embedding size (checked against the checkpoint)")
    p.add_argument("--cpu-mode", action="store_true", help="the seed's flag: same as --device cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=[*sorted(DTYPES), "int8"], default="fp32",
                   help="compute precision; bf16 is ~2x faster on CPUs with AVX512-BF16/AMX and on GPUs "
                   "(cosine >= 0.999 to fp32); int8: onnxruntime static quantization on the CPU, calibrated and "
                   "cached on first use (inference.int8)")
    p.add_argument("--calib-list", default=None,
                   help="int8: aligned faces to calibrate on (default: the --inf_list being embedded)")
    p.add_argument("--calib-count", type=int, default=256, help="int8: calibration faces (the first N of the list)")
    p.add_argument("--flip", action="store_true", help="add the embedding of the mirrored face")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--fuse", choices=("on", "off"), default="on",
                   help="fold BatchNorm into the convs (features equal to float rounding)")
    p.add_argument("--compile", choices=("on", "off"), default="off",
                   help="torch.compile the model (GPU; on a CPU it does not pay back its warm-up)")
    p.add_argument("--threads", type=int, default=0, help="CPU compute threads (0: one per usable core)")
    p.add_argument("--input-convention", default=None,
                   help="override the checkpoint's input convention: magface (BGR, /255), "
                   "insightface (RGB, (x-127.5)/127.5) or ORDER:m1,m2,m3:s1,s2,s3")
    p.add_argument("-p", "--print-freq", "--print_freq", type=int, default=10, help="progress line every N batches")
    p.add_argument("--dist", type=int, choices=(0, 1), default=1,
                   help="the seed's switch (1: its DataParallel wrapper), accepted so its scripts run; here the "
                   "features always come from the one device --device picks (--cpu-mode: the CPU)")
    return p




def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def extract_int8(args: argparse.Namespace, listed: list[str], resolved: list[str], t_start: float) -> dict:
    """``--dtype int8``: the checkpoint's cached quantized model (``inference.int8``) on onnxruntime."""
    from inference.int8 import int8_model
    from inference.ort_embed import OrtModel, embed_files

    if args.flip or (args.device not in ("auto", "cpu") and not args.cpu_mode):
        raise ValueError("--dtype int8 runs on the CPU without --flip (onnxruntime); drop --device/--flip")
    if args.calib_count < 1:
        raise ValueError(f"--calib-count must be at least 1, got {args.calib_count}")
    calib = read_image_list(args.calib_list)[1] if args.calib_list else resolved
    conv = parse_convention(args.input_convention) if args.input_convention else None
    model = OrtModel(int8_model(args.resume, calib[:args.calib_count], arch=args.arch, convention=conv),
                     threads=args.threads)
    emb = int(model.metadata.get("embedding_size", 0))
    if args.embedding_size and emb and args.embedding_size != emb:
        raise ValueError(f"--embedding_size {args.embedding_size} but {args.resume} gives {emb}-d embeddings")
    batch_size = args.batch_size or 64
    t0 = time.perf_counter()
    feats = embed_files(model, resolved, batch_size, args.print_freq)
    wall = time.perf_counter() - t0
    mags = np.linalg.norm(feats, axis=1)
    write_features(args.feat_list, listed, feats, mags)
    total = time.perf_counter() - t_start
    print(f"wrote {len(listed)} features ({feats.shape[1]}-d, int8, onnxruntime cpu) to {args.feat_list} in "
          f"{wall:.1f}s ({len(listed) / wall:.1f} img/s; {total:.1f}s in all); magnitude mean {mags.mean():.2f}")
    return {"num_images": len(listed), "wall_s": wall, "total_s": total, "feat_list": str(args.feat_list),
            "batch_size": batch_size, "workers": 0, "device": "cpu"}


def extract(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    listed, resolved = read_image_list(args.inf_list)  # before the (possibly large) model: fail fast
    if args.dtype == "int8":
        return extract_int8(args, listed, resolved, t_start)
    device = resolve_device("cpu" if args.cpu_mode else args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or usable_cores())
    conv = parse_convention(args.input_convention) if args.input_convention else None
    model, conv, info = load_backbone(args.resume, args.arch, "cpu", conv)
    if args.embedding_size and args.embedding_size != info["embedding_size"]:
        raise ValueError(f"--embedding_size {args.embedding_size} but {args.resume} gives "
                         f"{info['embedding_size']}-d embeddings")
    channels_last = args.channels_last in ("on", "auto")
    model = prepare_model(model, device, dtype=DTYPES[args.dtype], fuse=args.fuse == "on", channels_last=channels_last,
                          compile_model=args.compile == "on")
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    loader = make_loader(resolved, batch_size, workers, device)
    t0 = time.perf_counter()
    feats = run_model(model, loader, len(listed), info["embedding_size"], device, convention=conv,
                      dtype=DTYPES[args.dtype], flip=args.flip, channels_last=channels_last,
                      static_batch=batch_size if args.compile == "on" else 0, print_freq=args.print_freq)
    wall = time.perf_counter() - t0
    mags = np.linalg.norm(feats, axis=1)
    write_features(args.feat_list, listed, feats, mags)
    total = time.perf_counter() - t_start
    print(f"wrote {len(listed)} features ({info['embedding_size']}-d, {args.dtype}, {device}) to {args.feat_list} "
          f"in {wall:.1f}s ({len(listed) / wall:.1f} img/s; {total:.1f}s with loading and writing); "
          f"magnitude mean {mags.mean():.2f} [{mags.min():.2f}, {mags.max():.2f}]")
    return {"num_images": len(listed), "wall_s": wall, "total_s": total, "feat_list": str(args.feat_list),
            "batch_size": batch_size, "workers": workers, "device": str(device)}


def main(argv: list[str] | None = None) -> dict:
    return extract(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "gen_feat.py"))
