"""Distributed MagFace training (DDP, classifier classes sharded over the ranks), launched by torchrun.

    torchrun --nproc_per_node 8 -m run.train_dist --arch iresnet100 --rec /data/faces_emore
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 8 \\
        -m run.train_dist --rec /data/faces_emore
    torchrun --nproc_per_node 2 -m run.train_dist --device cpu ...   # gloo, for tests and CPU boxes

``--batch-size`` is the total over all ranks, as for run/train.py. With ``torchrun --max-restarts N``
and ``--resume auto`` a job whose rank died restarts from PTH_SAVE_FOLD/last.pth by itself.

Exit status: as run/train.py, plus 4 when a collective failed: another rank died, or did not reach
the collective within ``--dist-timeout`` seconds (hung).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root in place of this file's own folder, whose
    # modules would otherwise shadow top-level ones (inference/onnx_model.py hid onnxruntime's own onnx_model)
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":  # first, before torch's import: a preemption signal from here on exits 75
    from run import startup_signals

    startup_signals.install()

import torch  # noqa: E402

from run.config import config_from_args, get_args_parser  # noqa: E402
from run.failures import EXIT_CODES, explain_dist_error, write_refused  # noqa: E402
from run.trainer import train  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.dist import barrier, cleanup, exit_process, init_distributed, resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser("Train MagFace with DDP and a class-sharded head (launch with torchrun)").parse_args(argv)
    cfg = config_from_args(args)
    device_type = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    info = None
    try:
        info = init_distributed(timeout_s=cfg.dist_timeout, device_type=device_type)
        if device_type == "cuda":
            resolve_device(cfg.device, info.local_rank)
        result = train(cfg, info)
        barrier()  # leave together: a rank tearing gloo down while a peer still talks to it can abort
        return result
    except RuntimeError as error:
        rank = info.rank if info is not None else int(os.environ.get("RANK", "0"))
        failure = explain_dist_error(error, rank, cfg.dist_timeout, joined=info is not None)
        if failure is None:
            raise
        raise failure from error
    finally:
        cleanup()


def cli(argv: list[str] | None = None) -> int:
    """The command: ``main`` under ``utils.cli.run_cli`` with the trainers' exit statuses; its exit status."""
    return run_cli(main, argv, "train_dist.py", EXIT_CODES, classify=write_refused)


if __name__ == "__main__":
    exit_process(cli())
