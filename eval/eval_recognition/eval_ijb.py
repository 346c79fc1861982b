#!/usr/bin/env python3
"""The seed's ``eval_ijb.py``: IJB-B/C 1:1 template verification, by ``eval.ijb`` (same flags).

    python3 eval_ijb.py --feat_list features/magface_iresnet100/ijbb_official.list --base_dir data/IJBB/ \\
        --type b --embedding_size 512 [--magface_qlt 1]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval import ijb  # noqa: E402

if __name__ == "__main__":
    sys.exit(ijb.main())
