"""Dump features (and magnitudes, the MagFace quality score) for a list of aligned faces.

The seed's flags and text output (``path f1 ... fD``, raw features) are the default, so existing
scripts keep working; a ``.npz`` feature file also stores the magnitudes and paths.

    python -m inference.gen_feat --arch iresnet100 --resume magface_epoch_00025.pth \\
        --inf_list lfw/img.list --feat_list lfw_feats.txt
    python -m inference.gen_feat --resume CKPT --inf_list L --feat_list feats.npz --dtype bf16 --flip

fp32/bf16/fp16 run in PyTorch (``inference.feat_torch``, imported only then); ``--dtype int8`` runs the
checkpoint's cached quantized model (``inference.int8``) without importing torch, on OpenVINO where the CPU
has AMX (``inference.ov_model``) and on onnxruntime elsewhere (``--onnx-runtime`` to choose).
The default (``--dtype auto --backend auto``, ``choose_backend``): bf16 in PyTorch on a GPU or a CPU with native
bf16; on any other CPU fp32 on the checkpoint's cached ONNX export, which starts without importing torch (the
first run exports it), unless --flip or --compile asks for PyTorch.
End-to-end speed against the seed: ``python -m bench.bench_deploy``.

What can be checked before the model loads is: the output folder takes a file and has room for the
estimated output, every listed image exists and is not empty. A face that fails to decode later is reported
as ``LIST:LINE: PATH: reason``. ``--skip-bad-images`` leaves such images out instead and lists them in
``FEAT_LIST.skipped.txt``. Temporary files that a killed run's atomic writes left are removed at the start.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from faces.face_list import (  # noqa: E402
    ImageList,
    SkippedImage,
    bad_face_reason,
    empty_images,
    load_image_list,
    read_image_list,
    write_skipped,
)
from inference.ort_embed import RUNTIMES  # noqa: E402  (torch-free: numpy, OpenCV, utils)
from utils.atomic import WRITE_REFUSED_EXIT, OutputWriteError  # noqa: E402
from utils.cli import HelpFormatter, run_cli  # noqa: E402
from utils.convention import parse_convention  # noqa: E402
from utils.cpu_info import NATIVE_BF16, CpuInfo, PrecisionChoice, read_cpu_info  # noqa: E402
from utils.feature_io import check_output_folder, check_room, sweep_stale_tmp, write_features  # noqa: E402
from utils.text_lines import printable  # noqa: E402

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # the PyTorch precisions (utils.precision.DTYPES); int8: onnxruntime
DEFAULT_EMBEDDING = 512  # the output estimate's size per face before the model says (most checkpoints')
EMPTY = "empty file (0 bytes)"


@dataclass(frozen=True)
class FeatOptions:
    """How ``extract`` embeds a list: gen_feat's flags, whose defaults are these (``--help`` says what each does)."""

    arch: str | None = None  # None: the checkpoint's
    batch_size: int | None = None  # None: 64 on CPU, 256 on GPU
    workers: int | None = None  # None: 0 on CPU, 8 on GPU
    embedding_size: int | None = None  # checked against the checkpoint when given
    device: str = "auto"
    dtype: str = "auto"  # auto, DTYPE_NAMES or int8 (utils.cpu_info.choose_precision)
    backend: str = "auto"  # torch, onnxruntime, or auto (choose_backend)
    onnx_runtime: str = "auto"  # inference.ort_embed.RUNTIMES
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


def get_args_parser() -> argparse.ArgumentParser:
    d = FeatOptions()
    p = argparse.ArgumentParser(description="Dump MagFace features and magnitudes",
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", default=d.arch, help="backbone; read from the checkpoint when absent")
    p.add_argument("--inf_list", "--inf-list", required=True, help="image list, first token = path")
    p.add_argument("--feat_list", "--feat-list", required=True,
                   help="output: text (seed format), .npz (features, magnitudes, paths) or .npy")
    p.add_argument("--resume", required=True, help="checkpoint (released MagFace, insightface or ours)")
    p.add_argument("-b", "--batch_size", "--batch-size", type=int, default=d.batch_size,
                   help="images per forward (default: 64 on CPU: 5%% slower than 16 on an idle machine but "
                   "twice as fast when other processes share the cores; 256 on GPU)")
    p.add_argument("-j", "--workers", type=int, default=d.workers,
                   help="decode worker processes (default: 0 on CPU, where decoding inline costs ~1%% and a "
                   "worker would preempt the compute threads; 8 on GPU)")
    p.add_argument("--embedding_size", "--embedding-size", type=int, default=d.embedding_size,
                   help="expected embedding size (checked against the checkpoint)")
    p.add_argument("--cpu-mode", action="store_true", help="the seed's flag: same as --device cpu")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", *DTYPE_NAMES, "int8"], default=d.dtype,
                   help="compute precision; auto: bf16 on a GPU and on CPUs with native bf16 (AVX512-BF16/AMX: ~2x "
                   "faster, cosine >= 0.999 to fp32), else fp32 (bf16 is emulated there, ~3x slower); what ran is "
                   "printed and stored in a .npz's meta (utils.cpu_info); int8: onnxruntime static quantization on "
                   "the CPU, calibrated and cached on first use (inference.int8)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default=d.backend,
                   help="fp32 on the CPU: onnxruntime runs the checkpoint's ONNX export, made and cached on first "
                   "use (inference.int8; 1.2-1.3x faster end to end on a 2-core EPYC, features equal to 1e-5); "
                   "auto: onnxruntime for --dtype auto on a CPU without native bf16 and no GPU, --flip or "
                   "--compile on, else torch; int8 always uses onnxruntime/OpenVINO")
    p.add_argument("--onnx-runtime", choices=RUNTIMES, default=d.onnx_runtime,
                   help="what runs the ONNX model of --dtype int8 / --backend onnxruntime; auto: openvino when it "
                   "is installed and the CPU has AMX (int8 ~4x faster there), else onnxruntime")
    p.add_argument("--calib-list", default=d.calib_list,
                   help="int8: aligned faces to calibrate on (default: the --inf_list being embedded)")
    p.add_argument("--calib-count", type=int, default=d.calib_count,
                   help="int8: calibration faces (the first N of the list)")
    p.add_argument("--flip", action="store_true", help="add the embedding of the mirrored face")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default=d.channels_last,
                   help="NHWC memory layout for the forward (auto: on with a GPU, where it is faster)")
    p.add_argument("--fuse", choices=("on", "off"), default=d.fuse,
                   help="fold BatchNorm into the convs (features equal to float rounding)")
    p.add_argument("--compile", choices=("on", "off"), default=d.compile,
                   help="torch.compile the model (GPU; on a CPU it does not pay back its warm-up)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU compute threads (0: one per usable core)")
    p.add_argument("--input-convention", default=d.input_convention,
                   help="override the checkpoint's input convention: magface (BGR, /255), "
                   "insightface (RGB, (x-127.5)/127.5) or ORDER:m1,m2,m3:s1,s2,s3")
    p.add_argument("-p", "--print-freq", "--print_freq", type=int, default=d.print_freq,
                   help="progress line every N batches")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images that are empty or cannot be decoded (listed in FEAT_LIST.skipped.txt) "
                   "instead of stopping at the first")
    p.add_argument("--dist", type=int, choices=(0, 1), default=1,
                   help="the seed's switch (1: its DataParallel wrapper), accepted so its scripts run; here the "
                   "features always come from the one device --device picks (--cpu-mode: the CPU)")
    return p


GPU_NODES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm and WSL drivers' device files


def gpu_visible() -> bool:
    """Whether a GPU may be usable, told without importing torch: a driver's device file exists and
    CUDA_VISIBLE_DEVICES does not hide every GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return any(Path(node).exists() for node in GPU_NODES)


def choose_backend(opts: FeatOptions, cpu: CpuInfo | None = None, gpu: bool | None = None,
                   have_onnxruntime: bool | None = None) -> tuple[str, str]:
    """(backend, why) for ``opts``: ``--backend auto`` with ``--dtype auto`` takes onnxruntime's fp32 on a CPU
    without native bf16 (where PyTorch would run fp32 too, after a 1.7-2.8 s import), PyTorch otherwise."""
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
    if not (importlib.util.find_spec("onnxruntime") is not None if have_onnxruntime is None else have_onnxruntime):
        return "torch", "onnxruntime is not installed"
    return "onnxruntime", "no native bf16 on this CPU: fp32 on onnxruntime, which starts without importing torch"


def onnx_model_file(resume: str, images: ImageList, opts: FeatOptions) -> Path:
    """The checkpoint's cached int8 model or fp32 export (``inference.int8``), made on first use (an OSError
    when the cache cannot be written)."""
    from inference.int8 import int8_model

    if opts.flip or opts.device not in ("auto", "cpu") or opts.dtype in ("bf16", "fp16"):
        raise ValueError("onnxruntime (--dtype int8, --backend onnxruntime) runs fp32 or int8 on the CPU without "
                         "--flip; drop --device/--flip, or use --backend torch")
    if opts.calib_count < 1:
        raise ValueError(f"--calib-count must be at least 1, got {opts.calib_count}")
    calib = read_image_list(opts.calib_list)[1] if opts.calib_list else images.resolved
    conv = parse_convention(opts.input_convention) if opts.input_convention else None
    calib = calib[:opts.calib_count] if opts.dtype == "int8" else None
    return int8_model(resume, calib, arch=opts.arch, convention=conv)


def extract_ort(resume: str, onnx_file: Path, images: ImageList, feat_list: str, opts: FeatOptions,
                why: str) -> tuple[np.ndarray, dict]:
    """``--dtype int8``, ``--backend onnxruntime`` or the default on a CPU without native bf16: ``onnx_file``
    on onnxruntime or OpenVINO (``--onnx-runtime``). Features in list order (NaN rows for skipped faces) and
    timings."""
    from inference.ort_embed import embed_files, load_onnx_model

    model = load_onnx_model(onnx_file, opts.onnx_runtime, threads=opts.threads)
    emb = int(model.metadata.get("embedding_size", 0))
    if opts.embedding_size and emb and opts.embedding_size != emb:
        raise ValueError(f"--embedding_size {opts.embedding_size} but {resume} gives {emb}-d embeddings")
    if emb:
        check_room(feat_list, images.listed, emb)  # again, with the model's own size
    batch_size = opts.batch_size or 64
    t0 = time.perf_counter()
    dtype = "int8" if opts.dtype == "int8" else "fp32"
    if opts.dtype == dtype:
        reason = "as asked"
    else:
        reason = "--backend onnxruntime runs fp32" if opts.backend == "onnxruntime" else f"auto: {why}"
    cpu = read_cpu_info()
    choice = PrecisionChoice(dtype, opts.dtype, "cpu", reason, cpu.model, tuple(cpu.speed_flags()),
                             backend=model.runtime)
    choice.announce()
    feats = embed_files(model, images.resolved, batch_size, opts.print_freq,
                        where=[images.where(i) for i in range(len(images))], skip_bad=opts.skip_bad_images)
    return feats, {"wall_s": time.perf_counter() - t0, "batch_size": batch_size, "workers": 0, "device": "cpu",
                   "what": f"{feats.shape[1]}-d, {dtype}, {model.runtime} cpu", "precision": choice.to_dict()}


def drop_empty(images: ImageList, skip: bool) -> tuple[ImageList, list[SkippedImage]]:
    """The list without its 0-byte files (with ``skip``), or a ValueError naming the first one's line."""
    empty = empty_images(images)
    if empty and not skip:
        i = empty[0]
        raise ValueError(f"{images.where(i)}: image {printable(images.resolved[i])} is empty (0 bytes) "
                         f"({len(empty)} of {len(images)} listed images are empty; --skip-bad-images leaves "
                         f"them out)")
    gone = set(empty)
    return images.subset([i for i in range(len(images)) if i not in gone]), [images.skipped(i, EMPTY) for i in empty]


def undecoded(images: ImageList, feats: np.ndarray) -> dict[int, SkippedImage]:
    """The faces the embedding skipped (NaN rows) by row, each with its reason, read again here (decoding may
    have run in worker processes). A NaN row of a readable face is the model's: it stays for the writer to
    refuse."""
    out = {}
    for i in np.flatnonzero(np.isnan(feats).all(axis=1)):
        reason = bad_face_reason(images.resolved[i])
        if reason is not None:
            out[int(i)] = images.skipped(int(i), reason)
    return out


def report_skipped(feat_list: str, skipped: list[SkippedImage], total: int) -> None:
    """``FEAT_LIST.skipped.txt`` and one line saying how many; an old one is removed when none were skipped,
    so that it never describes another run."""
    side = Path(f"{feat_list}.skipped.txt")
    if not skipped:
        side.unlink(missing_ok=True)
        return
    write_skipped(side, sorted(skipped, key=lambda s: s.line))
    print(f"skipped {len(skipped)} of {total} images; see {printable(side)}", flush=True)


def embed(resume: str, images: ImageList, feat_list: str, opts: FeatOptions) -> tuple[np.ndarray, dict]:
    """The features of ``images`` in list order (NaN rows: faces skipped) on the path ``opts`` picks."""
    check_room(feat_list, images.listed, opts.embedding_size or DEFAULT_EMBEDDING)
    backend, why = choose_backend(opts)
    if backend == "onnxruntime":
        chosen = opts.backend == "auto" and opts.dtype != "int8"
        try:
            onnx_file = onnx_model_file(resume, images, opts)
        except (OSError, RuntimeError) as e:  # the cache cannot be written (a read-only home), or the export failed
            if not chosen or not Path(resume).is_file():
                raise
            print(f"the ONNX export of {printable(resume)} could not be made or cached ({e}); PyTorch instead "
                  "(--backend torch skips this attempt, MAGFACE_CACHE moves the cache)", file=sys.stderr, flush=True)
        else:
            return extract_ort(resume, onnx_file, images, feat_list, opts, why)
    from inference.feat_torch import extract_torch

    return extract_torch(resume, images, feat_list, opts)


def extract(resume: str, inf_list: str, feat_list: str, opts: FeatOptions = FeatOptions()) -> dict:
    """Embed every face of ``inf_list`` with the checkpoint ``resume`` and write ``feat_list``; timings."""
    t_start = time.perf_counter()
    check_output_folder(feat_list)  # before the list and the (possibly large) model: fail fast
    stale = sweep_stale_tmp(feat_list)
    if stale:
        print(f"removed {len(stale)} temporary file(s) that an interrupted write of {printable(feat_list)} left: "
              f"{', '.join(printable(n) for n in stale)}", flush=True)
    everything = load_image_list(inf_list)
    images, skipped = drop_empty(everything, opts.skip_bad_images)
    feats, info = embed(resume, images, feat_list, opts) if len(images) else (np.zeros((0, 0), np.float32), {})
    bad = undecoded(images, feats) if opts.skip_bad_images else {}
    if bad:
        keep = [i for i in range(len(images)) if i not in bad]
        images, feats = images.subset(keep), feats[keep]
    skipped += bad.values()
    if not len(images):
        report_skipped(feat_list, skipped, len(everything))
        raise ValueError(f"no usable image in {printable(inf_list)}: all {len(everything)} were skipped "
                         f"(see {printable(feat_list)}.skipped.txt)")
    mags = np.linalg.norm(feats, axis=1)
    write_features(feat_list, images.listed, feats, mags, meta={"precision": info["precision"]})
    report_skipped(feat_list, skipped, len(everything))  # after the features it describes
    total = time.perf_counter() - t_start
    wall = info["wall_s"]
    print(f"wrote {len(images)} features ({info['what']}) to {printable(feat_list)} in {wall:.1f}s "
          f"({len(images) / wall:.1f} img/s; {total:.1f}s with loading and writing); "
          f"magnitude mean {mags.mean():.2f} [{mags.min():.2f}, {mags.max():.2f}]")
    return {"num_images": len(images), "num_skipped": len(skipped), "wall_s": wall, "total_s": total,
            "feat_list": str(feat_list), "batch_size": info["batch_size"], "workers": info["workers"],
            "device": info["device"], "precision": info["precision"]}


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    return extract(args.resume, args.inf_list, args.feat_list, FeatOptions.from_args(args))


def _write_refused(error: BaseException) -> int | None:
    """An output folder that is read-only or full: one line, exit 5 (as the trainers' refused checkpoint writes)."""
    return WRITE_REFUSED_EXIT if isinstance(error, OutputWriteError) else None


def cli(argv: list[str] | None = None) -> int:
    """The command: ``main`` under ``utils.cli.run_cli``; its exit status."""
    return run_cli(main, argv, "gen_feat.py", classify=_write_refused)


if __name__ == "__main__":
    sys.exit(cli())
