"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: 2N encoded images (JPEG/PNG bytes), pair i being
``bins[2i]`` and ``bins[2i+1]``, and N booleans. Files written by Python 2 need ``encoding='bytes'``.
Images are decoded with cv2, so they come out BGR like every other image in this project. The pickle
is read with an allow-list of globals (numpy arrays only), so a crafted file cannot run code.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.atomic import atomic_write

# Globals a .bin may legitimately reference (numpy arrays of labels or bytes); anything else is refused,
# so a crafted file cannot run code through pickle.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _as_buffer(item, path: Path, index: int) -> np.ndarray:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return np.frombuffer(item, dtype=np.uint8)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item
    raise ValueError(f"{path}: bin {index} is a {type(item).__name__}, expected encoded image bytes")


def read_bin_raw(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """The undecoded ``(bins, issame)`` of a ``.bin``, with the counts checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{path}: not a readable verification .bin pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = list(obj[0]), np.asarray(obj[1])
    if len(bins) % 2:
        raise ValueError(f"{path}: odd number of images ({len(bins)}); pairs need an even count")
    if issame.ndim != 1 or len(issame) != len(bins) // 2:
        raise ValueError(f"{path}: {len(issame)} labels for {len(bins)} images (expected {len(bins) // 2})")
    if len(bins) == 0:
        raise ValueError(f"{path}: the set holds no pairs")
    return bins, issame.astype(bool)


def decode_image(buf: np.ndarray, path: Path, index: int, image_size: tuple[int, int] | None) -> np.ndarray:
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: bin {index} does not decode as an image ({len(buf)} bytes)")
    if image_size is not None and img.shape[:2] != tuple(image_size):
        raise ValueError(f"{path}: bin {index} is {img.shape[0]}x{img.shape[1]}, "
                         f"expected {image_size[0]}x{image_size[1]}")
    return img


def read_bin(
    path: str | os.PathLike, image_size: tuple[int, int] | None = (112, 112), rows: range | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 (2N, H, W, 3) BGR images, bool (N,) issame); only the images ``rows`` when given (a
    process's share: the others stay encoded and are never decoded)."""
    path = Path(path)
    bins, issame = read_bin_raw(path)
    rows = range(len(bins)) if rows is None else rows
    if rows.start < 0 or rows.stop > len(bins):
        raise ValueError(f"{path}: images {rows.start}..{rows.stop - 1} asked for, the set has {len(bins)}")
    images = None
    for k, i in enumerate(rows):
        img = decode_image(_as_buffer(bins[i], path, i), path, i, image_size)
        if images is None:
            images = np.empty((len(rows),) + img.shape, dtype=np.uint8)
        elif img.shape != images.shape[1:]:
            raise ValueError(f"{path}: bin {i} has shape {img.shape}, bin {rows.start} has {images.shape[1:]}")
        images[k] = img
    if images is None:
        images = np.empty((0, *(image_size or (112, 112)), 3), dtype=np.uint8)
    return images, issame


def write_bin(path: str | os.PathLike, bins: Sequence[bytes], issame: Sequence[bool], protocol: int = 4) -> None:
    """Write ``(bins, issame_list)`` as insightface does (encoded bytes, list of bools), atomically."""
    path = Path(path)
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs: need exactly two per pair")
    obj = ([bytes(b) for b in bins], [bool(s) for s in issame])
    with atomic_write(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def pack_bin(img_list: str | os.PathLike, pair_list: str | os.PathLike, out: str | os.PathLike) -> int:
    """A ``.bin`` from an image list and a seed-format pair list (``i j label``, rows of the image list).

    The encoded files are stored as they are (no re-encoding), so ``--bin`` evaluation of the result sees
    exactly the pixels that gen_feat on the list sees. Returns the number of pairs.
    """
    from eval.metrics import read_pair_list
    from faces.face_list import read_image_list

    _, paths = read_image_list(img_list)
    i, j, issame = read_pair_list(pair_list, len(paths))
    blobs = {k: Path(paths[k]).read_bytes() for k in sorted(set(i.tolist()) | set(j.tolist()))}
    write_bin(out, [blobs[k] for pair in zip(i.tolist(), j.tolist(), strict=True) for k in pair], issame.tolist())
    return len(issame)


def _main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Pack aligned faces and a pair list into an insightface .bin.")
    p.add_argument("--img-list", required=True, help="image list (first token = path, relative to the list)")
    p.add_argument("--pair-list", required=True, help="'i j label' lines, 0-based rows of --img-list")
    p.add_argument("--out", required=True, help="the .bin to write (atomically)")
    args = p.parse_args(argv)
    n = pack_bin(args.img_list, args.pair_list, args.out)
    print(f"wrote {args.out}: {n} pairs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``)."""
    from utils.cli import run_cli

    return run_cli(_main, argv, "eval.bin_io")


if __name__ == "__main__":
    raise SystemExit(main())
