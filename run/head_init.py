"""What a fine-tune from a converged backbone needs: the head started at the class means, frozen leading units.

A randomly initialised head sends large, arbitrary gradients into a pretrained backbone for its first steps
and can wreck what it learned. ``--head-init class-means`` instead embeds the training faces once with the
starting backbone (eval mode, no augmentation) and sets each class row to the direction of the mean of its
faces' normalised embeddings: the first logits are then those of a nearest-class-mean classifier, already
good, and the loss starts low. Classes without a readable face keep their random row.

``--freeze-depth K`` keeps the backbone's first K units (``models.backbones.backbone_units``) fixed: no
gradient, their BatchNorm statistics in eval mode, so they stay exactly the pretrained ones.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dataloader import collate_faces
from models.backbones import backbone_units
from models.magface import ClassWeightHead
from utils.convention import InputConvention, to_model_input
from utils.dist import DistInfo
from utils.logger import get_logger


def frozen_modules(backbone: nn.Module, depth: int) -> list[nn.Module]:
    """The modules of the first ``depth`` units; a depth that leaves nothing to train is a ValueError."""
    units = backbone_units(backbone)
    if not 0 <= depth < len(units):
        raise ValueError(f"--freeze-depth {depth}: this backbone has {len(units)} units, so it must lie in "
                         f"[0, {len(units) - 1}] (the last unit always trains)")
    return [m for unit in units[:depth] for m in unit]


def freeze(modules: list[nn.Module]) -> int:
    """Turn off the gradients of ``modules`` and put them in eval mode; returns the number of frozen parameters."""
    count = 0
    for module in modules:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


@torch.no_grad()
def class_mean_sums(backbone: nn.Module, dataset: Dataset, num_classes: int, dist: DistInfo, device: torch.device,
                    convention: InputConvention, batch_size: int = 128, workers: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums of the normalised embeddings per class [C, D], face counts [C]) over the whole dataset.

    Each rank embeds every world_size-th face; the sums are all-reduced, so every rank gets the same totals.
    """
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_faces)
    was_training = backbone.training
    backbone.eval()
    sums = counts = None
    for images, labels, _ in loader:
        if images.shape[0] == 0:
            continue
        emb = backbone(to_model_input(images.to(device), convention)).float()
        if sums is None:
            sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float64, device=device)
            counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        labels = labels.to(device)
        sums.index_add_(0, labels, F.normalize(emb, dim=1).double())
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    backbone.train(was_training)
    if sums is None:  # this rank had no readable face: it still joins the collective with zeros
        dim = int(getattr(backbone, "embedding_size", 0)) or 512
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    if dist.distributed:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    return sums, counts


def init_head_from_class_means(head: ClassWeightHead, backbone: nn.Module, dataset: Dataset, dist: DistInfo,
                               device: torch.device, convention: InputConvention, batch_size: int = 128,
                               workers: int = 0) -> dict:
    """Collective: set the head's rows to its classes' mean directions, at unit length."""
    began = time.perf_counter()
    sums, counts = class_mean_sums(backbone, dataset, head.num_classes, dist, device, convention, batch_size, workers)
    seen = counts > 0
    # Unit rows: the cosine ignores a row's length but an SGD step turns it by about lr * |grad| / length, and
    # random rows are ~0.01 * sqrt(D) long, so class means at that length were knocked about by the first steps.
    means = F.normalize(sums.float(), dim=1)
    local, local_seen = head.local_rows(means), seen[head.start:head.end].to(head.weight.device)
    with torch.no_grad():  # classes without a face keep their random rows
        head.weight.copy_(torch.where(local_seen.view(-1, 1), local, head.weight))
    # how well the starting embedding already separates the classes: mean |sum| / count = mean cos to the centre
    spread = (sums.norm(dim=1)[seen] / counts[seen]).mean().item() if bool(seen.any()) else float("nan")
    info = {"faces": int(counts.sum().item()), "classes_seen": int(seen.sum().item()),
            "classes_random": int((~seen).sum().item()), "mean_resultant": spread,
            "seconds": time.perf_counter() - began}
    get_logger().info(
        f"head rows initialised from class means of {info['faces']} faces ({info['classes_seen']} classes; "
        f"{info['classes_random']} without a face keep random rows) in {info['seconds']:.1f}s; mean length of "
        f"a class's mean unit embedding {spread:.3f} (1 = all its faces embed alike)")
    return info
