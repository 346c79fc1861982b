"""What gen_feat runs: its options (``FeatOptions``) and the path they pick (``choose_backend``), told without
importing torch, so that the ONNX path starts without it and the torch path (``inference.feat_torch``) reads
the same options."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from inference.onnx_model import onnxruntime_installed
from utils.cpu_info import NATIVE_BF16, CpuInfo, read_cpu_info

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # the PyTorch precisions (utils.precision.DTYPES); int8: onnxruntime
GPU_NODES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm and WSL drivers' device files


@dataclass(frozen=True)
class FeatOptions:
    """How gen_feat embeds a list: its flags, whose defaults are these (``--help`` says what each does)."""

    arch: str | None = None  # None: the checkpoint's
    batch_size: int | None = None  # None: 64 on CPU, 256 on GPU
    workers: int | None = None  # None: 0 on CPU, 8 on GPU
    embedding_size: int | None = None  # checked against the checkpoint when given
    device: str = "auto"
    dtype: str = "auto"  # auto, DTYPE_NAMES or int8 (utils.cpu_info.choose_precision)
    backend: str = "auto"  # torch, onnxruntime, or auto (choose_backend)
    onnx_runtime: str = "auto"  # inference.onnx_model.RUNTIMES
    calib_list: str | None = None
    calib_count: int = 256
    flip: bool = False
    channels_last: str = "auto"  # auto, on, off
    fuse: str = "on"
    compile: str = "off"
    threads: int = 0
    input_convention: str | None = None
    print_freq: int = 10
    skip_bad_images: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatOptions:
        """The parsed command line; the seed's ``--cpu-mode`` becomes ``device="cpu"``."""
        options = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
        return replace(options, device="cpu") if args.cpu_mode else options


def gpu_visible() -> bool:
    """Whether a GPU may be usable, told without importing torch: a driver's device file exists and
    CUDA_VISIBLE_DEVICES does not hide every GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return any(Path(node).exists() for node in GPU_NODES)


def choose_backend(opts: FeatOptions, cpu: CpuInfo | None = None, gpu: bool | None = None,
                   have_onnxruntime: bool | None = None) -> tuple[str, str]:
    """(backend, why) for ``opts``: ``--backend auto`` with ``--dtype auto`` takes onnxruntime's fp32 on a CPU
    without native bf16 (where PyTorch would run fp32 too, after the torch import), PyTorch otherwise."""
    if opts.dtype == "int8":
        return "onnxruntime", "int8 runs on the ONNX path"
    if opts.backend != "auto":
        return opts.backend, "as asked"
    if opts.dtype != "auto":
        return "torch", f"--dtype {opts.dtype}"
    needs_torch = [flag for flag, on in (("--flip", opts.flip), ("--compile on", opts.compile == "on")) if on]
    if needs_torch:
        return "torch", f"{' and '.join(needs_torch)} runs in PyTorch"
    if opts.device not in ("auto", "cpu"):
        return "torch", f"--device {opts.device}"
    if opts.device == "auto" and (gpu_visible() if gpu is None else gpu):
        return "torch", "a GPU may be present"
    cpu = read_cpu_info() if cpu is None else cpu
    if cpu.flags is None:
        return "torch", "the CPU's flags could not be read"
    if cpu.has(*NATIVE_BF16):
        return "torch", "native bf16: PyTorch's bf16 is the faster path"
    if not (onnxruntime_installed() if have_onnxruntime is None else have_onnxruntime):
        return "torch", "onnxruntime is not installed"
    return "onnxruntime", "no native bf16 on this CPU: fp32 on onnxruntime, which starts without importing torch"
