"""The seed's ``--train_list`` format and a dataset over it.

One image per line, ``path 0 identity 0``; only token 0 (path, relative to the list's folder or
absolute) and token 2 (integer identity from 0) are read. The list is checked up front, because a
bad line found hours into an epoch, inside a worker, costs a run.

Paths are kept in one numpy byte buffer rather than millions of Python strings: forked DataLoader
workers then share it without the copy-on-write growth that reference counts cause. The list is read
bytes-safe (``utils.text_lines``): a path with bytes that are not UTF-8 (legal on Linux) opens its file.
"""
from __future__ import annotations

import os
from array import array
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloader.transforms import BadSample, BadSampleError, decode_face, to_chw_tensor
from utils.text_lines import check_text, open_text, printable


class PathTable(Sequence):
    """Read-only sequence of path strings stored as one byte buffer (the file-system bytes) plus offsets."""

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"path index {i} out of range for {len(self)} paths")
        return os.fsdecode(self._blob[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


@dataclass
class TrainList:
    """A parsed training list: absolute paths, int64 labels and the 1-based line of each entry."""

    list_path: str
    paths: PathTable
    labels: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def where(self, i: int) -> str:
        return f"{printable(self.paths[i])} (line {int(self.lines[i])} of {printable(self.list_path)})"


def _parse_label(tokens: list[str], text: str, where: str) -> int:
    if len(tokens) < 3:
        raise ValueError(f"{where}: expected 'path 0 identity 0', got {text.strip()!r}")
    try:
        label = int(tokens[2])
    except ValueError:
        raise ValueError(f"{where}: identity {tokens[2]!r} is not an integer in {text.strip()!r}") from None
    if label < 0:
        raise ValueError(f"{where}: negative identity {label} in {text.strip()!r}")
    return label


def find_missing(paths: Sequence[str]) -> list[int]:
    """Indices of paths that do not exist, listing each folder once instead of one stat per file."""
    by_dir: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_dir[os.path.dirname(p)].append(i)
    missing = []
    for folder, idx in by_dir.items():
        try:
            names = set(os.listdir(folder or "."))
        except OSError:
            names = set()
        for i in idx:
            if os.path.basename(paths[i]) not in names and not os.path.exists(paths[i]):
                missing.append(i)
    missing.sort()
    return missing


def read_train_list(path: str | os.PathLike, num_classes: int | None = None,
                    check_files: bool = True) -> TrainList:
    """Parse and validate a training list; errors name the list file, the line and its text."""
    list_path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"training list {printable(list_path)} does not exist")
    prefix = os.path.dirname(list_path) + os.sep
    paths: list[str] = []
    labels, lines = array("q"), array("q")
    shown = printable(list_path)
    with open_text(list_path) as f:
        for n, text in enumerate(f, start=1):
            check_text(list_path, n, text)
            tokens = text.split()
            if not tokens:
                continue
            label = _parse_label(tokens, text, f"{shown}:{n}")
            if num_classes is not None and label >= num_classes:
                raise ValueError(
                    f"{shown}:{n}: identity {label} >= {num_classes} classes; "
                    f"--last-fc-size is too small for this list (needs at least {label + 1})"
                )
            p = tokens[0] if os.path.isabs(tokens[0]) else prefix + tokens[0]
            paths.append(os.path.normpath(p) if "/." in p or "//" in p else p)
            labels.append(label)
            lines.append(n)
    if not paths:
        raise ValueError(f"training list {shown} holds no images")
    if check_files:
        missing = find_missing(paths)
        if missing:
            first = missing[0]
            raise FileNotFoundError(
                f"{shown}:{lines[first]}: image {printable(paths[first])} does not exist "
                f"({len(missing)} of {len(paths)} listed images are missing)"
            )
    return TrainList(list_path, PathTable(paths), np.frombuffer(labels, dtype=np.int64).copy(),
                     np.frombuffer(lines, dtype=np.int64).copy())


class ImageListDataset(Dataset):
    """Faces read from files named by a ``TrainList``: (uint8 BGR (3, 112, 112), int label)."""

    def __init__(self, train_list: TrainList, skip_bad: bool = False) -> None:
        self.train_list = train_list
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.train_list)

    @property
    def num_classes(self) -> int:
        return self.train_list.num_classes

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadSample:
        path = self.train_list.paths[i]
        try:
            with open(path, "rb") as f:
                buf = f.read()
            img = decode_face(buf)
        except (BadSampleError, OSError) as e:
            reason = str(e) if isinstance(e, BadSampleError) else f"unreadable ({e.strerror or e})"
            if self.skip_bad:
                return BadSample(self.train_list.where(i), reason)
            err = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
            raise err(f"bad training image {self.train_list.where(i)}: {reason}") from None
        return to_chw_tensor(img), int(self.train_list.labels[i])
