"""Pack a training list into an insightface RecordIO set: ``train.rec``, ``train.idx``, ``property``.

Layout as in insightface training sets: record 0 is a meta record with labels
``[N + 1, N + 1 + C]`` (images are keys 1..N), image records carry the identity as their float
label, and when each identity's images are contiguous, keys N+1..N+C hold one identity record each
with labels ``[first_key, last_key + 1]``. JPEG files are copied byte for byte by default, so the
packed pixels are identical to the files'.

The three files are written as ``.NAME.partial`` in DIR, fsynced, and renamed only once complete,
``train.idx`` last (after removing the old one, which must never pair with the new ``train.rec``): a
killed pack leaves no final-named file (bar the instant between two renames, when the leftover partial
``train.idx`` still marks it), readers name its partial files as an interrupted pack, and a complete
set already in DIR stays readable until the new one replaces it. A re-run removes stale partial files.

    python -m dataloader.pack_rec --train_list L --out DIR [--quality 95] [--keep-bytes | --reencode]
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from dataloader.image_list import TrainList, read_train_list
from dataloader.recordio import HEADER, RecordIOWriter, pack_payload, partial_path
from dataloader.transforms import BadSampleError, decode_face, is_jpeg

log = logging.getLogger(__name__)
FLOAT32_EXACT = 1 << 24  # keys and identities are stored as float32 labels
SET_FILES = ("train.rec", "property", "train.idx")  # in commit order: readers need train.idx, so it goes last


def write_rec_set(out_dir: str | os.PathLike, samples: Iterable[tuple[int, bytes]], num_classes: int,
                  size: int = 112) -> int:
    """Write (label, encoded image) pairs as DIR/train.rec, train.idx and property; returns the count.

    All or nothing (module docstring): an error removes this attempt's files, old ones stay as they were.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in _partials(out) if p.exists()]
    if stale:
        log.warning("removing %s in %s, left by an interrupted pack", ", ".join(stale), out)
    try:
        _remove_partials(out)
        n = _write_partials(out, samples, num_classes, size)
        _commit(out)
    except BaseException:
        _remove_partials(out)
        raise
    return n


def _partials(out: Path) -> list[Path]:
    return [partial_path(out / name) for name in SET_FILES]


def _remove_partials(out: Path) -> None:
    for p in _partials(out):
        p.unlink(missing_ok=True)


def _write_partials(out: Path, samples: Iterable[tuple[int, bytes]], num_classes: int, size: int) -> int:
    """The whole set under its partial names, fsynced; the meta record is patched once N is known."""
    rec, prop, idx = _partials(out)
    labels: list[int] = []
    with RecordIOWriter(rec, idx) as writer:
        writer.write(0, pack_payload([0.0, 0.0], b""))  # placeholder meta: readers name it as an interrupted pack
        for key, (label, image) in enumerate(samples, start=1):
            if not 0 <= label < num_classes:
                raise ValueError(f"{out}: image {key} has identity {label}, outside 0..{num_classes - 1}")
            writer.write(key, pack_payload(float(label), image, id=key))
            labels.append(label)
        n = len(labels)
        if n + 1 + num_classes >= FLOAT32_EXACT:
            raise ValueError(f"{out}: {n} images + {num_classes} identities exceed float32 key labels")
        first = _identity_ranges(np.asarray(labels, dtype=np.int64), num_classes)
        for c, (start, end) in enumerate(first):
            writer.write(n + 1 + c, pack_payload([float(start), float(end)], b""))
    meta_end = n + 1 + (num_classes if first else 0)
    with open(rec, "r+b") as f:  # fixed-size meta payload: its labels sit right after the header
        f.seek(8 + HEADER.size)
        f.write(np.asarray([n + 1, meta_end], dtype=np.float32).tobytes())
        _flush_to_disk(f)
    with open(idx, "rb") as f:
        os.fsync(f.fileno())
    with open(prop, "w") as f:
        f.write(f"{num_classes},{size},{size}\n")
        _flush_to_disk(f)
    return n


def _flush_to_disk(f: IO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _commit(out: Path) -> None:
    """Partial names -> final names, train.idx last; a failure part-way takes back what it renamed."""
    (out / "train.idx").unlink(missing_ok=True)  # the old index must never pair with the new train.rec
    done: list[Path] = []
    try:
        for name in SET_FILES:
            os.replace(partial_path(out / name), out / name)
            done.append(out / name)
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
    dir_fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _identity_ranges(labels: np.ndarray, num_classes: int) -> list[tuple[int, int]]:
    """[first_key, last_key + 1] per identity when each identity's keys are contiguous, else []."""
    if len(labels) == 0 or labels.max() >= num_classes:
        return []
    changes = np.flatnonzero(np.diff(labels)) + 1
    runs = labels[np.r_[0, changes]]
    if len(np.unique(runs)) != len(runs):
        log.info("identities are not contiguous in the list: no identity records written")
        return []
    bounds = np.r_[0, changes, len(labels)] + 1
    ranges = {int(c): (int(bounds[j]), int(bounds[j + 1])) for j, c in enumerate(runs)}
    return [ranges.get(c, (0, 0)) for c in range(num_classes)]


def load_image(path: str, mode: str = "copy", quality: int = 95, verify: bool = True) -> bytes:
    """Bytes to store for one file: ``copy`` keeps JPEGs as they are and re-encodes other formats,
    ``keep`` stores any file verbatim, ``reencode`` re-encodes everything at ``quality``."""
    with open(path, "rb") as f:
        buf = f.read()
    keep = mode == "keep" or (mode == "copy" and is_jpeg(buf))
    if keep and not verify:
        return buf
    img = decode_face(buf)
    if keep:
        return buf
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise BadSampleError(f"cv2.imencode failed at quality {quality}")
    return enc.tobytes()


def _load_one(path: str, mode: str, quality: int, verify: bool) -> tuple[bytes | None, str]:
    try:
        return load_image(path, mode, quality, verify), ""
    except (BadSampleError, OSError) as e:
        return None, str(e)


def _samples(train_list: TrainList, loaded: Iterable[tuple[bytes | None, str]],
             skip_bad: bool) -> Iterator[tuple[int, bytes]]:
    for i, (buf, reason) in enumerate(loaded):
        if buf is None:
            if not skip_bad:
                raise ValueError(f"bad training image {train_list.where(i)}: {reason}")
            log.warning("skipping %s: %s", train_list.where(i), reason)
            continue
        if (i + 1) % 100_000 == 0:
            log.info("packed %d / %d images", i + 1, len(train_list))
        yield int(train_list.labels[i]), buf


def pack_train_list(train_list: TrainList, out_dir: str | os.PathLike, mode: str = "copy",
                    quality: int = 95, verify: bool = True, skip_bad: bool = False,
                    workers: int = 0) -> int:
    """Pack every image of ``train_list`` (read in ``workers`` processes when > 0); returns the count."""
    if mode not in ("copy", "keep", "reencode"):
        raise ValueError(f"pack mode must be copy, keep or reencode, got {mode!r}")
    if len(train_list) + 1 + train_list.num_classes >= FLOAT32_EXACT:
        raise ValueError(f"{train_list.list_path}: too many images/identities for float32 key labels")
    load = partial(_load_one, mode=mode, quality=quality, verify=verify)
    if workers <= 0:
        return write_rec_set(out_dir, _samples(train_list, map(load, train_list.paths), skip_bad),
                             train_list.num_classes)
    with mp.get_context("fork").Pool(workers) as pool:
        loaded = pool.imap(load, train_list.paths, chunksize=64)
        return write_rec_set(out_dir, _samples(train_list, loaded, skip_bad), train_list.num_classes)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_list", required=True, help="'path 0 identity 0' per line")
    p.add_argument("--out", required=True, help="output folder for train.rec, train.idx, property")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality when an image is re-encoded")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--keep-bytes", action="store_true",
                     help="store every file verbatim, JPEG or not (default: JPEGs as is, others re-encoded)")
    how.add_argument("--reencode", action="store_true", help="decode and re-encode every image at --quality")
    p.add_argument("--no-verify", action="store_true", help="do not decode JPEGs to check them while packing")
    p.add_argument("--skip-bad", action="store_true", help="leave out unusable images instead of stopping")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="reading processes")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train_list = read_train_list(args.train_list)
    mode = "keep" if args.keep_bytes else "reencode" if args.reencode else "copy"
    n = pack_train_list(train_list, args.out, mode=mode, quality=args.quality, verify=not args.no_verify,
                        skip_bad=args.skip_bad, workers=args.workers)
    log.info("wrote %d images of %d identities to %s", n, train_list.num_classes, args.out)


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, None, "pack_rec.py"))
