"""gen_feat's ONNX path (fp32 or int8 on the CPU), without torch: the checkpoint's cached export or int8 model
(``inference.int8``) run on onnxruntime or OpenVINO (``inference.onnx_model``)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from faces.face_list import ImageList, read_image_list
from inference.feat_options import FeatOptions
from inference.onnx_model import DEFAULT_BATCH, embed_files, load_onnx_model
from utils.convention import parse_convention
from utils.cpu_info import PrecisionChoice
from utils.feature_io import check_room


def onnx_model_file(resume: str, images: ImageList, opts: FeatOptions) -> Path:
    """The checkpoint's cached int8 model or fp32 export (``inference.int8``), made on first use (an OSError
    when the cache cannot be written)."""
    from inference.int8 import fp32_export, int8_model

    if opts.flip or opts.device not in ("auto", "cpu") or opts.dtype in ("bf16", "fp16"):
        raise ValueError("onnxruntime (--dtype int8, --backend onnxruntime) runs fp32 or int8 on the CPU without "
                         "--flip; drop --device/--flip, or use --backend torch")
    if opts.calib_count < 1:
        raise ValueError(f"--calib-count must be at least 1, got {opts.calib_count}")
    calib = read_image_list(opts.calib_list)[1] if opts.calib_list else images.resolved
    conv = parse_convention(opts.input_convention) if opts.input_convention else None
    if opts.dtype == "int8":
        return int8_model(resume, calib[:opts.calib_count], arch=opts.arch, convention=conv)
    return fp32_export(resume, arch=opts.arch, convention=conv)


def extract_ort(resume: str, onnx_file: Path, images: ImageList, feat_list: str, opts: FeatOptions,
                why: str) -> tuple[np.ndarray, dict]:
    """``--dtype int8``, ``--backend onnxruntime`` or the default on a CPU without native bf16: ``onnx_file``
    on onnxruntime or OpenVINO (``--onnx-runtime``). Features in list order (NaN rows for skipped faces) and
    timings."""
    model = load_onnx_model(onnx_file, opts.onnx_runtime, threads=opts.threads)
    emb = int(model.metadata.get("embedding_size", 0))
    if opts.embedding_size and emb and opts.embedding_size != emb:
        raise ValueError(f"--embedding_size {opts.embedding_size} but {resume} gives {emb}-d embeddings")
    if emb:
        check_room(feat_list, images.listed, emb)  # again, with the model's own size
    batch_size = opts.batch_size or DEFAULT_BATCH
    t0 = time.perf_counter()
    dtype = "int8" if opts.dtype == "int8" else "fp32"
    if opts.dtype == dtype:
        reason = "as asked"
    else:
        reason = "--backend onnxruntime runs fp32" if opts.backend == "onnxruntime" else f"auto: {why}"
    choice = PrecisionChoice.on_cpu(dtype, opts.dtype, reason, backend=model.runtime)
    choice.announce()
    feats = embed_files(model, images.resolved, batch_size, opts.print_freq,
                        where=[images.where(i) for i in range(len(images))], skip_bad=opts.skip_bad_images)
    return feats, {"wall_s": time.perf_counter() - t0, "batch_size": batch_size, "workers": 0, "device": "cpu",
                   "what": f"{feats.shape[1]}-d, {dtype}, {model.runtime} cpu", "precision": choice.to_dict()}
