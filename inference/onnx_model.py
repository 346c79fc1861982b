"""The exported face model on a runtime: onnxruntime's CPU provider or OpenVINO's CPU plugin; no PyTorch.

A model exported by ``inference.export_onnx`` (fp32) or quantized by ``inference.int8`` carries its input
convention in the ONNX metadata (``input_convention``: channel order, mean, std), which this module applies
itself (``x = (pixel / 255 - mean) / std``, NCHW float32). Both runtimes read the same files and give the same
interface (``embed``, ``metadata``, ``convention``).

Why a second runtime: on a CPU with AMX (Intel Xeon 4th generation and later), OpenVINO runs the int8
convolutions on the AMX tiles, about 4x onnxruntime there; ``auto`` picks it only where the CPU reports AMX. On
a CPU with VNNI but no AMX (an AMD EPYC with AVX512-VNNI, 2026-12-07) its int8 kernels were 13 % faster than
onnxruntime's (78 against 69 faces/s, int8 iresnet50), but it compiles the model at each load (0.8 s), so it
pays only beyond about 500 faces (``--onnx-runtime openvino`` there); its fp32 was no faster than onnxruntime's.
Its inference precision is pinned to f32
(``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise run the fp32 model, and the int8 model's unquantized
layers (the embedding), in bf16 on such CPUs. The int8 model's features then stay within cosine 0.99 of fp32
and the fp32 model's within 1e-5 of onnxruntime.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faces.face_list import listed_face
from utils.convention import FACE_SIZE, InputConvention
from utils.cpu_info import CpuInfo, read_cpu_info, usable_cores

CALIBRATION_KEY = "quality_calibration"  # the metadata key inference.export_onnx writes
RUNTIMES = ("auto", "onnxruntime", "openvino")
DEFAULT_BATCH = 16  # faces per call: int8 iresnet50 ran 69 faces/s at 16 against 62 at 64 (onnxruntime, 2 cores)


def cache_dir() -> Path:
    """Where the fp32 exports and int8 models are kept (``inference.int8``): ``$MAGFACE_CACHE``, else
    ``$XDG_CACHE_HOME/magface`` (``~/.cache/magface``)."""
    if os.environ.get("MAGFACE_CACHE"):
        return Path(os.environ["MAGFACE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "magface"


def model_input(images: np.ndarray, convention: InputConvention) -> np.ndarray:
    """uint8 BGR (N, 112, 112, 3) faces -> the float32 NCHW input of ``convention`` (numpy's
    ``utils.convention.to_model_input``)."""
    if images.ndim != 4 or images.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 faces of shape (N, {FACE_SIZE}, {FACE_SIZE}, 3), "
                         f"got {images.dtype} {images.shape}")
    std = np.asarray(convention.std, dtype=np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(convention.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x = images.transpose(0, 3, 1, 2)
    x = (x[:, ::-1] if convention.order == "RGB" else x).astype(np.float32)
    x *= 1.0 / (255.0 * std)
    x -= mean / std
    return x


class OnnxFaceModel:
    """An exported face model with the convention from its metadata; subclasses run it (``_run``)."""

    runtime = ""

    def __init__(self, path: Path, metadata: dict[str, str], convention: InputConvention | None) -> None:
        self.path, self.metadata = path, metadata
        self.convention = convention or self._stored_convention()

    @staticmethod
    def model_file(path: str | os.PathLike) -> Path:
        """``path`` as a Path, or FileNotFoundError naming it (checked before a runtime parses anything)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        return path

    @staticmethod
    def not_loadable(path: Path, error: Exception) -> ValueError:
        """The one-line error for a file the runtime refused (runtimes raise their own exception types)."""
        return ValueError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})")

    def _stored_convention(self) -> InputConvention:
        text = self.metadata.get("input_convention")
        if text is None:
            raise ValueError(f"{self.path}: no 'input_convention' in the ONNX metadata (export it with "
                             f"python -m inference.export_onnx, or pass --input-convention)")
        try:
            return InputConvention.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{self.path}: metadata key 'input_convention' is not a convention ({e})") from None

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 BGR (N, 112, 112, 3) faces -> float32 (N, D) raw embeddings."""
        out = [self._run(model_input(images[i:i + batch_size], self.convention))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)


class OrtModel(OnnxFaceModel):
    """An exported face model on onnxruntime's CPU provider."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int = 0,
                 convention: InputConvention | None = None, spin: bool = True) -> None:
        """``spin=False``: idle threads sleep instead of spinning, for a model that takes turns with other work on
        the same cores (assess: the face detector's session), which their spinning would slow down."""
        import onnxruntime as ort

        path = self.model_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a damaged or foreign file
            raise self.not_loadable(path, e) from None
        self.input_name = self.session.get_inputs()[0].name
        super().__init__(path, dict(self.session.get_modelmeta().custom_metadata_map), convention)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


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


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_runtime(runtime: str, *, installed: bool | None = None, cpu: CpuInfo | None = None) -> str:
    """``onnxruntime`` or ``openvino`` for a requested ``auto`` / ``onnxruntime`` / ``openvino``; ``auto`` takes
    OpenVINO where it is installed and the CPU has AMX."""
    installed = openvino_installed() if installed is None else installed
    if runtime == "openvino":
        if not installed:
            raise ValueError("--runtime openvino: the openvino package is not installed (pip install openvino)")
        return "openvino"
    if runtime == "onnxruntime":
        return "onnxruntime"
    if runtime != "auto":
        raise ValueError(f"unknown runtime {runtime!r}: auto, onnxruntime or openvino")
    if not installed:
        return "onnxruntime"
    cpu = read_cpu_info() if cpu is None else cpu
    return "openvino" if cpu.has("amx_int8", "amx_bf16") else "onnxruntime"


def load_onnx_model(path: str | os.PathLike, runtime: str = "auto", *, threads: int = 0,
                    convention: InputConvention | None = None, spin: bool = True) -> OnnxFaceModel:
    """The model on ``runtime`` (``auto``: ``choose_runtime``; ``spin``: ``OrtModel``'s)."""
    if choose_runtime(runtime) == "openvino":
        return OvModel(path, threads=threads, convention=convention)
    return OrtModel(path, threads=threads, convention=convention, spin=spin)


def embed_files(model: OnnxFaceModel, paths: list[str], batch_size: int = 64, print_freq: int = 10, *,
                where: Sequence[str] | None = None, skip_bad: bool = False) -> np.ndarray:
    """Decode and embed aligned faces a batch at a time (decoding is a small part of an iResNet's time).

    A bad file raises naming its list line (``where[i]``, e.g. ``LIST:LINE``) and the file; with ``skip_bad``
    its row is NaN instead (gen_feat drops those rows).
    """
    feats, t0 = [], time.perf_counter()
    blank = np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8)
    for b, start in enumerate(range(0, len(paths), batch_size)):
        rows = range(start, min(start + batch_size, len(paths)))
        faces = [listed_face(paths[i], where[i] if where else None, skip_bad) for i in rows]
        out = model.embed(np.stack([blank if f is None else f for f in faces]), batch_size)
        out[[f is None for f in faces]] = np.nan
        feats.append(out)
        done = rows.stop
        if (b + 1) % print_freq == 0 or done == len(paths):
            print(f"[{done}/{len(paths)}] {done / (time.perf_counter() - t0):.1f} img/s", flush=True)
    return np.concatenate(feats)
