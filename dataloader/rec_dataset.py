"""The training dataset over an insightface RecordIO set (``dataloader.recordio`` holds the file format)."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloader.recordio import (
    IRHeader,
    interrupted_pack,
    read_idx,
    read_property,
    read_record,
    resolve_rec_paths,
    unpack_payload,
)
from dataloader.transforms import BadSample, BadSampleError, decode_face, to_chw_tensor


def _label_of(header: IRHeader, labels: np.ndarray | None) -> int:
    value = float(labels[0]) if labels is not None else header.label
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise BadSampleError(f"label {value} is not a non-negative integer")
    return int(value)


class RecordIODataset(Dataset):
    """Faces from an insightface RecordIO set: (uint8 BGR (3, 112, 112), int label).

    ``num_classes`` is the identity count the set declares (``property`` file or meta record),
    None when it declares none; the ``num_classes`` argument is the FC size labels must fit.
    """

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False, num_classes: int | None = None) -> None:
        self.rec_path, self.idx_path = resolve_rec_paths(path)
        self.skip_bad, self.fc_size = skip_bad, num_classes
        self.rec_size = os.path.getsize(self.rec_path)
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._check_not_interrupted()
        keys, offsets = read_idx(self.idx_path, self.rec_size)
        self.keys, self.offsets, self.num_classes = self._image_keys(keys, offsets)
        self.close()
        if len(self.keys) == 0:
            raise ValueError(f"{self.rec_path} holds no images")
        if num_classes is not None and self.num_classes is not None and self.num_classes > num_classes:
            raise ValueError(
                f"{self.rec_path}: the set has {self.num_classes} identities, more than {num_classes}; "
                "--last-fc-size is too small"
            )

    def _check_not_interrupted(self) -> None:
        """A pack killed before this project wrote atomically left final-named files: an empty .rec, or one
        whose first record is still pack_rec's placeholder meta (labels [0, 0], no image), patched only at
        the end. Checked before the .idx, which such a pack usually left truncated too."""
        folder = os.path.dirname(self.rec_path)
        if self.rec_size == 0:
            raise interrupted_pack(folder, f"{os.path.basename(self.rec_path)} is empty")
        try:
            header, labels, image = self._payload(0)
        except BadSampleError:
            return  # not a pack_rec set, or damaged: the .idx checks and the records say which
        finally:
            self.close()
        if header.flag == 2 and labels is not None and not labels.any() and len(image) == 0:
            raise interrupted_pack(folder, f"meta record 0 of {os.path.basename(self.rec_path)} is still the "
                                           "placeholder written before the first image")

    def _image_keys(self, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Image keys per the meta record 0 (when its flag > 0), else every key in ``.idx`` order."""
        classes = read_property(os.path.dirname(self.rec_path))
        where0 = np.flatnonzero(keys == 0)
        if not len(where0):
            return keys, offsets, classes
        try:
            header, labels, _ = self._payload(int(offsets[where0[0]]))
        except BadSampleError as e:
            raise ValueError(f"{self.rec_path}: meta record 0 at offset {offsets[where0[0]]}: {e}") from None
        if header.flag == 0 or labels is None:
            return keys, offsets, classes
        end = float(labels[0])
        if not (math.isfinite(end) and 1 <= end <= len(keys) + 1):
            raise ValueError(f"{self.rec_path}: meta record 0 claims {end - 1} images, the .idx lists {len(keys)}")
        end = int(end)
        order = np.argsort(keys, kind="stable")
        wanted = np.arange(1, end, dtype=np.int64)
        pos = np.searchsorted(keys[order], wanted).clip(max=len(keys) - 1)
        absent = np.flatnonzero(keys[order][pos] != wanted)
        if len(absent):
            raise ValueError(
                f"{self.idx_path}: meta record 0 says images are keys 1..{end - 1}, but key "
                f"{wanted[absent[0]]} is missing ({len(absent)} missing)"
            )
        if classes is None and len(labels) > 1 and int(labels[1]) > end:
            classes = int(labels[1]) - end
        return wanted, offsets[order][pos], classes

    def _file(self) -> int:
        """This process's descriptor: opened lazily so that each DataLoader worker owns its own."""
        if self._fd_pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd  # type: ignore[return-value]

    def _payload(self, offset: int) -> tuple[IRHeader, np.ndarray | None, memoryview]:
        return unpack_payload(read_record(self._file(), offset, self.rec_size))

    def close(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = self._fd_pid = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the descriptor goes with the process
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = state["_fd_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadSample:
        key, offset = int(self.keys[i]), int(self.offsets[i])
        try:
            header, labels, image = self._payload(offset)
            label = _label_of(header, labels)
            img = decode_face(image)
        except BadSampleError as e:
            where = f"{self.rec_path} key {key} at offset {offset}"
            if self.skip_bad:
                return BadSample(where, str(e))
            raise ValueError(f"bad training record {where}: {e}") from None
        if self.fc_size is not None and label >= self.fc_size:
            raise ValueError(
                f"{self.rec_path} key {key}: identity {label} >= {self.fc_size} classes; "
                "--last-fc-size is too small"
            )
        return to_chw_tensor(img), label
