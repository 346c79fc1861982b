"""Line-oriented text files (image, pair, label and score lists): errors name ``PATH:LINE``.

Blank lines are skipped everywhere, as numpy's text readers skip them, so row ``r`` of a parsed table
is the ``r``-th non-blank line; ``line_of_row`` turns it back into the line number a user can open.
``field_lines`` reads a list of fixed-width records (``path label``, ``path score``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence


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


def field_lines(path: str | os.PathLike, names: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, which must hold one field per entry of ``names``."""
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names):
                raise ValueError(f"{path}:{number}: expected '{' '.join(names)}', got {len(parts)} fields")
            yield number, parts
