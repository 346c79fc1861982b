"""Line-oriented text files (image, pair, label and score lists): errors name ``PATH:LINE``.

Blank lines are skipped everywhere, as numpy's text readers skip them, so row ``r`` of a parsed table
is the ``r``-th non-blank line; ``line_of_row`` turns it back into the line number a user can open.
"""
from __future__ import annotations

import os


def line_of_row(path: str | os.PathLike, row: int) -> int:
    """1-based line number of the ``row``-th non-blank line (numpy's text readers skip blank lines)."""
    seen, number = -1, 1
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return number
