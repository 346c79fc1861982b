"""Face quality (and features) straight from photographs.

    python -m inference.assess photos/ more.jpg list.txt --out DIR          # the shipped quality model
    python -m inference.assess photos/ --resume CKPT --out DIR               # any other checkpoint

Each photograph is read, its faces detected (RetinaFace, ``faces.detect``), one chosen (``--policy``),
aligned to 112x112 (``faces.align``) and embedded in batches; the magnitude of the embedding is the
MagFace quality, also reported on a 0-100 scale (``inference.quality_scale``). Writes DIR/quality.csv and
DIR/quality.json (one row per face, or per photograph that gave none, with its ``status``) and
DIR/contact_sheet.png (faces sorted by quality, lowest first); ``--save-crops`` and
``--save-features`` add the aligned faces and a ``features.npz``. Exit code 0 when at least one face
was assessed, 1 when none could be (or, with ``--strict``, when any input failed), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataloader.photo_loader import default_workers, iter_photo_faces
from faces.detect import POLICIES
from faces.photo_faces import FaceOptions, FaceRecord, add_face_args, collect_inputs
from inference.extract import embed_batch, prepare_model
from inference.int8 import (
    BUNDLED_CALIB_LIST,
    DEFAULT_CALIB_COUNT,
    check_quantizable,
    fp32_export,
    int8_model,
    spread_calibration,
)
from inference.onnx_model import DEFAULT_BATCH, OnnxFaceModel, load_onnx_model, onnxruntime_installed
from inference.quality_report import contact_sheet, record_row, save_crops, write_csv, write_quality_json
from inference.quality_scale import SCALES, logistic_quality, resolve_scale
from models.checkpoint import load_backbone
from models.quality_model import QUALITY_MODEL
from utils.cli import HelpFormatter, keyword_defaults, run_cli
from utils.clock import process_age
from utils.convention import parse_convention
from utils.cpu_info import PrecisionChoice, choose_precision, usable_cores
from utils.dist import resolve_device
from utils.feature_io import write_features
from utils.precision import DTYPES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Face quality and features from photographs",
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders (walked) or list files (.txt/.list/.lst)")
    p.add_argument("--resume", default=str(QUALITY_MODEL),
                   help="checkpoint (released MagFace, insightface or ours); default: the shipped quality model, a "
                   "MagFace fine-tune of a converged MobileFaceNet with its 0-100 calibration (raw/quality)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", default=None, help="backbone; read from the checkpoint when absent")
    d = keyword_defaults(assess)
    p.add_argument("--quality-scale", choices=SCALES, default=d["quality_scale"],
                   help="0-100 mapping: calibrated (CKPT.quality.json), ofiq (OFIQ's constants), raw "
                   "(the magnitude itself); auto = calibrated when the side file exists, else ofiq")
    add_face_args(p, POLICIES)
    p.add_argument("-b", "--batch-size", type=int, default=d["batch_size"], help="faces per forward pass")
    p.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", *sorted(DTYPES), "int8"], default=d["dtype"],
                   help="precision of the embedding pass; auto: bf16 on a GPU and on CPUs with native bf16 "
                   "(AVX512-BF16/AMX, ~2x faster), else fp32 (utils.cpu_info); int8: the checkpoint quantized by "
                   "onnxruntime on the CPU (inference.int8, cached; not for mobilefacenet, the shipped model); "
                   "what ran is printed and in the report")
    p.add_argument("--backend", choices=BACKENDS, default=d["backend"],
                   help="what embeds the faces; auto, for --dtype auto on a CPU: onnxruntime's fp32 (the "
                   "checkpoint's cached ONNX export, equal to PyTorch's fp32 to ~1e-6) where the CPU has no native "
                   "bf16, and for mobilefacenet (the shipped model), as fast there as PyTorch's bf16; else torch")
    p.add_argument("--calib-list", default=d["calib_list"],
                   help="--dtype int8: aligned faces to calibrate the quantization on, an evenly spread "
                   f"{DEFAULT_CALIB_COUNT} of them (default: the bundled LFW faces)")
    p.add_argument("--input-convention", default=None, help="override the checkpoint's input convention")
    p.add_argument("--save-crops", action="store_true", help="write the aligned faces to OUT/crops/")
    p.add_argument("--save-features", action="store_true", help="write OUT/features.npz")
    p.add_argument("--strict", action="store_true", help="exit 1 when any input failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class Embedder:
    """Batches aligned crops through the backbone; results are (record, feature) in input order."""

    def __init__(self, model: torch.nn.Module, convention, device: torch.device, dtype: torch.dtype,
                 batch_size: int) -> None:
        self.model, self.convention, self.device, self.dtype = model, convention, device, dtype
        self.batch_size, self.pending, self.done = batch_size, [], []

    def add(self, rec: FaceRecord) -> None:
        self.pending.append(rec)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.done += list(zip(self.pending, self.embed(np.stack([r.crop for r in self.pending])), strict=True))
        self.pending = []

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """N x 112 x 112 x 3 BGR uint8 crops -> N x D features."""
        images = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(self.device)
        return embed_batch(self.model, images, self.convention, self.dtype, channels_last=True).cpu().numpy()


class OnnxEmbedder(Embedder):
    """The same batches through an ONNX model (``inference.onnx_model``: the fp32 export or the int8 model)."""

    def __init__(self, model: OnnxFaceModel, batch_size: int) -> None:
        self.model, self.batch_size, self.pending, self.done = model, batch_size, [], []

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.model.embed(crops, self.batch_size)


def int8_embedder(resume: str, arch: str | None, convention, calib_list: str, batch_size: int,
                  choice: PrecisionChoice) -> tuple[OnnxEmbedder, PrecisionChoice]:
    """``--dtype int8``: the checkpoint's cached int8 model (quantized on first use, calibrated on an evenly
    spread ``DEFAULT_CALIB_COUNT`` of the aligned faces of ``calib_list``), on the runtime ``auto`` picks."""
    calib = spread_calibration(calib_list)
    model = load_onnx_model(int8_model(resume, calib, arch=arch, convention=convention), threads=usable_cores(),
                            spin=False)
    return OnnxEmbedder(model, batch_size), replace(choice, backend=model.runtime)


BACKENDS = ("auto", "torch", "onnxruntime")
# archs whose fp32 on onnxruntime is as fast as PyTorch's bf16, with fp32's exact scores: mobilefacenet alone 654
# faces/s against PyTorch's bf16 561 and fp32 285; in assess 121-124 photos/s against bf16's 117-127 (2-core AMD EPYC
# with AVX512-BF16, 2026-12-07; bench/RESULTS.md)
ONNX_FASTER = frozenset({"mobilefacenet"})


def choose_assess_backend(requested: str, choice: PrecisionChoice, arch: str,
                          have_onnxruntime: bool | None = None) -> tuple[str, str]:
    """(backend, why) for the embedding pass: ``torch`` or ``onnxruntime`` (fp32, or the int8 model)."""
    if choice.dtype == "int8":
        return "onnxruntime", "int8 runs on the ONNX path"
    if requested == "onnxruntime" and (choice.device != "cpu" or choice.dtype != "fp32"):
        raise ValueError(f"--backend onnxruntime runs fp32 on the CPU, not {choice.dtype} on {choice.device}: use "
                         "--dtype fp32 (or auto) on the CPU, or --backend torch")
    if requested != "auto":
        return requested, "as asked"
    if choice.device != "cpu" or choice.requested != "auto":
        return "torch", f"--dtype {choice.requested} on {choice.device}"
    if not (onnxruntime_installed() if have_onnxruntime is None else have_onnxruntime):
        return "torch", "onnxruntime is not installed"
    if choice.dtype == "fp32":
        return "onnxruntime", "fp32 on onnxruntime, faster than PyTorch's on a CPU without native bf16"
    if arch in ONNX_FASTER:
        return "onnxruntime", f"{arch}: fp32 on onnxruntime is as fast as PyTorch's bf16, and exact"
    return "torch", "PyTorch's bf16 is the faster path"


def onnx_fp32_embedder(resume: str, arch: str | None, convention, batch_size: int) -> OnnxEmbedder:
    """The checkpoint's cached fp32 ONNX export (made on first use) on onnxruntime."""
    model = load_onnx_model(fp32_export(resume, arch=arch, convention=convention), "onnxruntime",
                            threads=usable_cores(), spin=False)  # it takes turns with the detector's session
    return OnnxEmbedder(model, min(batch_size, DEFAULT_BATCH))


DEFAULT_FACES = FaceOptions()
# perf_counter() at the process start when this module is the program (start-up then counts the imports too)
_process_start: float | None = None


@dataclass(frozen=True)
class Outputs:
    """What ``assess`` writes beside quality.csv / quality.json / contact_sheet.png, and its exit rule."""

    save_crops: bool = False
    save_features: bool = False
    strict: bool = False  # exit 1 when any input gave no face


def assess(inputs: Sequence[str], resume: str, out: str | Path, *, arch: str | None = None,
           quality_scale: str = "auto", faces: FaceOptions = DEFAULT_FACES, workers: int | None = None,
           batch_size: int = 32, device: str = "auto", dtype: str = "auto", input_convention: str | None = None,
           outputs: Outputs = Outputs(), progress: bool = True, calib_list: str = str(BUNDLED_CALIB_LIST),
           backend: str = "auto") -> int:
    """Detect, align and embed the faces of ``inputs`` (files, folders, list files) with the checkpoint ``resume``
    and write the quality report to ``out``; returns the exit status (module docstring)."""
    t0 = time.perf_counter()
    torch_device = resolve_device(device)
    # before the model loads: fp16 on a CPU or int8 on a GPU fails fast
    choice = choose_precision(dtype, torch_device.type, int8=True)
    if torch_device.type == "cpu":
        torch.set_num_threads(usable_cores())
    given = parse_convention(input_convention) if input_convention else None
    model, conv, info = load_backbone(resume, arch, "cpu", given)
    if choice.dtype == "int8":
        check_quantizable(resume, info["arch"])
    calibration, scale, warning = resolve_scale(quality_scale, resume, info)
    if warning:
        print(warning, file=sys.stderr)
    paths = collect_inputs(inputs)
    if not paths:
        raise ValueError(f"no images found in {' '.join(inputs)}")
    path, why = choose_assess_backend(backend, choice, info["arch"])
    embedder = None
    if choice.dtype == "int8":
        embedder, choice = int8_embedder(resume, arch, given, calib_list, batch_size, choice)
    elif path == "onnxruntime":
        try:
            embedder = onnx_fp32_embedder(resume, arch, given, batch_size)
        except (OSError, RuntimeError) as e:  # the cache cannot be written (a read-only home), or the export failed
            if backend != "auto":
                raise
            print(f"the ONNX export of {resume} could not be made or cached ({e}); PyTorch instead (--backend torch "
                  "skips this attempt, MAGFACE_CACHE moves the cache)", file=sys.stderr, flush=True)
        else:
            reason = why if choice.reason == "as asked" else f"{choice.reason.split(';')[0]}; {why}"
            choice = replace(choice, dtype="fp32", backend="onnxruntime", reason=reason)
    if embedder is None:
        model = prepare_model(model, torch_device, dtype=DTYPES[choice.dtype])
        embedder = Embedder(model, conv, torch_device, DTYPES[choice.dtype], batch_size)
    choice.announce()
    workers = default_workers() if workers is None else workers
    order: list[FaceRecord] = []
    # until the first photograph: checkpoint and calibration, and as a command the interpreter and imports too
    startup = time.perf_counter() - (t0 if _process_start is None else _process_start)
    bar = tqdm(total=len(paths), unit="photo", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for records in iter_photo_faces(paths, faces, workers):
        for rec in records:
            order.append(rec)
            if rec.status == "ok":
                embedder.add(rec)
        bar.update(1)
    embedder.flush()
    bar.close()
    feats = {id(rec): f for rec, f in embedder.done}
    run = {"checkpoint": str(resume), "arch": info["arch"], "quality_scale": scale, "policy": faces.policy,
           "dtype": choice.dtype, "precision": choice.to_dict(), "startup_s": round(startup, 2)}
    return write_outputs(Path(out), outputs, order, feats, calibration, run, time.perf_counter() - t0, len(paths))


def write_outputs(out: Path, outputs: Outputs, order: list[FaceRecord], feats: dict, calibration, run: dict,
                  wall: float, num_photos: int) -> int:
    """The report files and the summary lines; ``run`` holds the summary's checkpoint, arch, quality_scale,
    policy, dtype, precision and startup_s."""
    scale = run["quality_scale"]
    faces = [r for r in order if r.status == "ok"]
    mags = np.array([np.linalg.norm(feats[id(r)]) for r in faces], dtype=np.float64)
    quality = logistic_quality(mags, calibration) if calibration is not None else mags
    by_face = {id(r): (m, q) for r, m, q in zip(faces, mags, quality, strict=True)}
    rows = [record_row(r, *by_face.get(id(r), (None, None)), scale) for r in order]
    counts: dict[str, int] = {}
    for r in order:
        counts[r.status] = counts.get(r.status, 0) + 1
    failed = num_photos - len({r.path for r in faces})
    summary = {"photos": num_photos, "faces": len(faces), "statuses": counts, **run,
               "seconds": round(wall, 2), "photos_per_s": round(num_photos / wall, 3) if wall > 0 else None}
    if calibration is not None:
        summary["calibration"] = {"centre": calibration.centre, "width": calibration.width,
                                  "source": calibration.source}
    if outputs.save_crops and faces:
        save_crops(out / "crops", faces)
    if outputs.save_features and faces:
        write_features(out / "features.npz", [f"{r.path}#{r.face}" for r in faces],
                       np.stack([feats[id(r)] for r in faces]), mags, meta={"precision": run.get("precision")})
    if faces:
        ranked = np.argsort(mags, kind="stable")
        label = "a" if scale == "raw" else "q"
        contact_sheet([faces[i].crop for i in ranked],
                      [f"{label}={quality[i]:.0f} {Path(faces[i].path).stem}" for i in ranked],
                      out / "contact_sheet.png", title=f"{len(faces)} faces of {num_photos} photographs scored by "
                      f"{run['arch']} ({Path(run['checkpoint']).name}), quality scale {scale}; lowest first")
    write_quality_json(out / "quality.json", rows, summary)
    write_csv(out / "quality.csv", rows)
    status_text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{num_photos} photos, {len(faces)} faces assessed ({status_text}) in {wall:.1f}s "
          f"({num_photos / wall:.2f} photos/s; start-up {run['startup_s']:.1f}s before the first photograph); "
          f"quality scale {scale}; wrote {out / 'quality.csv'}")
    if faces:
        print(f"magnitude mean {mags.mean():.2f} [{mags.min():.2f}, {mags.max():.2f}], quality mean "
              f"{quality.mean():.1f} [{quality.min():.0f}, {quality.max():.0f}]")
    if not faces:
        print("error: no face could be assessed", file=sys.stderr)
        return 1
    if outputs.strict and failed:
        print(f"error: {failed} of {num_photos} inputs gave no face (--strict)", file=sys.stderr)
        return 1
    return 0


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    faces = FaceOptions(args.policy, args.det_score, args.min_size, args.det_size)
    return assess(args.inputs, args.resume, args.out, arch=args.arch, quality_scale=args.quality_scale, faces=faces,
                  workers=args.workers, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                  input_convention=args.input_convention, progress=not args.no_progress, calib_list=args.calib_list,
                  backend=args.backend,
                  outputs=Outputs(args.save_crops, args.save_features, args.strict))



def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``); --debug for a traceback."""
    return run_cli(_main, argv, "inference.assess")


if __name__ == "__main__":
    _process_start = time.perf_counter() - process_age()
    sys.exit(main())
