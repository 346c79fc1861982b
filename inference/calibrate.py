"""Calibrate a model's 0-100 quality scale on a reference set of aligned faces.

    python -m inference.calibrate --resume CKPT --inf_list lfw/img.list
    python -m inference.calibrate --resume CKPT --feat-list lfw.npz      # magnitudes already computed

Fits the logistic magnitude -> 0-100 map of ``inference.quality_scale`` (centre = median magnitude,
width = (p95 - p5) / (2 ln 19)) and writes it next to the checkpoint as ``CKPT.quality.json`` (or
``--out``), where ``inference.assess`` finds it and reports ``quality_scale = calibrated``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from faces.face_list import read_image_list
from inference.extract import prepare_model
from inference.feat_torch import make_loader, run_model
from inference.quality_scale import (
    OFIQ,
    file_sha256,
    fit_anchored,
    fit_calibration,
    logistic_quality,
    save_calibration,
    side_file,
)
from models.checkpoint import load_backbone
from utils.cli import HelpFormatter, run_cli
from utils.convention import parse_convention
from utils.cpu_info import usable_cores
from utils.dist import resolve_device
from utils.feature_io import load_feature_file
from utils.precision import DTYPES


def reference_magnitudes(resume: str, inf_list: str, *, arch: str | None = None, device: str = "auto",
                         dtype: str = "fp32", batch_size: int = 64, workers: int = 0,
                         convention: str | None = None) -> np.ndarray:
    """Magnitudes of the aligned faces of ``inf_list`` under the checkpoint (gen_feat's extraction)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(usable_cores())
    conv = parse_convention(convention) if convention else None
    model, conv, info = load_backbone(resume, arch, "cpu", conv)
    model = prepare_model(model, dev, dtype=DTYPES[dtype])
    _, resolved = read_image_list(inf_list)
    loader = make_loader(resolved, batch_size, workers, dev)
    feats = run_model(model, loader, len(resolved), info["embedding_size"], dev, convention=conv,
                      dtype=DTYPES[dtype], print_freq=10**9)
    return np.linalg.norm(feats.astype(np.float64), axis=1)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fit a checkpoint's 0-100 quality scale to a reference set",
                                formatter_class=HelpFormatter)
    p.add_argument("--resume", required=True, help="the checkpoint to calibrate")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inf_list", "--inf-list", help="reference list of aligned 112x112 faces (first token)")
    src.add_argument("--feat-list", help="features of the reference set made with this checkpoint")
    p.add_argument("--damaged-list", default=None,
                   help="a second list of damaged faces: the scale then puts the reference's median at 80 and "
                   "these faces' median at 20 (inference.quality_scale.fit_anchored) instead of the reference's at 50")
    p.add_argument("--out", default=None, help="output (default: CKPT.quality.json beside the checkpoint)")
    p.add_argument("--arch", default=None, help="backbone; read from the checkpoint when absent")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda[:N]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="precision of the embedding pass")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="faces per forward pass")
    p.add_argument("-j", "--workers", type=int, default=0, help="image decoding worker processes")
    p.add_argument("--input-convention", default=None,
                   help="override the checkpoint's input convention (magface, insightface, imagenet)")
    return p


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    if args.feat_list:
        mags, source = load_feature_file(args.feat_list).magnitudes, str(args.feat_list)
    else:
        mags = reference_magnitudes(args.resume, args.inf_list, arch=args.arch, device=args.device,
                                    dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
                                    convention=args.input_convention)
        source = str(args.inf_list)
    if args.damaged_list:
        damaged = reference_magnitudes(args.resume, args.damaged_list, arch=args.arch, device=args.device,
                                       dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
                                       convention=args.input_convention)
        calibration = fit_anchored(mags, damaged, f"{source} + {args.damaged_list}", file_sha256(args.resume))
    else:
        calibration = fit_calibration(mags, source, file_sha256(args.resume))
    out = Path(args.out) if args.out else side_file(args.resume)
    save_calibration(calibration, out)
    q = logistic_quality(mags, calibration)
    q_ofiq = logistic_quality(mags, OFIQ)
    print(f"{len(mags)} reference faces: magnitude p5 {calibration.p5:.3f}, median {calibration.median:.3f}, "
          f"p95 {calibration.p95:.3f}\ncalibration: centre {calibration.centre:.3f}, width {calibration.width:.3f} "
          f"({calibration.rule}) -> reference quality mean {q.mean():.1f} (OFIQ's constants would give "
          f"{q_ofiq.mean():.1f})\nwrote {out}")
    return 0



def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``); --debug for a traceback."""
    return run_cli(_main, argv, "inference.calibrate")


if __name__ == "__main__":
    sys.exit(main())
