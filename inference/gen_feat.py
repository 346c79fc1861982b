"""Dump features (and magnitudes, the MagFace quality score) for a list of aligned faces.

The seed's flags and text output (``path f1 ... fD``, raw features) are the default, so existing
scripts keep working; a ``.npz`` feature file also stores the magnitudes and paths.

    python -m inference.gen_feat --arch iresnet100 --resume magface_epoch_00025.pth \\
        --inf_list lfw/img.list --feat_list lfw_feats.txt
    python -m inference.gen_feat --resume CKPT --inf_list L --feat_list feats.npz --dtype bf16 --flip

The command only: the run is ``inference.features.extract``. fp32/bf16/fp16 run in PyTorch
(``inference.feat_torch``, imported only then); ``--dtype int8`` runs the checkpoint's cached quantized model
(``inference.int8``) without importing torch (``inference.feat_onnx``), on OpenVINO where the CPU has AMX and on
onnxruntime elsewhere (``inference.onnx_model``; ``--onnx-runtime`` to choose).
The default (``--dtype auto --backend auto``, ``inference.feat_options.choose_backend``): bf16 in PyTorch on a
GPU or a CPU with native bf16; on any other CPU fp32 on the checkpoint's cached ONNX export, which starts without
importing torch (the first run exports it), unless --flip or --compile asks for PyTorch.
End-to-end speed against the seed: ``python -m bench.bench_deploy``.

What can be checked before the model loads is: the output folder takes a file and has room for the
estimated output, every listed image exists and is not empty. A face that fails to decode later is reported
as ``LIST:LINE: PATH: reason``. ``--skip-bad-images`` leaves such images out instead and lists them in
``FEAT_LIST.skipped.txt``. Temporary files that a killed run's atomic writes left are removed at the start.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root in place of this file's own folder, whose
    # modules would otherwise shadow top-level ones (inference/onnx_model.py hid onnxruntime's own onnx_model)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from inference.feat_options import DTYPE_NAMES, FeatOptions  # noqa: E402
from inference.features import extract  # noqa: E402
from inference.onnx_model import RUNTIMES  # noqa: E402  (torch-free: numpy, OpenCV, utils)
from utils.atomic import WRITE_REFUSED_EXIT, OutputWriteError  # noqa: E402
from utils.cli import HelpFormatter, run_cli  # noqa: E402


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
                   "is installed and the CPU has AMX (int8 ~4x faster there), else onnxruntime (openvino's int8 "
                   "was 13%% faster on a CPU with VNNI, but only past ~500 faces, after its 0.8 s compile)")
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
