"""Feature files: the seed's text dump, ``.npz`` and ``.npy``, read and written in one place.

- text (any suffix but .npz/.npy): one line per image, ``path f1 ... fD``, raw (un-normalised) floats,
  whitespace separated, as the seed's ``gen_feat.py`` writes it. Paths cannot contain whitespace.
  We write ``%.9g``, which round-trips float32 exactly.
- ``.npz``: ``features`` float32 (N, D), ``magnitudes`` float32 (N,), ``paths`` str (N,).
- ``.npy``: the (N, D) features alone; rows are then named ``<file>#<row>``.

The seed parses text features as float64 for 1:1 verification and quality, and as float32 for IJB;
``dtype`` lets each tool read exactly what the seed computed on.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write
from utils.text_lines import line_of_row

TEXT_FORMAT = "%.9g"
WRITE_BLOCK = 1024


@dataclass(frozen=True)
class FeatureFile:
    """Rows of one feature file; ``has_paths`` is False for ``.npy`` (placeholder names)."""

    paths: list[str]
    features: np.ndarray
    magnitudes: np.ndarray
    has_paths: bool


def _first_bad_text_line(path: Path, dim: int) -> str:
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != dim + 1:
                return f"{path}:{number}: expected a path and {dim} values, got {len(parts) - 1} values"
            try:
                [float(p) for p in parts[1:]]
            except ValueError as e:
                return f"{path}:{number}: not a number ({e})"
    return f"{path}: unreadable feature file"


def read_text_features(path: str | os.PathLike, dtype=np.float32) -> tuple[list[str], np.ndarray]:
    """The seed's ``path f1 ... fD`` text format -> (paths, (N, D) array of ``dtype``)."""
    path = Path(path)
    paths: list[str] = []
    dim = None
    with open(path) as f:
        for line in f:
            head = line.split(None, 1)
            if not head:
                continue
            if dim is None:
                dim = len(line.split()) - 1
            paths.append(head[0])
    if not paths:
        raise ValueError(f"feature file {path} is empty")
    if dim < 1:
        raise ValueError(f"{path}:{line_of_row(path, 0)}: a path with no feature values")
    try:
        table = np.loadtxt(path, dtype=dtype, comments=None, ndmin=2, converters={0: lambda s: 0})
    except ValueError:
        raise ValueError(_first_bad_text_line(path, dim)) from None
    if table.shape != (len(paths), dim + 1):
        raise ValueError(_first_bad_text_line(path, dim))
    return paths, np.ascontiguousarray(table[:, 1:])


def _read_npz(path: Path, dtype) -> FeatureFile:
    with np.load(path, allow_pickle=False) as z:
        if "features" not in z.files:
            raise ValueError(f"{path}: no 'features' array (keys: {sorted(z.files)})")
        feats = np.asarray(z["features"], dtype=dtype)
        if feats.ndim != 2:
            raise ValueError(f"{path}: 'features' must be (N, D), got shape {feats.shape}")
        n = len(feats)
        paths = [str(p) for p in z["paths"]] if "paths" in z.files else None
        mags = np.asarray(z["magnitudes"], dtype=np.float64) if "magnitudes" in z.files else None
    if paths is not None and len(paths) != n:
        raise ValueError(f"{path}: 'paths' has {len(paths)} entries for {n} feature rows")
    if mags is not None and mags.shape != (n,):
        raise ValueError(f"{path}: 'magnitudes' has shape {mags.shape}, expected ({n},)")
    if mags is not None and not np.isfinite(mags).all():
        raise ValueError(f"{path}: 'magnitudes' row {int(np.flatnonzero(~np.isfinite(mags))[0])} is not finite")
    names = paths if paths is not None else [f"{path.name}#{i}" for i in range(n)]
    if mags is None:
        mags = np.linalg.norm(feats.astype(np.float64), axis=1)
    return FeatureFile(names, feats, mags, paths is not None)


def check_finite(feats: np.ndarray, paths: Sequence[str], source: str | os.PathLike) -> None:
    """Raise naming the first row (and its path) holding NaN or inf."""
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        where = f"{source}:{line_of_row(source, r)}" if Path(source).suffix not in (".npz", ".npy") else source
        raise ValueError(f"{where}: features of row {r} ({paths[r]}) contain NaN or inf "
                         f"({int(bad.sum())} bad rows in all)")


def load_feature_file(path: str | os.PathLike, dtype=np.float32) -> FeatureFile:
    """Any supported feature file, validated: non-empty, 2-D, finite."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ff = _read_npz(path, dtype)
    elif suffix == ".npy":
        feats = np.asarray(np.load(path, allow_pickle=False), dtype=dtype)
        if feats.ndim != 2:
            raise ValueError(f"{path}: features must be (N, D), got shape {feats.shape}")
        names = [f"{path.name}#{i}" for i in range(len(feats))]
        ff = FeatureFile(names, feats, np.linalg.norm(feats.astype(np.float64), axis=1), False)
    else:
        paths, feats = read_text_features(path, dtype)
        ff = FeatureFile(paths, feats, np.linalg.norm(feats.astype(np.float64), axis=1), True)
    if len(ff.features) == 0 or ff.features.shape[1] == 0:
        raise ValueError(f"feature file {path} is empty (shape {ff.features.shape})")
    check_finite(ff.features, ff.paths, path)
    return ff


def load_features(path: str | os.PathLike, dtype=np.float32) -> tuple[list[str], np.ndarray]:
    """(paths, (N, D) features) of a text, ``.npz`` or ``.npy`` feature file, chosen by suffix."""
    ff = load_feature_file(path, dtype)
    return ff.paths, ff.features


def _validate_for_write(paths: Sequence[str] | None, feats: np.ndarray, need_paths: bool) -> None:
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    if not np.isfinite(feats).all():
        r = int(np.flatnonzero(~np.isfinite(feats).all(axis=1))[0])
        raise ValueError(f"refusing to write non-finite features (row {r})")
    if need_paths and (paths is None or len(paths) != len(feats)):
        raise ValueError(f"need one path per feature row: {0 if paths is None else len(paths)} "
                         f"paths for {len(feats)} rows")
    for i, p in enumerate(paths or []):
        if not p or len(str(p).split()) != 1:
            raise ValueError(f"path of row {i} ({p!r}) is empty or contains whitespace")


def write_text_features(path: str | os.PathLike, paths: Sequence[str], feats: np.ndarray) -> None:
    """The seed's text format, formatted a block of rows at a time, written atomically."""
    path = Path(path)
    feats = np.asarray(feats)
    _validate_for_write(paths, feats, need_paths=True)
    fmt = " ".join([TEXT_FORMAT] * feats.shape[1])
    with atomic_write(path, "w") as f:
        for start in range(0, len(feats), WRITE_BLOCK):
            rows = feats[start:start + WRITE_BLOCK].tolist()
            names = paths[start:start + WRITE_BLOCK]
            f.write("".join(f"{p} {fmt % tuple(r)}\n" for p, r in zip(names, rows, strict=True)))


def write_features(
    path: str | os.PathLike,
    paths: Sequence[str] | None,
    feats: np.ndarray,
    magnitudes: np.ndarray | None = None,
) -> None:
    """Write by suffix: ``.npz`` (features, magnitudes, paths), ``.npy`` (features), else text."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        write_text_features(path, paths, feats)
        return
    feats = np.asarray(feats, dtype=np.float32)
    _validate_for_write(paths, feats, need_paths=suffix == ".npz")
    with atomic_write(path, "wb") as f:
        if suffix == ".npy":
            np.save(f, feats)
        else:
            mags = np.linalg.norm(feats, axis=1) if magnitudes is None else magnitudes
            np.savez(f, features=feats, magnitudes=np.asarray(mags, dtype=np.float32),
                     paths=np.asarray([str(p) for p in paths], dtype=str))
