"""int8 inference: a checkpoint quantized once with onnxruntime's static quantization, then cached.

Recipe (onnxruntime's advice for x86 CPUs with VNNI): the backbone is exported to ONNX
(``inference.export_onnx``, input convention in the metadata), pre-processed (shape inference, BatchNorm
folded into the convs), and ``quantize_static`` turns it into QDQ format with per-channel int8
weights and uint8 activations, their ranges calibrated (min/max) on aligned faces run through the
fp32 model. Only the convolutions are quantized: the embedding layer (Gemm) stays fp32, as in every
precision here, since it sets the magnitude. By default the calibration faces are the first ``calib_count``
(256) faces of the list being embedded; ``gen_feat --calib-list`` names another list.

The result is cached in ``$MAGFACE_CACHE`` (default ``$XDG_CACHE_HOME/magface``, i.e.
``~/.cache/magface``) under a name keyed by the checkpoint's SHA-256, the architecture, the input
convention, the calibration images (their paths and sizes) and this recipe's version; written
atomically, so only the first run pays for the export and the calibration, and a changed checkpoint
or calibration set makes a new file. ``inference.ort_embed`` runs the cached file without PyTorch.
The same cache holds the checkpoint's fp32 export (``fp32_export``: ``gen_feat --backend onnxruntime``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from faces.face_list import read_image_list
from inference.onnx_model import cache_dir, model_input
from inference.quality_scale import file_sha256
from utils.convention import InputConvention, read_aligned_face

RECIPE = "qdq-conv-s8w-per-channel-u8a-minmax-v1"
DEFAULT_CALIB_COUNT = 256
# the aligned faces int8 calibrates on where the command has no list of its own (assess: photographs)
BUNDLED_CALIB_LIST = Path(__file__).resolve().parents[1] / "raw" / "demo_data" / "lfw" / "img.list"
CALIB_BATCH = 16


def cache_key(checkpoint_sha256: str, arch: str | None, convention: InputConvention | None,
              calib_paths: list[str]) -> str:
    """A short digest of everything the quantized model depends on (``arch`` and ``convention`` as the user
    gave them, None when read from the checkpoint, whose content the SHA-256 already covers)."""
    calib = [(os.path.abspath(p), os.path.getsize(p)) for p in calib_paths]
    conv = convention.to_dict() if convention else None
    text = json.dumps([checkpoint_sha256, arch, conv, calib, RECIPE])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class _FaceReader:
    """onnxruntime's CalibrationDataReader protocol: model inputs, a batch of aligned faces at a time,
    within the batch range ``set_range`` gives (onnxruntime's strided calibration, one batch at a time)."""

    def __init__(self, paths: list[str], convention: InputConvention, input_name: str) -> None:
        self.paths, self.convention, self.input_name = paths, convention, input_name
        self.batch, self.end = 0, len(self)

    def __len__(self) -> int:
        return -(-len(self.paths) // CALIB_BATCH)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.batch, self.end = start_index, min(end_index, len(self))

    def get_next(self) -> dict | None:
        if self.batch >= self.end:
            return None
        start = self.batch * CALIB_BATCH
        faces = np.stack([read_aligned_face(p) for p in self.paths[start:start + CALIB_BATCH]])
        self.batch += 1
        return {self.input_name: model_input(faces, self.convention)}


def quantize_onnx(fp32_path: Path, out_path: Path, calib_paths: list[str], convention: InputConvention) -> None:
    """Static QDQ quantization of an exported fp32 model, calibrated on ``calib_paths``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    metadata = {p.key: p.value for p in model.metadata_props}
    # convs only: the embedding layer (Gemm) stays fp32, as in every precision here (it sets the magnitude)
    quantize_static(str(pre), str(out_path), _FaceReader(calib_paths, convention, model.graph.input[0].name),
                    op_types_to_quantize=["Conv"],
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    # one batch of activations at a time, ranges merged (all at once: memory per face, bench/RESULTS.md)
                    extra_options={"CalibStridedMinMax": 1})
    quantized = onnx.load(str(out_path))
    for key, value in {**metadata, "quantization": RECIPE, "calibration_faces": str(len(calib_paths))}.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(quantized, str(out_path))


# Architectures whose int8 model this recipe gets wrong, with what to use instead.
NOT_QUANTIZABLE = {
    "mobilefacenet": "int8 is not accurate for mobilefacenet: this recipe gave min cosine 0.39 to fp32 on 256 LFW "
                     "faces and blurred copies (0.34 with its depthwise convs left in fp32; its last 7x7 depthwise "
                     "layer turns 15 dB of int8 noise into -2.6 dB; bench/RESULTS.md, 2026-12-07); use fp32, which "
                     "runs it at ~500 faces/s on 2 cores (gen_feat: --backend onnxruntime)",
}


def spread_calibration(list_path: str | os.PathLike, count: int = DEFAULT_CALIB_COUNT) -> list[str]:
    """``count`` aligned faces evenly spread over the list ``list_path`` (a sorted list's first ``count`` would be a
    handful of people)."""
    paths = read_image_list(list_path)[1]
    return paths[::max(1, len(paths) // count)][:count]


def check_quantizable(resume: str | os.PathLike, arch: str) -> None:
    """A one-line ValueError for an architecture this recipe quantizes badly (``NOT_QUANTIZABLE``)."""
    if arch in NOT_QUANTIZABLE:
        raise ValueError(f"{resume}: {NOT_QUANTIZABLE[arch]}")


def int8_model(resume: str | os.PathLike, calib_paths: list[str], *, arch: str | None = None,
               convention: InputConvention | None = None, cache: Path | None = None, log=print) -> Path:
    """The cached int8 ONNX file of ``resume`` (made on first use: export + calibration on ``calib_paths``)."""
    if not calib_paths:
        raise ValueError("int8 calibration needs at least one aligned face")
    return _cached_onnx(resume, calib_paths, arch=arch, convention=convention, cache=cache, log=log)


def fp32_export(resume: str | os.PathLike, *, arch: str | None = None, convention: InputConvention | None = None,
                cache: Path | None = None, log=print) -> Path:
    """The cached fp32 ONNX export of ``resume`` (made on first use; ``gen_feat --backend onnxruntime``)."""
    return _cached_onnx(resume, None, arch=arch, convention=convention, cache=cache, log=log)


def _cached_onnx(resume: str | os.PathLike, calib_paths: list[str] | None, *, arch: str | None,
                 convention: InputConvention | None, cache: Path | None, log) -> Path:
    """The int8 model calibrated on ``calib_paths``, or with None the fp32 export: one cache, one recipe."""
    if not Path(resume).is_file():
        raise FileNotFoundError(f"checkpoint not found: {resume}")
    cache = cache or cache_dir()
    kind = "fp32" if calib_paths is None else "int8"
    key = cache_key(file_sha256(resume), arch, convention, calib_paths or [])
    out = cache / f"{Path(resume).name}.{key}.{kind}.onnx"
    if out.is_file():
        return out
    from models.checkpoint import load_backbone  # torch: only the first run of a checkpoint needs it

    model, conv, info = load_backbone(resume, arch, "cpu", convention)
    if calib_paths is not None:
        check_quantizable(resume, info["arch"])
    from inference.export_onnx import export_onnx

    cache.mkdir(parents=True, exist_ok=True)
    what = "exporting" if calib_paths is None else f"quantizing (calibration on {len(calib_paths)} faces)"
    log(f"{kind}: {what} {resume} once per checkpoint -> {out}")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        metadata = {"arch": info["arch"], "embedding_size": str(info["embedding_size"]),
                    "model_input_size": str(info["input_size"])}
        export_onnx(model, fp32, conv, metadata=metadata)
        staged = fp32 if calib_paths is None else Path(tmp) / "int8.onnx"
        if calib_paths is not None:
            quantize_onnx(fp32, staged, calib_paths, conv)
        os.replace(staged, out)  # same folder: atomic
    return out
