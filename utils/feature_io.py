"""Feature files: the seed's text dump, ``.npz`` and ``.npy``, read and written in one place.

- text (any suffix but .npz/.npy): one line per image, ``path f1 ... fD``, raw (un-normalised) floats,
  whitespace separated, as the seed's ``gen_feat.py`` writes it. Paths cannot contain whitespace.
  We write ``%.9g``, which round-trips float32 exactly.
- ``.npz``: ``features`` float32 (N, D), ``magnitudes`` float32 (N,), ``paths`` str (N,).
- ``.npy``: the (N, D) features alone; rows are then named ``<file>#<row>``.

Before hours of embedding, ``check_output_folder`` and ``check_room`` find an output folder that cannot
take the file or lacks room for its estimated size (``estimate_feature_bytes``); ``sweep_stale_tmp`` removes
what a killed run's atomic writes left. Paths keep any byte they hold (``utils.text_lines``).

The seed parses text features as float64 for 1:1 verification and quality, and as float32 for IJB;
``dtype`` lets each tool read exactly what the seed computed on.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import OutputWriteError, atomic_write
from utils.text_lines import ENCODING, ERRORS, check_text, line_of_row, numbered_tokens, open_text, printable

TEXT_FORMAT = "%.9g"
WRITE_BLOCK = 1024
# Bytes per value of the output estimate: "%.9g" and a space take ~12 for raw features, ~13.5 for unit-norm
# ones; .npz and .npy store float32.
TEXT_BYTES_PER_VALUE = 13
BINARY_BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class FeatureFile:
    """Rows of one feature file; ``has_paths`` is False for ``.npy`` (placeholder names)."""

    paths: list[str]
    features: np.ndarray
    magnitudes: np.ndarray
    has_paths: bool


def _first_bad_text_line(path: Path, dim: int) -> str:
    for number, parts in numbered_tokens(path):
        if len(parts) != dim + 1:
            return f"{printable(path)}:{number}: expected a path and {dim} values, got {len(parts) - 1} values"
        try:
            [float(p) for p in parts[1:]]
        except ValueError as e:
            return f"{printable(path)}:{number}: not a number ({e})"
    return f"{printable(path)}: unreadable feature file"


def read_text_features(path: str | os.PathLike, dtype=np.float32) -> tuple[list[str], np.ndarray]:
    """The seed's ``path f1 ... fD`` text format -> (paths, (N, D) array of ``dtype``)."""
    path = Path(path)
    paths: list[str] = []
    dim = None
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            head = line.split(None, 1)
            if not head:
                continue
            if dim is None:
                check_text(path, number, line)
                dim = len(line.split()) - 1
            paths.append(head[0])
    if not paths:
        raise ValueError(f"feature file {printable(path)} is empty")
    if dim < 1:
        raise ValueError(f"{printable(path)}:{line_of_row(path, 0)}: a path with no feature values")
    try:  # latin-1 decodes any byte; the path column (any bytes) is dropped by its converter
        table = np.loadtxt(path, dtype=dtype, comments=None, ndmin=2, converters={0: lambda s: 0},
                           encoding="latin-1")
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
        raise ValueError(f"{where}: features of row {r} ({printable(paths[r])}) contain NaN or inf "
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
    with atomic_write(path, "wb") as f:  # bytes: a listed path keeps any byte it has (surrogate escapes)
        for start in range(0, len(feats), WRITE_BLOCK):
            rows = feats[start:start + WRITE_BLOCK].tolist()
            names = paths[start:start + WRITE_BLOCK]
            text = "".join(f"{p} {fmt % tuple(r)}\n" for p, r in zip(names, rows, strict=True))
            f.write(text.encode(ENCODING, ERRORS))


def write_features(
    path: str | os.PathLike,
    paths: Sequence[str] | None,
    feats: np.ndarray,
    magnitudes: np.ndarray | None = None,
    meta: dict | None = None,
) -> None:
    """Write by suffix: ``.npz`` (features, magnitudes, paths and, when given, ``meta``: how they were made, as
    a JSON string, ``read_meta``), ``.npy`` (features), else text (the seed's format: no room for ``meta``)."""
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
            extra = {} if meta is None else {"meta": np.asarray(json.dumps(meta, sort_keys=True))}
            np.savez(f, features=feats, magnitudes=np.asarray(mags, dtype=np.float32),
                     paths=np.asarray([str(p) for p in paths], dtype=str), **extra)


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta`` a ``.npz`` feature file was written with (precision, device...), None when it has none."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else None


def estimate_feature_bytes(path: str | os.PathLike, paths: Sequence[str], dim: int) -> int:
    """About the bytes ``write_features(path, paths, (N, dim) features)`` writes (the format by suffix)."""
    n = len(paths)
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return 128 + n * dim * BINARY_BYTES_PER_VALUE
    if suffix == ".npz":  # + magnitudes, and the paths as one fixed-width UCS-4 array
        longest = max((len(p) for p in paths), default=0)
        return 1024 + n * (dim * BINARY_BYTES_PER_VALUE + 4 + 4 * longest)
    return sum(len(p.encode(ENCODING, ERRORS)) + 1 for p in paths) + n * dim * TEXT_BYTES_PER_VALUE


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_output_folder(path: str | os.PathLike) -> Path:
    """The folder of the output ``path``, created if missing; an OutputWriteError naming it when it cannot
    take a file, found before hours of work rather than at the final write."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"output {printable(path)} is a folder; name a feature file in it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno or errno.EACCES, f"cannot create the output folder {printable(folder)} "
                               f"({e.strerror or e}); create it or write elsewhere", str(folder)) from None
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed where the file system allows: nothing left behind
            pass
    except OSError as e:
        raise OutputWriteError(e.errno or errno.EACCES, f"cannot write in the output folder {printable(folder)} "
                               f"({e.strerror or e}); make it writable or write elsewhere", str(folder)) from None
    return folder


def check_room(path: str | os.PathLike, paths: Sequence[str], dim: int) -> int:
    """The estimated size of the feature file ``path``; an OutputWriteError (ENOSPC) naming the folder, the
    need and the free space when it will not fit (the old file stays until the new one is complete)."""
    folder = Path(path).parent
    need = estimate_feature_bytes(path, paths, dim)
    free = shutil.disk_usage(folder).free
    if need > free:
        text = (f"not enough space in {printable(folder)} for {printable(Path(path).name)}: {len(paths)} features "
                f"of {dim} values need about {_size(need)}, {_size(free)} are free; free space or write elsewhere")
        raise OutputWriteError(errno.ENOSPC, text, str(path))
    return need


def sweep_stale_tmp(path: str | os.PathLike) -> list[str]:
    """Remove the ``.NAME.*.tmp`` files that atomic writes of ``path`` (and of ``NAME.*`` side files) killed
    outright (SIGKILL) left beside it; the names removed."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return sorted(removed)
