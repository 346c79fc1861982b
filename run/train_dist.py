"""Distributed MagFace training (DDP, classifier classes sharded over the ranks), launched by torchrun.

    torchrun --nproc_per_node 8 -m run.train_dist --arch iresnet100 --rec /data/faces_emore
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 8 \\
        -m run.train_dist --rec /data/faces_emore
    torchrun --nproc_per_node 2 -m run.train_dist --device cpu ...   # gloo, for tests and CPU boxes

``--batch-size`` is the total over all ranks, as for run/train.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run.config import config_from_args, get_args_parser  # noqa: E402
from run.trainer import resolve_device, train  # noqa: E402
from utils.dist import cleanup, init_distributed  # noqa: E402


def get_parser():
    parser = get_args_parser("Train MagFace with DDP and a class-sharded head (launch with torchrun)")
    parser.add_argument("--fp16", type=int, default=None, metavar="0|1",
                        help="the seed's switch: 1 = --amp fp16 (prefer --amp bf16 on GPUs that have it)")
    parser.add_argument("--arc", type=int, default=None, metavar="0|1",
                        help="the seed's switch: 1 = Mag-ArcFace, 0 = Mag-CosFace (= --margin cos)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    if args.fp16 is not None:
        args.amp = "fp16" if args.fp16 else args.amp
    if args.arc is not None:
        args.margin = "arc" if args.arc else "cos"
    cfg = config_from_args(args)
    device_type = "cpu" if cfg.device == "cpu" or not _cuda() else "cuda"
    info = init_distributed(timeout_s=cfg.dist_timeout, device_type=device_type)
    try:
        if device_type == "cuda":
            resolve_device(cfg.device, info.local_rank)
        return train(cfg, info)
    finally:
        cleanup()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
