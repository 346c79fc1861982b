"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``) read and written natively, without mxnet.

The training dataset over such a set is ``dataloader.rec_dataset.RecordIODataset``.

Format (docs/FORMATS.md): records of ``uint32 magic 0xced7230a, uint32 lrec`` (low 29 bits length,
high 3 bits continuation flag), payload, zero padding to 4 bytes. A payload holding the magic word at
a 4-byte aligned position is split there by dmlc's writer (flags 1 start, 2 middle, 3 end) and the
word dropped; the reader puts it back. Payload = ``<IfQQ`` header (flag, label, id, id2), ``flag``
float32 labels when flag > 0, then the encoded image. Record 0 of insightface sets is a meta record
whose first label bounds the image keys: 1 .. int(label[0]) - 1.

``dataloader.pack_rec`` writes each file of a set as ``.NAME.partial`` beside its final name and renames
it once the set is complete; such files without a final ``.rec``/``.idx`` mark an interrupted pack.
"""
from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dataloader.transforms import BadSampleError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
HEADER = struct.Struct("<IfQQ")


class IRHeader(NamedTuple):
    flag: int
    label: float
    id: int
    id2: int


def pack_payload(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Header + labels + image bytes; a sequence label is stored as ``flag`` float32 labels."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return HEADER.pack(0, float(label), id, id2) + bytes(image)
    labels = np.asarray(label, dtype=np.float32)
    return HEADER.pack(len(labels), 0.0, id, id2) + labels.tobytes() + bytes(image)


def unpack_payload(payload: bytes) -> tuple[IRHeader, np.ndarray | None, memoryview]:
    """Split a payload into header, extra labels (flag > 0) and the encoded image bytes."""
    if len(payload) < HEADER.size:
        raise BadSampleError(f"payload of {len(payload)} bytes is shorter than the {HEADER.size}-byte header")
    header = IRHeader(*HEADER.unpack_from(payload))
    start = HEADER.size
    labels = None
    if header.flag > 0:
        end = start + 4 * header.flag
        if end > len(payload):
            raise BadSampleError(f"header announces {header.flag} labels, payload has {len(payload)} bytes")
        labels = np.frombuffer(payload, dtype=np.float32, count=header.flag, offset=start)
        start = end
    return header, labels, memoryview(payload)[start:]


def read_record(fd: int, offset: int, file_size: int) -> bytes:
    """The payload of the record at ``offset``, joining multi-part records; ``BadSampleError`` if corrupt."""
    parts: list[bytes] = []
    pos = offset
    while True:
        head = os.pread(fd, 8, pos)
        if len(head) < 8:
            raise BadSampleError(f"record header at offset {pos} runs past the end of the file")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise BadSampleError(f"bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if pos + 8 + length > file_size:
            raise BadSampleError(
                f"record length {length} at offset {pos} runs past the end of the file ({file_size} bytes)"
            )
        if cflag not in ((0, 1) if not parts else (2, 3)):
            raise BadSampleError(f"unexpected continuation flag {cflag} at offset {pos}")
        parts.append(os.pread(fd, length, pos + 8))
        if cflag in (0, 3):
            return parts[0] if len(parts) == 1 else b"".join(parts)
        parts.append(MAGIC_BYTES)
        pos += 8 + length  # split parts are 4-byte multiples: no padding between them


class RecordIOWriter:
    """Appends records to a ``.rec`` and their offsets to a ``.idx``, splitting like dmlc's writer."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w")

    def _write_part(self, cflag: int, data: bytes | memoryview) -> None:
        self._rec.write(MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(data)))
        self._rec.write(data)

    def write(self, key: int, payload: bytes) -> int:
        """Write one record; returns its offset."""
        if len(payload) > LENGTH_MASK:
            raise ValueError(f"record {key}: payload of {len(payload)} bytes exceeds the 2^29-1 limit")
        offset = self._rec.tell()
        view, start, pos = memoryview(payload), 0, payload.find(MAGIC_BYTES)
        while pos != -1 and pos + 4 <= len(payload) // 4 * 4:
            if pos % 4 == 0:
                self._write_part(1 if start == 0 else 2, view[start:pos])
                start = pos + 4
            pos = payload.find(MAGIC_BYTES, pos + 1)
        self._write_part(0 if start == 0 else 3, view[start:])
        self._rec.write(b"\x00" * (-len(payload) % 4))
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_idx_slow(raw: bytes, idx_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, offsets, lines = [], [], []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = line.split()
        try:
            if len(tokens) != 2:
                raise ValueError
            key, off = int(tokens[0]), int(tokens[1])
            if key < 0 or off < 0:
                raise ValueError
        except ValueError:
            text = line[:80].decode("utf-8", "replace")
            raise ValueError(f"{idx_path}:{n}: expected 'key<TAB>offset', got {text!r}") from None
        keys.append(key)
        offsets.append(off)
        lines.append(n)
    return np.asarray(keys, np.int64), np.asarray(offsets, np.int64), np.asarray(lines, np.int64)


def read_idx(idx_path: str, rec_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and offsets of a ``.idx``; checks every line and that no record starts past the ``.rec`` end."""
    with open(idx_path, "rb") as f:
        raw = f.read()
    n_lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
    values = None
    if b" " not in raw and b"\n\n" not in raw and not raw.startswith(b"\n") and raw.count(b"\t") == n_lines:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:  # fast path, ~20x quicker than a Python loop on millions of lines
                values = np.fromstring(raw.decode("ascii"), dtype=np.int64, sep=" ")
            except (ValueError, UnicodeDecodeError, DeprecationWarning):
                values = None
    if values is not None and len(values) == 2 * n_lines and (values >= 0).all():
        keys, offsets = values[0::2].copy(), values[1::2].copy()
        lines = np.arange(1, n_lines + 1)
    else:
        keys, offsets, lines = _parse_idx_slow(raw, idx_path)
    if len(keys) == 0:
        raise ValueError(f"{idx_path} lists no records")
    past = np.flatnonzero(offsets + 8 > rec_size)
    if len(past):
        i = past[0]
        raise ValueError(
            f"{idx_path}:{lines[i]}: key {keys[i]} points at offset {offsets[i]}, past the end of the "
            f".rec ({rec_size} bytes; {len(past)} entries do so): the .idx does not match this .rec"
        )
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        raise ValueError(f"{idx_path}:{lines[np.flatnonzero(keys == dup)[1]]}: key {dup} is listed twice")
    return keys, offsets


def resolve_rec_paths(path: str | os.PathLike) -> tuple[str, str]:
    """A folder holding ``train.rec``/``train.idx`` or a ``.rec`` path -> (rec, idx) absolute paths."""
    path = os.path.abspath(os.fspath(path))
    rec = os.path.join(path, "train.rec") if os.path.isdir(path) else path
    idx = os.path.splitext(rec)[0] + ".idx"
    for p in (rec, idx):
        if not os.path.isfile(p):
            partial = [q.name for q in (partial_path(rec), partial_path(idx)) if q.is_file()]
            if partial:
                raise interrupted_pack(os.path.dirname(rec), f"{' and '.join(partial)} but no {os.path.basename(p)}")
            raise FileNotFoundError(f"RecordIO file {p} does not exist")
    return rec, idx


def partial_path(path: str | os.PathLike) -> Path:
    """Where a file of a set is written until the whole set is complete: ``.NAME.partial`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def interrupted_pack(folder: str | os.PathLike, evidence: str) -> ValueError:
    """The error for a set whose packing stopped part-way: no reader can tell how many images it lacks."""
    return ValueError(f"{folder}: the RecordIO pack in this folder was interrupted ({evidence}); re-run "
                      f"python -m dataloader.pack_rec --train_list LIST --out {folder}")


def read_property(folder: str) -> int | None:
    """``num_classes`` from an insightface ``property`` file (``num_classes,112,112``), if present."""
    prop = os.path.join(folder, "property")
    if not os.path.isfile(prop):
        return None
    with open(prop) as f:
        text = f.read().strip()
    try:
        return int(text.split(",")[0])
    except ValueError:
        raise ValueError(f"{prop}: expected 'num_classes,112,112', got {text[:80]!r}") from None
