"""Single-process MagFace training: CPU, one GPU, or DataParallel over the visible GPUs.

    python -m run.train --arch iresnet100 --train_list /data/ms1mv2/train.list --batch-size 512
    python run/train.py --arch iresnet18_w16 --train_list demo/train.list --device cpu --max-steps 50

Exit status: 0 done, 2 bad arguments, data or checkpoint (the message names the file and line),
3 diverged (``--max-nonfinite`` non-finite losses in a row; last.pth holds the weights from before),
5 a checkpoint write refused by the disk (full, quota, read-only), 6 a DataLoader worker died,
75 preempted by SIGTERM/SIGUSR1 (``--preempt-signals``) with last.pth saved: requeue with --resume auto.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root in place of this file's own folder, whose
    # modules would otherwise shadow top-level ones (inference/onnx_model.py hid onnxruntime's own onnx_model)
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":  # first, before torch's import: a preemption signal from here on exits 75
    from run import startup_signals

    startup_signals.install()

from run.config import config_from_args, get_args_parser  # noqa: E402
from run.failures import EXIT_CODES, write_refused  # noqa: E402
from run.trainer import train  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.dist import DistInfo, exit_process  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser("Train MagFace in one process (CPU, GPU or DataParallel)").parse_args(argv)
    cfg = config_from_args(args)
    return train(cfg, DistInfo(rank=0, world_size=1, local_rank=0))


def cli(argv: list[str] | None = None) -> int:
    """The command: ``main`` under ``utils.cli.run_cli`` with the trainers' exit statuses; its exit status."""
    return run_cli(main, argv, "train.py", EXIT_CODES, classify=write_refused)


if __name__ == "__main__":
    exit_process(cli())  # no interpreter teardown, where a SIGTERM would give 143
