"""Dump features (and magnitudes, the MagFace quality score) for a list of aligned faces.

The seed's flags and text output (``path f1 ... fD``, raw features) are the default, so existing
scripts keep working; a ``.npz`` feature file also stores the magnitudes and paths.

    python -m inference.gen_feat --arch iresnet100 --resume magface_epoch_00025.pth \\
        --inf_list lfw/img.list --feat_list lfw_feats.txt
    python -m inference.gen_feat --resume CKPT --inf_list L --feat_list feats.npz --dtype bf16 --flip
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
from inference.extract import embed_batch  # noqa: E402
from utils.checkpoint import load_backbone  # noqa: E402
from utils.convention import parse_convention  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_image_list(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(paths as listed, paths resolved against the list's folder); the first token of each line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    listed, resolved = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            listed.append(tokens[0])
            p = Path(tokens[0])
            resolved.append(str(p if p.is_absolute() else path.parent / p))
    if not listed:
        raise ValueError(f"image list {path} is empty")
    missing = [i for i, p in enumerate(resolved) if not os.path.exists(p)]
    if missing:
        i = missing[0]
        raise FileNotFoundError(f"{path}:{_line_of(path, i)}: image {resolved[i]} not found "
                                f"({len(missing)} of {len(resolved)} listed images are missing)")
    return listed, resolved


def _line_of(path: Path, index: int) -> int:
    """1-based line number of the index-th non-blank line."""
    seen = -1
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.split():
                seen += 1
                if seen == index:
                    return lineno
    return -1


class FaceImages(Dataset):
    """Decoded uint8 BGR CHW faces; wrong-sized or unreadable files raise naming the file."""

    def __init__(self, paths: list[str], size: int = 112) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: not a readable image (truncated or not an image file)")
        if img.shape[:2] != (self.size, self.size):
            raise ValueError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected an aligned "
                             f"{self.size}x{self.size} face (align it with python -m utils.align)")
        return torch.from_numpy(img.transpose(2, 0, 1).copy())


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Dump MagFace features and magnitudes",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=None, help="backbone; read from the checkpoint when absent")
    p.add_argument("--inf_list", "--inf-list", required=True, help="image list, first token = path")
    p.add_argument("--feat_list", "--feat-list", required=True,
                   help="output: text (seed format), .npz (features, magnitudes, paths) or .npy")
    p.add_argument("--resume", required=True, help="checkpoint (released MagFace, insightface or ours)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=256)
    p.add_argument("-j", "--workers", type=int, default=None, help="decode workers (default: 1 on CPU, 8 on GPU)")
    p.add_argument("--embedding_size", "--embedding-size", type=int, default=None,
                   help="expected embedding size (checked against the checkpoint)")
    p.add_argument("--cpu-mode", action="store_true", help="the seed's flag: same as --device cpu")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="compute precision; bf16 is ~2x faster on recent CPUs and GPUs (cosine >= 0.999)")
    p.add_argument("--flip", action="store_true", help="add the embedding of the mirrored face")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--input-convention", default=None,
                   help="override the checkpoint's input convention: magface (BGR, /255), "
                   "insightface (RGB, (x-127.5)/127.5) or ORDER:m1,m2,m3:s1,s2,s3")
    p.add_argument("--print-freq", type=int, default=10, help="progress line every N batches")
    return p


def resolve_device(args: argparse.Namespace) -> torch.device:
    if args.cpu_mode or args.device == "cpu":
        return torch.device("cpu")
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available; use --device cpu")
    return torch.device(args.device)


def extract(args: argparse.Namespace) -> dict:
    device = resolve_device(args)
    conv = parse_convention(args.input_convention) if args.input_convention else None
    model, conv, info = load_backbone(args.resume, args.arch, device, conv)
    if args.embedding_size and args.embedding_size != info["embedding_size"]:
        raise ValueError(f"--embedding_size {args.embedding_size} but {args.resume} gives "
                         f"{info['embedding_size']}-d embeddings")
    channels_last = args.channels_last == "on" or args.channels_last == "auto"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    listed, resolved = read_image_list(args.inf_list)
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 1)
    loader = DataLoader(FaceImages(resolved, info["input_size"]), batch_size=args.batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    feats = np.empty((len(listed), info["embedding_size"]), dtype=np.float32)
    t0, done = time.perf_counter(), 0
    for b, images in enumerate(loader):
        out = embed_batch(model, images.to(device, non_blocking=True), conv, DTYPES[args.dtype], args.flip,
                          channels_last)
        feats[done:done + len(out)] = out.cpu().numpy()
        done += len(out)
        if (b + 1) % args.print_freq == 0 or done == len(listed):
            rate = done / (time.perf_counter() - t0)
            print(f"[{done}/{len(listed)}] {rate:.1f} img/s", flush=True)
    wall = time.perf_counter() - t0
    mags = np.linalg.norm(feats, axis=1)
    write_features(args.feat_list, listed, feats, mags)
    print(f"wrote {len(listed)} features ({info['embedding_size']}-d, {args.dtype}, {device}) to {args.feat_list} "
          f"in {wall:.1f}s ({len(listed) / wall:.1f} img/s); magnitude mean {mags.mean():.2f} "
          f"[{mags.min():.2f}, {mags.max():.2f}]")
    return {"num_images": len(listed), "wall_s": wall, "feat_list": str(args.feat_list)}


def main(argv: list[str] | None = None) -> dict:
    return extract(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
