#!/usr/bin/env python3
"""The seed's ``eval_quality.py``: error-versus-reject curves of a feature list, by ``eval.quality``.

    python3 eval_quality.py --feat-list ../eval_recognition/features/magface_iresnet100/lfw_official.list \\
        --pair-list ../eval_recognition/data/lfw/pair.list

FNMR at FMR 1e-3 by the seed's rule, for magnitude, random and, when the images are found, sharpness.
The seed's ``--eval-type``, ``--distance-metric`` and ``--test-folds`` are accepted and, as in the
seed, change nothing. Every other flag of ``python -m eval.quality`` works too (``--plot``, ``--json`` ...).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval import quality  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    seed = argparse.ArgumentParser(add_help=False)
    for flag, kind, default in (("--eval-type", str, "1v1"), ("--distance-metric", int, 1), ("--test-folds", int, 10)):
        seed.add_argument(flag, type=kind, default=default)
    _, rest = seed.parse_known_args(sys.argv[1:] if argv is None else argv)
    return quality.main(rest)


if __name__ == "__main__":
    sys.exit(main())
