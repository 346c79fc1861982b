"""Photographs through ``faces.photo_faces`` in DataLoader worker processes, for ``inference.assess`` and
``dataloader.prepare``.

``PhotoFaces`` is a Dataset of photographs, so a DataLoader's worker processes can run the detector
in parallel (each worker builds its own onnxruntime session on first use); records come back in input order.
"""
from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from faces.detect import FaceDetector
from faces.photo_faces import FaceOptions, FaceRecord, faces_of_photo
from utils.cpu_info import usable_cores


class PhotoFaces(Dataset):
    """Photographs -> lists of FaceRecords; the detector is built lazily in each worker."""

    def __init__(self, paths: list[str], options: FaceOptions) -> None:
        self.paths, self.options = paths, options
        self._detector: FaceDetector | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> list[FaceRecord]:
        if self._detector is None:
            o = self.options
            self._detector = FaceDetector(o.det_score, max_side=o.det_size, threads=o.threads)
        return faces_of_photo(self.paths[i], self._detector, self.options)


def _as_is(records: list[FaceRecord]) -> list[FaceRecord]:
    return records


def iter_photo_faces(paths: list[str], options: FaceOptions, workers: int = 0):
    """Yield each photograph's records in input order, detected in ``workers`` processes (0: inline)."""
    if workers > 0:
        options = FaceOptions(**{**options.__dict__, "threads": options.threads or 1})
    loader = DataLoader(PhotoFaces(paths, options), batch_size=None, num_workers=workers,
                        collate_fn=_as_is, prefetch_factor=4 if workers > 0 else None)
    yield from loader


def default_workers() -> int:
    """``-j/--workers`` unset: no worker process on 2 cores or fewer, else half the cores, at most 8."""
    cores = usable_cores()
    return 0 if cores <= 2 else min(8, cores // 2)
