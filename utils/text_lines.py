"""Line-oriented text files (image, pair, label and score lists): errors name ``PATH:LINE``.

Lists are read as UTF-8 with ``surrogateescape``: a Linux path may hold any byte but NUL and ``/``, and a
byte that is not UTF-8 becomes a lone surrogate that ``os`` functions (and ``open``) turn back into the
same byte, so such a path opens the right file instead of stopping the read with a UnicodeDecodeError
that names neither file nor line. ``printable`` makes such a path safe to print or log. A NUL byte cannot
be in a path or a text list, so it marks a binary file given as a list (``numbered_tokens``).

Blank lines are skipped everywhere, as numpy's text readers skip them, so row ``r`` of a parsed table
is the ``r``-th non-blank line; ``line_of_row`` turns it back into the line number a user can open.
``field_lines`` reads a list of fixed-width records (``path label``, ``path score``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TextIO

ENCODING = "utf-8"
ERRORS = "surrogateescape"


def open_text(path: str | os.PathLike, mode: str = "r", **kwargs) -> TextIO:
    """``path`` opened as a list file: UTF-8, any other byte kept as a surrogate escape (round-trips)."""
    return open(path, mode, encoding=ENCODING, errors=ERRORS, **kwargs)


def printable(text: str | bytes | os.PathLike) -> str:
    """``text`` with the bytes a surrogate escape stands for written as ``\\xNN``: safe for any stream or log."""
    text = os.fspath(text)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        raw = text.encode(ENCODING, ERRORS)
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        raw = text.encode(ENCODING, "backslashreplace")
    return raw.decode(ENCODING, "backslashreplace")


def check_text(path: str | os.PathLike, number: int, line: str) -> None:
    """A ValueError naming ``PATH:LINE`` when ``line`` holds a NUL byte: the file is not a text list."""
    if "\0" in line:
        raise ValueError(f"{printable(path)}:{number}: a NUL byte: not a text list (is this the right file?)")


def numbered_tokens(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated tokens) of each non-blank line of a text list."""
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            check_text(path, number, line)
            tokens = line.split()
            if tokens:
                yield number, tokens


def line_of_row(path: str | os.PathLike, row: int) -> int:
    """1-based line number of the ``row``-th non-blank line (numpy's text readers skip blank lines)."""
    seen, number = -1, 1
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return number


def field_lines(path: str | os.PathLike, names: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, which must hold one field per entry of ``names``."""
    for number, parts in numbered_tokens(path):
        if len(parts) != len(names):
            raise ValueError(f"{printable(path)}:{number}: expected '{' '.join(names)}', got {len(parts)} fields")
        yield number, parts
