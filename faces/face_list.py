"""Image lists (first token of each line = an aligned face) resolved to files, without torch.

Shared by gen_feat, calibration, the evaluation tools and the torch-free deployment path
(``inference.ort_embed``); a missing image is reported with its list line before any model loads, and
``ImageList`` keeps each entry's line so that a face that fails later (empty, undecodable) is reported
as ``LIST:LINE`` too. Lists are read bytes-safe (``utils.text_lines``): any Linux path opens its file.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write
from utils.convention import load_aligned_face
from utils.text_lines import ENCODING, ERRORS, numbered_tokens, printable


@dataclass(frozen=True)
class SkippedImage:
    """A listed image left out (empty or undecodable): its line, ``LIST:LINE``, the file and why."""

    line: int
    where: str
    path: str
    reason: str


@dataclass(frozen=True)
class ImageList:
    """An image list as read: the list file, each entry's path as listed and as resolved, and its line."""

    path: str
    listed: list[str]
    resolved: list[str]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.listed)

    def where(self, i: int) -> str:
        """``LIST:LINE`` of entry ``i``, the place a user opens to fix or drop it."""
        return f"{printable(self.path)}:{self.lines[i]}"

    def subset(self, rows: Sequence[int]) -> ImageList:
        """The entries ``rows``, in that order, keeping their lines."""
        return ImageList(self.path, [self.listed[i] for i in rows], [self.resolved[i] for i in rows],
                         [self.lines[i] for i in rows])

    def skipped(self, i: int, reason: str) -> SkippedImage:
        """Entry ``i`` as left out for ``reason``."""
        return SkippedImage(self.lines[i], self.where(i), self.resolved[i], reason)


def load_image_list(path: str | os.PathLike) -> ImageList:
    """The list's entries; a missing image is a FileNotFoundError naming ``LIST:LINE``.

    A relative path resolves against the list's folder, or else against the current folder (the seed's
    lists, e.g. ``toy_imgs/0.jpg`` in ``toy_imgs/img.list``, are relative to where gen_feat runs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {printable(path)}")
    listed, resolved, lines = [], [], []
    for lineno, tokens in numbered_tokens(path):
        listed.append(tokens[0])
        lines.append(lineno)
        p = Path(tokens[0])
        beside = p if p.is_absolute() else path.parent / p
        resolved.append(str(p if not os.path.exists(beside) and os.path.exists(p) else beside))
    if not listed:
        raise ValueError(f"image list {printable(path)} is empty")
    images = ImageList(str(path), listed, resolved, lines)
    missing = [i for i, p in enumerate(resolved) if not os.path.exists(p)]
    if missing:
        i = missing[0]
        where = "" if Path(listed[i]).is_absolute() else " (nor relative to the current folder)"
        raise FileNotFoundError(f"{images.where(i)}: image {printable(resolved[i])} not found{where} "
                                f"({len(missing)} of {len(resolved)} listed images are missing)")
    return images


def read_image_list(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(paths as listed, paths resolved) of ``load_image_list``."""
    images = load_image_list(path)
    return images.listed, images.resolved


def empty_images(images: ImageList) -> list[int]:
    """Entries whose file has 0 bytes (an interrupted copy, a failed download): found by one stat each,
    before a model loads, rather than as an undecodable image after most of the list was embedded."""
    return [i for i, p in enumerate(images.resolved) if os.path.getsize(p) == 0]


def listed_face(path: str, where: str | None, skip_bad: bool) -> np.ndarray | None:
    """The aligned face of a list entry; a bad file raises ``WHERE: PATH: reason``, or gives None with
    ``skip_bad`` (the caller then leaves the entry out)."""
    try:
        return load_aligned_face(path)
    except ValueError as e:
        if skip_bad:
            return None
        raise ValueError(f"{where + ': ' if where else ''}{printable(path)}: {e}") from None


def bad_face_reason(path: str) -> str | None:
    """Why ``path`` is not a usable aligned face, or None when it is one."""
    try:
        load_aligned_face(path)
    except ValueError as e:
        return str(e)
    return None


def write_skipped(path: str | os.PathLike, skipped: Sequence[SkippedImage]) -> None:
    """``LIST:LINE<TAB>path<TAB>reason`` per line, atomically; a path keeps its bytes (surrogate escapes)."""
    text = "".join(f"{s.where}\t{s.path}\t{s.reason}\n" for s in skipped)
    with atomic_write(path, "wb") as f:
        f.write(text.encode(ENCODING, ERRORS))

