"""One sampler for the single-process and the distributed trainer, resumable mid-epoch.

Like ``torch.utils.data.DistributedSampler``: every epoch draws one permutation seeded by
``seed + epoch`` (the same on every rank), pads it by wrapping so that it splits evenly (or drops
the tail with ``drop_last``), and rank r takes positions r, r + R, r + 2R, ... Because the split is
strided, after k samples per rank the ranks together have consumed exactly the first k * R positions
of the permutation: resuming is "skip the first k of this rank's share", and it carries over to a
different number of ranks when k * R divides evenly.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Per-epoch reshuffling, rank-strided, mid-epoch resumable sampler of ``num_samples`` indices."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        if num_samples <= 0:
            raise ValueError(f"sampler needs at least one sample, got num_samples={num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas={num_replicas}")
        if drop_last and num_samples < num_replicas:
            raise ValueError(f"drop_last with {num_samples} samples leaves nothing for {num_replicas} ranks")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0
        self._start_epoch = 0

    @property
    def per_rank(self) -> int:
        """Indices each rank draws in a full epoch."""
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, samples_done: int) -> None:
        """Skip the first ``samples_done`` indices of this rank's share, for the current epoch only."""
        if not 0 <= samples_done <= self.per_rank:
            raise ValueError(f"start {samples_done} outside this rank's epoch share of {self.per_rank} samples")
        self._start, self._start_epoch = int(samples_done), self.epoch

    @property
    def start(self) -> int:
        return self._start if self._start_epoch == self.epoch else 0

    def epoch_order(self) -> torch.Tensor:
        """The padded (or truncated) permutation of this epoch, shared by all ranks."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.per_rank * self.num_replicas
        if total > self.num_samples:
            reps = math.ceil(total / self.num_samples)
            order = order.repeat(reps)
        return order[:total]

    def __iter__(self) -> Iterator[int]:
        share = self.epoch_order()[self.rank :: self.num_replicas]
        return iter(share[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
