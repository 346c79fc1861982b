"""The exported (fp32) or quantized (int8) ONNX face model on OpenVINO's CPU plugin.

Same interface as ``inference.ort_embed.OrtModel`` (``embed``, ``metadata``, ``convention``), reading the
same files: the QDQ model of ``inference.int8`` and the fp32 export of ``inference.export_onnx``. Why a second
runtime: on a CPU with AMX (Intel Xeon 4th generation and later), OpenVINO runs the int8 convolutions on the
AMX tiles; measured on a 2-core Xeon with AMX, iresnet50 at batch 64, in process: int8 79 img/s against
onnxruntime's 20.5, fp32 20.2 against 16.0. On a 2-core AMD EPYC without AMX it was no faster than
onnxruntime, so ``auto`` picks it only where the CPU reports AMX.

Inference precision is pinned to f32 (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise run the fp32
model, and the int8 model's unquantized layers (the embedding), in bf16 on such CPUs. The int8 model's
features then stay within cosine 0.99 of fp32 and the fp32 model's within 1e-5 of onnxruntime.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from inference.ort_embed import OnnxFaceModel
from utils.convention import InputConvention
from utils.cpu_info import cpu_has_amx, usable_cores


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_runtime(runtime: str, *, installed: bool | None = None, amx: bool | None = None) -> str:
    """``onnxruntime`` or ``openvino`` for a requested ``auto`` / ``onnxruntime`` / ``openvino``."""
    installed = openvino_installed() if installed is None else installed
    if runtime == "openvino":
        if not installed:
            raise ValueError("--runtime openvino: the openvino package is not installed (pip install openvino)")
        return "openvino"
    if runtime == "onnxruntime":
        return "onnxruntime"
    if runtime != "auto":
        raise ValueError(f"unknown runtime {runtime!r}: auto, onnxruntime or openvino")
    return "openvino" if installed and (cpu_has_amx() if amx is None else amx) else "onnxruntime"


class OvModel(OnnxFaceModel):
    """An ONNX face model compiled by OpenVINO for the CPU, fp32 inference precision."""

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, *, threads: int = 0,
                 convention: InputConvention | None = None) -> None:
        import openvino as ov

        path = self.model_file(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises its own types for a damaged or foreign file
            raise self.not_loadable(path, e) from None
        info = model.get_rt_info()
        framework = info["framework"] if "framework" in info else {}
        metadata = {str(k): str(getattr(v, "value", v)) for k, v in dict(framework).items()}
        super().__init__(path, metadata, convention)
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads or usable_cores()}
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[0].copy()
