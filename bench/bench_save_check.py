"""What the divergence guard costs: the soundness check run before every last.pth write, against the write.

    python -m bench.bench_save_check [--arch iresnet100] [--classes 85742] [--repeats 3]

``run.state.unsound_tensors`` reads every weight once (non-finite, or above ``WEIGHT_LIMIT``) and syncs once;
the trainer runs it before each ``last.pth`` and epoch save, so a diverged state never replaces a sound one.
This prints its time beside the time of the save it guards (torch.save through ``utils.atomic``, fsync
included) for a published-size model and head, on this machine's CPU (or the GPU when there is one).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import format_machine, machine_info
from models import MagFaceHead, build_backbone
from models.checkpoint import atomic_save, released_state_dict
from run.state import unsound_tensors


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="iresnet100")
    p.add_argument("--classes", type=int, default=85742, help="head rows (MS1MV2: 85742)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(args.arch, 512).to(device)
    head = MagFaceHead(512, args.classes).to(device)
    check = _best(lambda: unsound_tensors(backbone, head, False), args.repeats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.pth"
        state = {"state_dict": released_state_dict(backbone, head.weight.detach())}
        save = _best(lambda: atomic_save(state, path), args.repeats)
        size = path.stat().st_size
    print(format_machine(machine_info()))
    print(f"{args.arch} + {args.classes}-class head on {device.type}: {size / 2**20:.0f} MiB checkpoint")
    print(f"soundness check {check * 1e3:.1f} ms, save {save * 1e3:.0f} ms: the check adds "
          f"{100 * check / save:.1f}% to each save (best of {args.repeats})")


if __name__ == "__main__":
    main()
