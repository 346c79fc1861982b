"""A verification set with known damage: the second face of every pair degraded by a recorded amount.

``make_damaged_set(img_list, pair_list, out_dir, kinds=KINDS, seed=0, force=False) -> Path`` reads a
pair list (``i j label``, 0-based rows of the image list) and writes, once, into ``out_dir``:

- ``clean/PPPPP_<name>``: the first face of pair P, a byte-for-byte copy of the source file.
- ``damaged/PPPPP_<stem>.png``: the second face of pair P after ``faces.degrade.degrade`` (lossless PNG,
  so the named damage is the only one). Kinds are balanced over the pairs (each of ``kinds`` repeated,
  then shuffled by ``seed``); severities are uniform in [0, 1) from ``seed``; the damage of pair P draws
  from ``np.random.default_rng([seed, P])`` so any one pair can be remade alone.
- ``img.list``: 2 rows per pair (row 2P clean, row 2P+1 damaged), paths relative to ``out_dir``, for
  ``python -m inference.gen_feat --inf_list OUT/img.list``.
- ``pair.list``: ``2P 2P+1 label``, the source labels in the source order.
- ``damage.csv``: header ``row,path,pair,kind,severity,parameter,source``; one line per img.list row.
  Clean rows have kind ``none``, severity 0 and parameter 0; ``parameter`` is
  ``faces.degrade.damage_parameter`` (blur sigma, JPEG quality, ...); ``source`` is the original path.
- ``manifest.json``: the sources, kinds, seed and counts, written last.

The set is built in a temporary folder beside ``out_dir`` and renamed into place, so ``out_dir`` is either
absent, the previous set, or the complete new one. An existing ``out_dir`` made from the same sources,
kinds and seed is kept as it is; a different one (or any other non-empty folder) is an error unless
``force``. ``read_damage_table(path) -> DamageTable`` reads ``damage.csv`` back, validated line by line.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from eval.metrics import read_pair_list
from faces.degrade import ALL_KINDS, KINDS, damage_parameter, degrade
from utils.atomic import write_json
from utils.text_lines import ENCODING, ERRORS, line_of_row, open_text, printable

TABLE_COLUMNS = ("row", "path", "pair", "kind", "severity", "parameter", "source")
CLEAN = "none"


@dataclass(frozen=True)
class DamageTable:
    """``damage.csv`` as arrays, one entry per img.list row."""

    paths: list[str]
    pair: np.ndarray  # int64
    kind: np.ndarray  # str
    severity: np.ndarray  # float64, 0 for clean rows

    @property
    def damaged(self) -> np.ndarray:
        """Rows that went through ``degrade`` (kind other than ``none``)."""
        return self.kind != CLEAN


def _manifest(img_list: Path, pair_list: Path, kinds: Sequence[str], seed: int, num_pairs: int) -> dict:
    return {"format": "magface-damaged-set/1", "img_list": str(img_list.resolve()),
            "pair_list": str(pair_list.resolve()), "kinds": list(kinds), "seed": int(seed),
            "num_pairs": int(num_pairs), "num_images": 2 * int(num_pairs)}


def _same_set(out_dir: Path, manifest: dict) -> bool:
    """True if ``out_dir`` already holds the set ``manifest`` describes; error if it holds anything else."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a folder")
    old = out_dir / "manifest.json"
    if old.is_file():
        try:
            return json.loads(old.read_text()) == manifest
        except ValueError:
            return False
    return False


def _draw_plan(num_pairs: int, kinds: Sequence[str], seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.resize(np.arange(len(kinds)), num_pairs))
    severity = rng.uniform(0.0, 1.0, size=num_pairs)
    return [kinds[k] for k in order], severity


def _write_pair(tmp: Path, p: int, first: str, second: str, kind: str, severity: float,
                seed: int) -> tuple[str, str] | None:
    """Copy the clean face, write the damaged one; None if the second image does not decode."""
    clean = f"clean/{p:05d}_{Path(first).name}"
    shutil.copyfile(first, tmp / clean)
    data = np.fromfile(second, dtype=np.uint8)  # not cv2.imread/imwrite: they crash on a path that is not UTF-8
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        return None
    out = degrade(img, kind, severity, np.random.default_rng([seed, p]))
    damaged = f"damaged/{p:05d}_{Path(second).stem}.png"
    ok, png = cv2.imencode(".png", out)
    if not ok:
        raise OSError(f"could not encode {printable(tmp / damaged)}")
    (tmp / damaged).write_bytes(png.tobytes())
    return clean, damaged


def _build(tmp: Path, img_list: Path, resolved: list[str], i0: np.ndarray, i1: np.ndarray,
           issame: np.ndarray, kinds: Sequence[str], seed: int) -> None:
    (tmp / "clean").mkdir()
    (tmp / "damaged").mkdir()
    plan_kinds, plan_sev = _draw_plan(len(i0), kinds, seed)
    table, listed, pairs = [], [], []
    for p, (a, b) in enumerate(zip(i0.tolist(), i1.tolist(), strict=True)):
        kind, sev = plan_kinds[p], float(plan_sev[p])
        written = _write_pair(tmp, p, resolved[a], resolved[b], kind, sev, seed)
        if written is None:
            raise ValueError(f"{printable(img_list)}:{line_of_row(img_list, b)}: image {printable(resolved[b])} "
                             "is unreadable")
        clean, damaged = written
        table.append((2 * p, clean, p, CLEAN, 0.0, 0.0, resolved[a]))
        table.append((2 * p + 1, damaged, p, kind, sev, damage_parameter(kind, sev), resolved[b]))
        listed += [clean, damaged]
        pairs.append(f"{2 * p} {2 * p + 1} {int(issame[p])}\n")
    (tmp / "img.list").write_text("".join(f"{x}\n" for x in listed), encoding=ENCODING, errors=ERRORS)
    (tmp / "pair.list").write_text("".join(pairs))
    with open_text(tmp / "damage.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TABLE_COLUMNS)
        w.writerows([r, path, p, k, repr(s), f"{par:.6g}", src] for r, path, p, k, s, par, src in table)


def make_damaged_set(img_list: str | os.PathLike, pair_list: str | os.PathLike, out_dir: str | os.PathLike,
                     kinds: Sequence[str] = KINDS, seed: int = 0, force: bool = False) -> Path:
    """Write the damaged set described in the module docstring; returns ``out_dir``."""
    from faces.face_list import read_image_list

    img_list, pair_list, out_dir = Path(img_list), Path(pair_list), Path(out_dir)
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        raise ValueError("make_damaged_set: no damage kinds given")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"make_damaged_set: seed must be a non-negative integer, got {seed!r}")
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad:
        raise ValueError(f"unknown damage kind {bad[0]!r}; expected one of {', '.join(ALL_KINDS)}")
    _, resolved = read_image_list(img_list)
    i0, i1, issame = read_pair_list(pair_list, len(resolved))
    manifest = _manifest(img_list, pair_list, kinds, seed, len(i0))
    if _same_set(out_dir, manifest):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"{out_dir} already holds a different set (or other files); pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: the finished set gets the umask's permissions, not 0o700
    try:
        _build(tmp, img_list, resolved, i0, i1, issame, kinds, seed)
        write_json(tmp / "manifest.json", manifest, nan_as_null=True)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an old ``out_dir`` is moved aside first and removed after."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rename(out_dir, old / "set")
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _table_error(path: Path, number: int, msg: str) -> ValueError:
    return ValueError(f"{path}:{number}: {msg}")


def read_damage_table(path: str | os.PathLike) -> DamageTable:
    """``damage.csv`` -> DamageTable; rows must be 0, 1, 2, ... and severities in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"damage table not found: {path}")
    paths, pair, kind, severity = [], [], [], []
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:5]) != TABLE_COLUMNS[:5]:
            raise _table_error(path, 1, f"expected the header {','.join(TABLE_COLUMNS)}, got {header}")
        for row in reader:
            number = reader.line_num
            if len(row) != len(header):
                raise _table_error(path, number, f"expected {len(header)} fields, got {len(row)}")
            try:
                r, p, s = int(row[0]), int(row[2]), float(row[4])
            except ValueError:
                raise _table_error(path, number, f"row, pair or severity is not a number: {row[:5]}") from None
            if r != len(paths):
                raise _table_error(path, number, f"row {r} out of order (expected {len(paths)})")
            if row[3] != CLEAN and row[3] not in ALL_KINDS:
                raise _table_error(path, number, f"unknown kind {row[3]!r}")
            if not (0.0 <= s <= 1.0) or (row[3] == CLEAN and s != 0.0) or math.isnan(s):
                raise _table_error(path, number, f"severity {row[4]} outside [0, 1] (or non-zero for 'none')")
            paths.append(row[1])
            pair.append(p)
            kind.append(row[3])
            severity.append(s)
    if not paths:
        raise ValueError(f"damage table {path} has no rows")
    return DamageTable(paths, np.array(pair, dtype=np.int64), np.array(kind, dtype=str),
                       np.array(severity, dtype=np.float64))
