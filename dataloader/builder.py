"""Training dataset and DataLoader assembly, and the budget for skipped bad samples.

Batches are ``(images uint8 (B, 3, 112, 112) BGR, labels int64 (B,), n_bad)``. With ``skip_bad`` a
dataset returns ``BadSample`` markers; ``collate_faces`` drops them, so B may fall below the batch
size (even to 0), and ``n_bad`` (an int that also carries the skipped samples' descriptions) goes
to ``BadSampleCounter``, which logs each one and stops the run once too large a fraction is bad.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from dataloader.image_list import ImageListDataset, read_train_list
from dataloader.rec_dataset import RecordIODataset
from dataloader.synthetic import SyntheticDataset
from dataloader.transforms import FACE_SIZE, BadSample
from utils.logger import get_logger


class BadCount(int):
    """The number of samples dropped from a batch; ``.samples`` holds their 'where: why' lines."""

    samples: tuple[str, ...]

    def __new__(cls, samples: tuple[str, ...] = ()) -> BadCount:
        obj = super().__new__(cls, len(samples))
        obj.samples = tuple(samples)
        return obj

    def __reduce__(self):
        return BadCount, (self.samples,)


def collate_faces(items: list) -> tuple[torch.Tensor, torch.Tensor, BadCount]:
    """Stack (image, label) pairs, dropping ``BadSample`` markers and counting them."""
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = BadCount(tuple(f"{it.source}: {it.reason}" for it in items if isinstance(it, BadSample)))
    if not good:
        return torch.empty((0, 3, FACE_SIZE, FACE_SIZE), dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels.long(), bad


class BadSampleCounter:
    """Counts samples seen and skipped; raises once the bad fraction exceeds ``max_fraction``.

    Each skipped sample is logged on the run's logger (console and train.log) with its file, list line and
    reason; ``end_epoch`` gives the epoch's sum. The fraction is judged only after ``min_samples`` samples, so
    one bad file in the first batch does not stop a run.
    """

    def __init__(self, max_fraction: float = 0.01, min_samples: int = 1000) -> None:
        if not 0 <= max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.min_samples = max_fraction, min_samples
        self.seen = 0
        self.bad = 0
        self.epoch_bad = 0

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def update(self, n_kept: int, n_bad: int) -> None:
        """Record one batch: ``n_kept`` usable samples and ``n_bad`` dropped ones (a ``BadCount``)."""
        log = get_logger()
        self.seen += int(n_kept) + int(n_bad)
        self.bad += int(n_bad)
        self.epoch_bad += int(n_bad)
        described = getattr(n_bad, "samples", ())
        for line in described:
            log.warning(f"skipped bad sample {line}")
        if int(n_bad) > len(described):  # a plain int lost the names on the way
            log.warning(f"skipped {int(n_bad) - len(described)} bad samples (their names were lost on the way)")
        if self.seen >= self.min_samples and self.fraction > self.max_fraction:
            raise RuntimeError(
                f"{self.bad} of {self.seen} training samples ({100 * self.fraction:.2f}%) were bad, more than "
                f"the allowed {100 * self.max_fraction:.2f}%; fix the data (see the warnings above)"
            )

    def end_epoch(self, epoch: int) -> str | None:
        """The epoch's line for the log when it skipped samples (None otherwise); starts the next epoch's count."""
        count, self.epoch_bad = self.epoch_bad, 0
        if not count:
            return None
        return f"epoch {epoch}: skipped {count} bad samples ({self.bad} of {self.seen} so far, --skip-bad-images)"


def build_train_dataset(train_list: str | None = None, rec: str | None = None, synthetic: int | None = None,
                        num_classes: int | None = None, skip_bad: bool = False) -> Dataset:
    """Exactly one source: a ``--train_list`` file, a RecordIO folder / ``.rec``, or N synthetic samples."""
    given = [name for name, v in (("train_list", train_list), ("rec", rec), ("synthetic", synthetic)) if v]
    if len(given) != 1:
        raise ValueError(f"give exactly one training source (train_list, rec, synthetic), got {given or 'none'}")
    if train_list:
        return ImageListDataset(read_train_list(train_list, num_classes), skip_bad=skip_bad)
    if rec:
        return RecordIODataset(rec, skip_bad=skip_bad, num_classes=num_classes)
    if num_classes is None:
        raise ValueError("synthetic data needs num_classes")
    return SyntheticDataset(int(synthetic), num_classes)


def build_train_loader(dataset: Dataset, batch_size: int, workers: int, sampler: Sampler | None,
                       pin_memory: bool, drop_last: bool = True, persistent_workers: bool | None = None,
                       prefetch_factor: int | None = None, worker_init_fn: Callable[[int], None] | None = None
                       ) -> DataLoader:
    """A DataLoader yielding ``(images, labels, n_bad)``; workers fork on Linux (no dataset pickling)."""
    extra: dict = {}
    if workers > 0:
        if sys.platform.startswith("linux"):
            extra["multiprocessing_context"] = "fork"
        extra["persistent_workers"] = True if persistent_workers is None else persistent_workers
        extra["prefetch_factor"] = 2 if prefetch_factor is None else prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False if sampler is not None else True,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_faces,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=worker_init_fn,
        **extra,
    )


MAX_AUTO_WORKERS = 8  # enough to feed a GPU from JPEG files; more only adds start-up time and memory


def train_workers(local_ranks: int = 1) -> int:
    """``--workers -1``: the cores this process may use shared among the ``local_ranks`` training processes of the
    node, less one for each training process itself, within [0, 8] (a 2-core machine: 1 worker, 0 with 2 ranks)."""
    from utils.cpu_info import usable_cores

    return max(0, min(MAX_AUTO_WORKERS, usable_cores() // max(local_ranks, 1) - 1))
