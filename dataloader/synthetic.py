"""Data without files, for smoke runs and for timing the trainer apart from JPEG decoding.

``SyntheticDataset`` makes each image from its index alone (a per-identity pattern plus per-sample
noise), so it is deterministic in any worker and a short run can still lower the loss.
``TensorImageDataset`` serves images already decoded into one uint8 tensor: the loader then costs
only indexing, which isolates the GPU side in benchmarks.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class SyntheticDataset(Dataset):
    """``num_samples`` deterministic uint8 (3, size, size) images; label ``i % num_classes``."""

    def __init__(self, num_samples: int, num_classes: int, image_size: int = 112, seed: int = 0,
                 noise: int = 48) -> None:
        if num_samples <= 0 or num_classes <= 0:
            raise ValueError(f"synthetic data needs positive sizes, got {num_samples} samples, "
                             f"{num_classes} classes")
        self.num_samples, self.num_classes = num_samples, num_classes
        self.image_size, self.seed, self.noise = image_size, seed, noise

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"synthetic index {i} out of range for {self.num_samples} samples")
        label = i % self.num_classes
        shape = (3, self.image_size, self.image_size)
        pattern = np.random.default_rng([self.seed, 0, label]).integers(0, 256, shape, dtype=np.int16)
        jitter = np.random.default_rng([self.seed, 1, i]).integers(-self.noise, self.noise + 1, shape,
                                                                    dtype=np.int16)
        img = np.clip(pattern + jitter, 0, 255).astype(np.uint8)
        return torch.from_numpy(img), label


class TensorImageDataset(Dataset):
    """Pre-decoded uint8 (N, 3, H, W) images and int64 (N,) labels held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()

    @classmethod
    def random(cls, num_samples: int, num_classes: int, image_size: int = 112,
               seed: int = 0) -> TensorImageDataset:
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (num_samples, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        return cls(images, torch.arange(num_samples) % num_classes)

    @classmethod
    def from_dataset(cls, dataset: Dataset, limit: int | None = None) -> TensorImageDataset:
        """Decode the first ``limit`` samples of a dataset into memory."""
        n = len(dataset) if limit is None else min(limit, len(dataset))
        pairs = [dataset[i] for i in range(n)]
        return cls(torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
