"""What this CPU can do fast, how many of its cores this process may use, and the inference precision
``--dtype auto`` takes from it (torch-free).

The choice, for the torch inference commands (gen_feat, assess, eval.verification; ``inference.calibrate`` fits
a reference scale and stays fp32 unless told otherwise):

- a GPU: bf16 (features within cosine 0.999 of fp32, about twice as fast);
- a CPU with native bf16 arithmetic (``amx_bf16`` or ``avx512_bf16`` among its flags): bf16, for the same reason;
- any other CPU: fp32. There bf16 is emulated: on a 2-core AMD EPYC with AVX2 only, gen_feat in bf16 ran at 0.30x
  the seed's fp32 speed, 3.3x slower than our fp32 (issue 30's table, 2026-12-07);
- a CPU whose flags cannot be read: fp32, and the printed line says why.

An explicit ``--dtype bf16`` on a CPU without native bf16 still runs, after one line saying what it costs and what
to use instead; ``--dtype fp16`` on a CPU is refused in one line (PyTorch's CPU fp16 convolutions are slower still
and not what anyone means). The flags come from ``/proc/cpuinfo`` (Linux); ``MAGFACE_CPU_FLAGS`` (space-separated)
replaces them, to see what another CPU would get.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

CPUINFO = Path("/proc/cpuinfo")
FLAGS_ENV = "MAGFACE_CPU_FLAGS"
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # the flags with bf16 arithmetic in hardware
# the flags a speed figure depends on, in the order printed (issue 30's CPU table)
SPEED_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma", "f16c")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "model name" of /proc/cpuinfo, or "unknown"
    flags: frozenset[str] | None  # None: could not be read
    source: str  # where the flags came from

    def has(self, *names: str) -> bool:
        return self.flags is not None and any(n in self.flags for n in names)

    def speed_flags(self) -> list[str]:
        """The flags of SPEED_FLAGS this CPU has, in that order."""
        return [f for f in SPEED_FLAGS if self.has(f)]


def read_cpu_info(cpuinfo: str | os.PathLike = CPUINFO, env: dict[str, str] | None = None) -> CpuInfo:
    """The CPU's model name and flags: the first ``flags`` line of ``cpuinfo``, replaced by ``$MAGFACE_CPU_FLAGS``
    when set (in ``env``; by default the process environment, for this machine's own /proc/cpuinfo only); flags
    None when neither can be read (not Linux, a sandbox hiding /proc)."""
    if env is None:
        env = os.environ if Path(cpuinfo) == CPUINFO else {}
    model, flags = "unknown", None
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    source = str(cpuinfo)
    if env.get(FLAGS_ENV) is not None:
        flags, source = frozenset(env[FLAGS_ENV].split()), f"${FLAGS_ENV}"
    return CpuInfo(model, flags, source)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a batch scheduler)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class PrecisionChoice:
    """What an inference command runs in and why: printed once, written into its outputs' metadata."""

    dtype: str  # fp32, bf16 or fp16; int8 on the ONNX path (gen_feat, assess)
    requested: str  # the --dtype given
    device: str  # cpu or cuda
    reason: str
    cpu_model: str | None = None  # the CPU's, on a CPU
    cpu_flags: tuple[str, ...] = ()  # the SPEED_FLAGS it has, on a CPU
    warning: str | None = None  # a costly explicit choice, said once before the work
    backend: str = "torch"  # or onnxruntime / openvino

    def line(self) -> str:
        return f"precision {self.dtype} on {self.device}, {self.backend} ({self.reason})"

    def announce(self, out: TextIO | None = None) -> None:
        """The warning (stderr), then the line (``out``, default stdout): once per command, before the work."""
        if self.warning:
            print(self.warning, file=sys.stderr, flush=True)
        print(self.line(), file=out or sys.stdout, flush=True)

    @classmethod
    def on_cpu(cls, dtype: str, requested: str, reason: str, *, cpu: CpuInfo | None = None, warning: str | None = None,
               backend: str = "torch") -> PrecisionChoice:
        """A choice on this CPU (``cpu``, read when None), its model name and speed flags recorded."""
        cpu = read_cpu_info() if cpu is None else cpu
        return cls(dtype, requested, "cpu", reason, cpu.model, tuple(cpu.speed_flags()), warning, backend)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["cpu_flags"] = list(self.cpu_flags)
        return out


def choose_precision(requested: str, device_type: str, cpu: CpuInfo | None = None, *,
                     int8: bool = False) -> PrecisionChoice:
    """The precision for ``--dtype requested`` on a device of ``device_type`` (``cpu`` or ``cuda``); a ValueError
    (one line) for a precision the device cannot run well enough to be meant. ``int8``: the command also takes
    ``--dtype int8`` (an int8 ONNX model, on the CPU only)."""
    accepted = (*PRECISIONS, "int8") if int8 else PRECISIONS
    if requested not in accepted:
        raise ValueError(f"--dtype {requested!r}: choose from {', '.join(accepted)}")
    if requested == "int8" and device_type != "cpu":
        raise ValueError(f"--dtype int8 runs on the CPU (onnxruntime / OpenVINO), not on {device_type}: use "
                         "--device cpu, or --dtype auto (bf16) on the GPU")
    if device_type != "cpu":
        reason = "GPU: bf16 is about twice as fast, cosine >= 0.999 to fp32" if requested == "auto" else "as asked"
        return PrecisionChoice("bf16" if requested == "auto" else requested, requested, device_type, reason)
    cpu = read_cpu_info() if cpu is None else cpu
    native = cpu.has(*NATIVE_BF16)
    flags = tuple(cpu.speed_flags())
    names = ", ".join(flags) if flags else "none of " + ", ".join(SPEED_FLAGS)

    def choice(dtype: str, reason: str, warning: str | None = None) -> PrecisionChoice:
        return PrecisionChoice.on_cpu(dtype, requested, reason, cpu=cpu, warning=warning)

    if requested == "fp16":
        raise ValueError("--dtype fp16 on a CPU: PyTorch's CPU fp16 is emulated and slow; use --dtype auto (bf16 where "
                         "the CPU has it, else fp32) or fp16 with --device cuda")
    if requested == "auto":
        if cpu.flags is None:
            return choice("fp32", f"auto: the CPU's flags could not be read ({cpu.source}), so fp32")
        if native:
            return choice("bf16", f"auto: the CPU has native bf16 ({names}); cosine >= 0.999 to fp32")
        return choice("fp32", f"auto: no native bf16 on this CPU ({names}), where bf16 is ~3x slower than fp32")
    if requested == "bf16" and not native:
        known = "has no native bf16" if cpu.flags is not None else "did not say whether it has native bf16"
        warning = (f"--dtype bf16: this CPU ({cpu.model}) {known} (amx_bf16 / avx512_bf16), so bf16 is emulated and "
                   "about 3x slower than fp32 here; --dtype auto or fp32 is faster")
        return choice("bf16", "as asked", warning)
    return choice(requested, "as asked")
