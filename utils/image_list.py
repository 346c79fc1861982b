"""Image lists (first token of each line = an aligned face) resolved to files, without torch.

Shared by gen_feat, calibration, the evaluation tools and the torch-free deployment path
(``inference.ort_embed``); a missing image is reported with its list line before any model loads.
"""
from __future__ import annotations

import os
from pathlib import Path


def read_image_list(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(paths as listed, paths resolved); the first token of each line.

    A relative path resolves against the list's folder, or else against the current folder (the seed's
    lists, e.g. ``toy_imgs/0.jpg`` in ``toy_imgs/img.list``, are relative to where gen_feat runs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    listed, resolved, lines = [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            listed.append(tokens[0])
            lines.append(lineno)
            p = Path(tokens[0])
            beside = p if p.is_absolute() else path.parent / p
            resolved.append(str(p if not os.path.exists(beside) and os.path.exists(p) else beside))
    if not listed:
        raise ValueError(f"image list {path} is empty")
    missing = [i for i, p in enumerate(resolved) if not os.path.exists(p)]
    if missing:
        i = missing[0]
        where = "" if Path(listed[i]).is_absolute() else " (nor relative to the current folder)"
        raise FileNotFoundError(f"{path}:{lines[i]}: image {resolved[i]} not found{where} "
                                f"({len(missing)} of {len(resolved)} listed images are missing)")
    return listed, resolved


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a batch scheduler)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
