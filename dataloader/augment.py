"""Optional damage augmentation of training faces (``--degrade-prob``), off in the published recipe.

Each image of a batch is damaged with probability ``prob`` by ``faces.degrade.random_degrade`` (a kind
drawn from ``kinds``, a severity uniform in [0, max_severity]). It runs on the host batch in the training
process, before the batch moves to the device, and every draw comes from a generator seeded by
(seed, rank, global step) only -- like the mirror mask -- so a resumed run replays the same damage and
the number of loader workers does not change it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from faces.degrade import ALL_KINDS, KINDS, random_degrade

_STREAM = 0x5EED_DA6E  # separates this generator from any other seeded by (seed, rank, step)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"blur,noise"`` -> ("blur", "noise"); ``"all"`` -> the benchmark's 7 kinds; ``"wide"`` -> those and the
    extra ones (``faces.degrade.ALL_KINDS``); unknown names are a ValueError."""
    if text.strip() == "all":
        return KINDS
    if text.strip() == "wide":
        return ALL_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if not kinds or unknown:
        raise ValueError(f"--degrade-kinds {text!r}: expected 'all', 'wide' or a comma list of "
                         f"{', '.join(ALL_KINDS)}")
    return kinds


@dataclass(frozen=True)
class DegradeAugment:
    prob: float
    kinds: tuple[str, ...] = KINDS
    max_severity: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"--degrade-prob must be in [0, 1], got {self.prob}")
        if not 0.0 <= self.max_severity <= 1.0:
            raise ValueError(f"--degrade-max-severity must be in [0, 1], got {self.max_severity}")

    def __call__(self, images: torch.Tensor, seed: int, rank: int, step: int) -> torch.Tensor:
        """Damage some of the uint8 (N, 3, H, W) BGR host images; returns a new tensor (input untouched)."""
        rng = np.random.default_rng([_STREAM, seed, rank, step])
        chosen = np.flatnonzero(rng.random(images.shape[0]) < self.prob)
        if chosen.size == 0:
            return images
        out = images.clone()
        for i in chosen:
            hwc = np.ascontiguousarray(images[i].permute(1, 2, 0).numpy())
            damaged, _, _ = random_degrade(hwc, rng, self.kinds, self.max_severity)
            out[i] = torch.from_numpy(damaged).permute(2, 0, 1)
        return out
