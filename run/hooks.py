"""The monitoring a training run asks for (``--vis_mag``, ``--val-bin``), behind the loop's StepHooks.

Both read the step without changing it: no gradients, no random numbers (the RNG states are restored
around them regardless), the BatchNorm statistics untouched (eval mode), and every rank calls them at
the same steps, so the collectives they use under DDP line up.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import nn

from run.vis_mag import MagnitudeVisualizer
from utils.convention import parse_convention
from utils.logger import TensorBoard, get_logger

if TYPE_CHECKING:
    from run.trainer import Run
    from run.validate import Validator


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


class TrainHooks:
    """``engine.StepHooks`` for --vis_mag and --val-bin / --val-every / --save-best."""

    def __init__(self, run: Run, steps_per_epoch: int, visualizer: MagnitudeVisualizer | None,
                 validator: Validator | None, val_every: int) -> None:
        self.run, self.steps_per_epoch = run, steps_per_epoch
        self.visualizer, self.validator, self.val_every = visualizer, validator, val_every

    def on_forward(self, epoch: int, step: int, embeddings: torch.Tensor, labels: torch.Tensor,
                   head: nn.Module) -> None:
        if self.visualizer is not None:
            global_step = epoch * self.steps_per_epoch + step + 1
            self.visualizer.on_forward(epoch, step, global_step, embeddings, labels, head)

    def val_due(self, step: int, global_step: int) -> bool:
        if self.val_every:
            return global_step % self.val_every == 0
        return step >= self.steps_per_epoch

    def after_step(self, epoch: int, step: int, global_step: int) -> None:
        if self.validator is None or not self.val_due(step, global_step):
            return
        with torch.random.fork_rng(devices=_rng_devices(self.run.device)):
            self.validator(global_step // self.steps_per_epoch, global_step, self.run.dist.distributed)


def build_hooks(run: Run, steps_per_epoch: int, tb: TensorBoard | None, amp_dtype: torch.dtype | None,
                resume_step: int | None) -> TrainHooks | None:
    """The hooks ``run.cfg`` asks for, or None (the loop then calls nothing)."""
    cfg, dist = run.cfg, run.dist
    visualizer = None
    if cfg.vis_mag:
        visualizer = MagnitudeVisualizer(run.out_dir, cfg.vis_mag_start, cfg.vis_mag_every, dist.is_main,
                                         dist.distributed, cfg.last_fc_size, tb)
    validator = None
    if cfg.val_bin:
        # imported here: scikit-learn and the inference code cost every run start a second or more otherwise
        from run.validate import Validator, embed_sharded, load_val_sets

        sets = load_val_sets(cfg.val_bin, dist.world_size, dist.rank)
        get_logger().info(f"--val-bin: {', '.join(f'{s.name} ({len(s.issame)} pairs)' for s in sets)}, every "
                          f"{f'{cfg.val_every} steps' if cfg.val_every else 'epoch'}")
        embed = functools.partial(embed_sharded, run.backbone, device=run.device,
                                  convention=parse_convention(cfg.input_convention),
                                  dtype=amp_dtype or torch.float32, batch_size=cfg.val_batch_size,
                                  embedding_size=cfg.embedding_size)
        save_best = functools.partial(run.save_epoch, name="best.pth") if cfg.save_best else None
        validator = Validator(sets, run.out_dir, embed, dist.is_main, tb, save_best, resume_step)
    if visualizer is None and validator is None:
        return None
    return TrainHooks(run, steps_per_epoch, visualizer, validator, cfg.val_every)
