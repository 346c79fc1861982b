"""Export a backbone to ONNX and check the export against PyTorch with onnxruntime.

The ONNX graph takes the model's float input (``input``, (B, 3, 112, 112), already normalised) and returns
the raw embedding (``embedding``, (B, D)); the batch axis is dynamic. A model that works at another
resolution (``input_size`` 56 for the CPU demo) keeps that 112x112 input: its resize is part of its forward
and so of the graph (``utils.convention``: one face size for every tool); the metadata records both sizes.
Because the normalisation lives outside the graph, the file's ``metadata_props`` carry the input
convention (``input_convention``: JSON with order/mean/std, ``x = (pixel / 255 - mean) / std``)
so a deployment can apply it.

The 0-100 quality calibration travels with the model: when the checkpoint has one (its side file
``CKPT.quality.json``, or ``--quality-json``), the export embeds it in the metadata (``quality_calibration``:
the side file's JSON) and writes ``MODEL.onnx.quality.json`` beside the model, so ``inference.ort_embed``
scores faces as the torch path (``inference.assess``) does. Without one, a side file left beside MODEL.onnx
by an earlier export is removed: it belonged to the model this export replaces.

The legacy TorchScript exporter (``dynamo=False``) is used: the torch.export-based one needs the extra
``onnxscript`` package, and the legacy path exports iResNet exactly.

Usage: ``python -m inference.export_onnx --resume CKPT [--arch A] --out model.onnx [--opset 17] [--batch 4]
[--quality-json CKPT.quality.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root, not inference/, goes on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import onnx
import torch
from torch import nn

from inference.onnx_model import CALIBRATION_KEY
from inference.quality_scale import (
    Calibration,
    calibration_text,
    load_calibration,
    resolve_scale,
    save_calibration,
    side_file,
)
from models.checkpoint import load_backbone
from utils.cli import run_cli
from utils.convention import FACE_SIZE, InputConvention, parse_convention, to_model_input

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
DEFAULT_TOLERANCE = 1e-3


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    convention: InputConvention,
    *,
    input_size: int = FACE_SIZE,
    opset: int = 17,
    batch: int = 4,
    metadata: dict[str, str] | None = None,
) -> None:
    """Trace ``model`` (eval mode, CPU) to ``path`` with a dynamic batch axis and the convention stored."""
    model = model.cpu().eval()
    dummy = torch.zeros(batch, 3, input_size, input_size)
    with torch.no_grad():
        model(dummy)  # builds the cached resize matrices first, so the trace holds them as constants
    with warnings.catch_warnings():
        # torch >= 2.9 marks the TorchScript exporter deprecated; it is still the dependency-free path.
        warnings.simplefilter("ignore", DeprecationWarning)
        # the input side is fixed (FACE_SIZE): the model's shape checks may become constants of the graph
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    props = {"input_convention": json.dumps(convention.to_dict()), **(metadata or {})}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    convention: InputConvention,
    *,
    batch_sizes: Sequence[int] = (1, 5),
    input_size: int = FACE_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """Max abs difference of onnxruntime vs PyTorch on random images, and the embedding scale (max abs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    model = model.cpu().eval()
    worst, scale = 0.0, 0.0
    for b in batch_sizes:
        pixels = torch.randint(0, 256, (b, 3, input_size, input_size), generator=generator, dtype=torch.uint8)
        x = to_model_input(pixels, convention)
        with torch.inference_mode():
            expected = model(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise ValueError(
                f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape} at batch {b}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return worst, scale


def export_calibration(resume: str, info: dict, quality_json: str | None) -> Calibration | None:
    """The calibration the export carries: ``quality_json``, else the checkpoint's side file (a warning when it
    was fitted to another version of the checkpoint, as the torch path warns), else None."""
    if quality_json:
        return load_calibration(quality_json)
    calibration, scale, warning = resolve_scale("auto", resume, info)
    if scale != "calibrated":
        return None
    if warning:
        print(warning, file=sys.stderr)
    return calibration


def place_calibration(out: Path, calibration: Calibration | None) -> str:
    """Write (or clear) ``MODEL.onnx.quality.json`` beside the exported model; a line saying what was done."""
    beside = side_file(out)
    if calibration is not None:
        save_calibration(calibration, beside)
        return f"quality calibration (centre {calibration.centre:.4g}, width {calibration.width:.4g}) in the " \
               f"metadata and in {beside}"
    if beside.exists():
        beside.unlink()
        return f"no quality calibration for this checkpoint; removed {beside}, left by the model this export replaced"
    return "no quality calibration for this checkpoint (ort_embed will use OFIQ's constants, with a warning)"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a MagFace backbone to ONNX and verify it")
    parser.add_argument("--resume", required=True, help="checkpoint (released MagFace, insightface, ours)")
    parser.add_argument("--arch", default=None, help="backbone name when the checkpoint does not say")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset of the exported graph")
    parser.add_argument("--batch", type=int, default=4, help="batch of the tracing input (axis is dynamic)")
    parser.add_argument("--input-convention", default=None,
                        help="override the checkpoint's convention: magface, insightface or ORDER:m:s")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max abs difference allowed, relative to the largest embedding value")
    parser.add_argument("--quality-json", default=None,
                        help="quality calibration to carry (default: the checkpoint's CKPT.quality.json when present)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    override = parse_convention(args.input_convention) if args.input_convention else None
    model, convention, info = load_backbone(args.resume, args.arch, "cpu", override)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    size = FACE_SIZE
    metadata = {"arch": info["arch"], "embedding_size": str(info["embedding_size"]), "input_size": str(size),
                "model_input_size": str(info["input_size"])}
    calibration = export_calibration(args.resume, info, args.quality_json)
    if calibration is not None:
        metadata[CALIBRATION_KEY] = calibration_text(calibration)
    try:
        export_onnx(model, tmp, convention, input_size=size, opset=args.opset, batch=args.batch,
                    metadata=metadata)
        sizes = (1, args.batch + 1)
        diff, scale = check_onnx(model, tmp, convention, batch_sizes=sizes, input_size=size)
        print(f"onnxruntime vs PyTorch at batch {sizes}: max abs diff {diff:.3g} "
              f"(embedding scale {scale:.3g}, relative {diff / max(scale, 1e-12):.3g})")
        if diff > args.tolerance * max(scale, 1e-12):
            print(f"export check failed: relative difference above {args.tolerance}", file=sys.stderr)
            return 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out} ({info['arch']}, input {INPUT_NAME} (B,3,{size},{size}) {convention.to_dict()}, "
          f"output {OUTPUT_NAME} (B,{info['embedding_size']}), opset {args.opset})")
    print(place_calibration(out, calibration))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "export_onnx.py"))
