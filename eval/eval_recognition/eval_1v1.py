#!/usr/bin/env python3
"""The seed's ``eval_1v1.py``: 1:1 verification of a feature list, by ``eval.verification``.

    python3 eval_1v1.py --feat-list features/magface_iresnet100/lfw_official.list --pair-list data/lfw/pair.list

MagFace protocol (10 contiguous folds, angular distance after subtracting the training folds' mean),
printing the seed's ``Accuracy: mean+-std`` line after the table. The seed's ``--eval-type`` and
``--distance-metric`` are accepted and, as in the seed, change nothing; ``--test-folds`` is ``--folds``.
Every other flag of ``python -m eval.verification`` works too (``--json``, ``--protocol`` ...).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval import verification  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--eval-type", default="1v1")
    seed.add_argument("--distance-metric", type=int, default=1)
    seed.add_argument("--test-folds", type=int, default=None)
    known, rest = seed.parse_known_args(sys.argv[1:] if argv is None else argv)
    folds = [] if known.test_folds is None else ["--folds", str(known.test_folds)]
    return verification.main(rest + folds)


if __name__ == "__main__":
    sys.exit(main())
