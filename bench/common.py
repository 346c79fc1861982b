"""What every benchmark prints and stores: the machine, its load, a table and a JSON file.

A number without its machine is useless, so every table starts with ``machine_info()`` (CPU model,
usable cores, GPU, library versions, date, load average) and the same dict goes into the JSON.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from utils.atomic import write_json
from utils.cpu_info import read_cpu_info, usable_cores
from utils.table import format_table


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (platform's guess elsewhere)."""
    model = read_cpu_info().model
    return model if model != "unknown" else (platform.processor() or platform.machine())


def cpu_flags() -> list[str]:
    """The ISA extensions inference speed depends on (``utils.cpu_info.SPEED_FLAGS`` this CPU has)."""
    return read_cpu_info().speed_flags()


def gpu_name() -> str | None:
    if not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    return name if n == 1 else f"{n} x {name}"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """CPU, cores, GPU, versions, date and the current load (1/5/15 min averages)."""
    import cv2

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "usable_cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_name(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


def format_machine(info: Mapping[str, Any]) -> str:
    gpu = info.get("gpu") or "no GPU"
    flags = ",".join(info.get("cpu_flags", [])) or "-"
    return (f"machine: {info['cpu']} ({flags}), {info['usable_cores']} usable cores, {gpu}; python "
            f"{info['python']}, torch {info['torch']}, numpy {info['numpy']}, opencv {info['opencv']}; "
            f"{info['date']}; load average {info.get('load_average')}")


def bench_cell(v: Any) -> str:
    """A benchmark number as printed: floats get 1-4 significant decimals, a missing value a dash."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The benchmarks' table (``utils.table.format_table``, right-aligned): one line per row mapping."""
    return format_table(columns, [[bench_cell(r.get(c)) for c in columns] for r in rows], align="right")


def row_line(row: Mapping[str, Any]) -> str:
    """One result as ``key=value`` pairs (floats to 4 significant digits; a failure's traceback left for the JSON):
    the progress line of a benchmark."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if k != "traceback")


def print_results(title: str, info: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                  json_path: str | None, args: Any) -> None:
    """The end of a benchmark: its title, the machine, the table, and the JSON file (machine, args, results)."""
    print(f"\n{title}")
    print(format_machine(info))
    print(format_rows(rows, columns), flush=True)
    if json_path:
        write_json(json_path, {"machine": dict(info), "args": vars(args), "results": list(rows)}, default=str)


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), NaN where unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """Cores kept busy by *other* processes while the block ran (machine busy time minus this
    process's and its reaped children's): a timing taken with ``cores`` > ~0.2 was disturbed.

        with ForeignLoad() as load:
            work()
        load.cores
    """

    def __enter__(self) -> ForeignLoad:
        self._busy, self._own, self._t = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        self.cores = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        other = (_busy_cpu_seconds() - self._busy) - (_own_cpu_seconds() - self._own)
        self.cores = round(max(other, 0.0) / wall, 2) if wall > 0 else float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux /proc/self/clear_refs '5'); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since the last ``reset_peak_rss`` (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


class PeakRss:
    """This process's peak resident memory while the block ran, and its growth over the memory before it.

        with PeakRss() as mem:
            work()
        mem.peak_mb, mem.growth_mb  (mem.before_mb: resident memory when the block began)
    """

    def __enter__(self) -> PeakRss:
        self.before_mb = current_rss_mb()
        reset_peak_rss()
        self.peak_mb = self.growth_mb = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = peak_rss_mb()
        self.growth_mb = self.peak_mb - self.before_mb


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """GPU: peak allocated (and reserved) MiB; always: the process's peak RSS."""
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_gpu_alloc_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def generated_face_jpegs(count: int, seed: int = 0, size: int = 112, quality: int = 90) -> list[bytes]:
    """Face-sized JPEGs of smooth random content (file sizes and decode cost like aligned faces), for
    machines without the shared face data."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return out


def csv_arg(text: str) -> list[str]:
    """``a,b,c`` -> ['a', 'b', 'c'] (blank items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]
