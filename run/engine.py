"""The one training loop, shared by train.py and train_dist.py: one step reads top to bottom in ``train_one_epoch``.

The loop is the same for every execution mode; only the wrapping of the backbone (plain, DataParallel or DDP)
and the head (dense or class-sharded) differ, and both are decided by the caller (``run.trainer``).

Everything random in a step is a pure function of (seed, rank, global step): the mirror mask
(``flip_mask``), the optional damage augmentation (``StepConfig.degrade``) and the global torch RNG that
dropout draws from (``step_seed``). A run resumed at step k therefore replays exactly what an uninterrupted
run does from step k on.
"""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from run.meters import Meters, log_window, step_metrics
from run.optim import NonFiniteGuard
from run.preempt import PreemptWatch
from run.state import Position
from utils.convention import MAGFACE, InputConvention, to_model_input
from utils.logger import TensorBoard, Throughput, get_logger
from utils.precision import autocast

if TYPE_CHECKING:  # only named: importing validate costs a run start a second (scikit-learn, inference)
    from run.validate import Validator
    from run.vis_mag import MagnitudeVisualizer


def lr_at(step: int, steps_per_epoch: int, base_lr: float, epochs: int, schedule: str = "step",
          drop_epochs: Iterable[int] = (10, 18, 22), drop_ratio: float = 0.1,
          warmup_epochs: float = 0.0) -> float:
    """Learning rate at a global step: linear warm-up, then step drops or cosine decay."""
    epoch = step / max(steps_per_epoch, 1)
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (step + 1) / (warmup_epochs * steps_per_epoch)
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-9)
        progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
    completed = int(step // max(steps_per_epoch, 1))
    return base_lr * drop_ratio ** sum(completed >= e for e in drop_epochs)


@dataclass(frozen=True)
class StepConfig:
    """What every step of a run shares, fixed for the run (``run.trainer.step_config`` builds it)."""

    device: torch.device
    batch_size: int  # per rank; short batches (skipped bad images) are padded to it
    steps_per_epoch: int = 1
    total_steps: int = 1
    lr_fn: Callable[[int], float] | None = None  # the schedule; train_one_epoch needs it, prepare_batch does not
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    # in a process group: collectives line up (overflow verdict, stop checks); ranks hold different head rows
    distributed: bool = False
    convention: InputConvention = MAGFACE
    channels_last: bool = False
    # Optional damage augmentation of the host batch (--degrade-prob); None = off.
    degrade: Callable[[torch.Tensor, int, int, int], torch.Tensor] | None = None
    amp_dtype: torch.dtype | None = None
    # The backbone replays CUDA graphs (--compile-mode reduce-overhead / max-autotune): mark each step.
    cudagraph_steps: bool = False
    grad_clip: float = 0.0  # --grad-clip: the global gradient norm's limit (0 = off)
    # Global gradient norm for --grad-clip; None = the norm of every optimised gradient in this process.
    grad_norm_fn: Callable[[], torch.Tensor] | None = None
    # --freeze-depth: backbone modules kept in eval mode (their BatchNorm statistics fixed) while the rest trains
    frozen: tuple[nn.Module, ...] = ()
    print_freq: int = 100
    save_every_steps: int = 0  # --save-every-steps (0 = off)
    max_steps: int = 0  # --max-steps (0 = no limit)
    val_every: int = 0  # --val-every: validate every N global steps (0 = at the end of each epoch)


@dataclass
class Progress:
    """Where the run stands, advanced by the loop: the global step (steps done) and the non-finite streak."""

    global_step: int = 0
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)


@dataclass(frozen=True)
class Stop:
    """Why the loop ends after a step: ``--max-steps`` reached, and/or the preemption signal every rank agreed on."""

    max_steps: bool = False
    signal: signal.Signals | None = None

    def __bool__(self) -> bool:
        return self.max_steps or self.signal is not None


@dataclass
class EpochResult:
    metrics: dict[str, float]  # the epoch's mean step metrics (run.meters.METRICS)
    stop: Stop = field(default_factory=Stop)  # the last step's stop verdict; false when nothing asked to stop


def flip_mask(seed: int, step: int, n: int) -> torch.Tensor:
    """Which images of this step are mirrored: a pure function of (seed, step), so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, generator=g) < 0.5


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the global torch RNG for one step (dropout): resumable, and different on each rank."""
    return ((seed * 1_000_003 + step) * 4099 + rank + 1) % (2**63)


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, cfg: StepConfig,
                  global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad short batches (skipped bad images), mirror, move uint8 to the device, then normalise there."""
    if images.shape[0] == 0:
        raise ValueError(f"every image of the batch at global step {global_step} was unreadable "
                         "(see the 'skipped bad sample' warnings); fix the training data")
    if images.shape[0] < cfg.batch_size:
        idx = torch.arange(cfg.batch_size) % images.shape[0]
        images, labels = images[idx], labels[idx]
    if cfg.degrade is not None:
        images = cfg.degrade(images, cfg.seed, cfg.rank, global_step)
    # The loader's pinned batch goes to the device as it is and is mirrored there: mirroring 10 MB of
    # uint8 on the host made an unpinned copy (a blocking transfer) and kept the GPU waiting each step.
    mask = flip_mask(cfg.seed, global_step, images.shape[0]).to(cfg.device, non_blocking=True)
    images = images.to(cfg.device, non_blocking=True)
    labels = labels.to(cfg.device, non_blocking=True)
    images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    x = to_model_input(images, cfg.convention)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def train_one_epoch(
    model: nn.Module,
    head: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    batches: Iterable,
    epoch: int,
    first_step: int,
    cfg: StepConfig,
    progress: Progress,
    tb: TensorBoard | None = None,
    bad_counter=None,
    visualizer: MagnitudeVisualizer | None = None,
    validator: Validator | None = None,
    save_state: Callable[[Position], bool] | None = None,
    watch: PreemptWatch | None = None,
) -> EpochResult:
    """Run the steps of one epoch from ``first_step``; returns the epoch's mean metrics and why it stopped.

    After each step, in this order: the progress line, validation (--val-bin; the RNG states are restored around
    it), the periodic last.pth (``save_state``, --save-every-steps) and the stop checks (--max-steps, the
    preemption signal: collective, so every rank stops after the same step). A step with a non-finite loss
    changes nothing: no update, and the BatchNorm statistics of its forward pass are put back.
    """
    log = get_logger()
    model.train()
    head.train()
    for module in cfg.frozen:
        module.eval()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    spe, stop = cfg.steps_per_epoch, Stop()
    meters, speed, step = Meters(cfg.device), Throughput(), first_step
    for images, labels, n_bad in batches:
        if bad_counter is not None:
            bad_counter.update(int(images.shape[0]), int(n_bad))
        torch.manual_seed(step_seed(cfg.seed, cfg.rank, progress.global_step))
        if cfg.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = prepare_batch(images, labels, cfg, progress.global_step)
        lr = cfg.lr_fn(progress.global_step)
        for group in (g for opt in optimizers for g in opt.param_groups):
            group["lr"] = lr * group.get("lr_scale", 1.0)  # --backbone-lr-mult

        # forward; a non-finite loss puts back the BatchNorm statistics it touched and skips the update
        if buffers:
            torch._foreach_copy_(saved_buffers, buffers)
        with autocast(cfg.device, cfg.amp_dtype):
            emb = model(x)
        out = head(emb, y)
        finite = bool(torch.isfinite(out["loss"]))
        if not finite and buffers:
            torch._foreach_copy_(buffers, saved_buffers)
        loss_value = 0.0 if finite else out["loss"].item()
        if progress.guard.update(finite, loss_value, epoch, step + 1, progress.global_step + 1):
            if visualizer is not None:
                visualizer.on_forward(epoch, step, epoch * spe + step + 1, emb, y, head)
            scaler.scale(out["loss"]).backward()
            optimizer_step(optimizers, scaler, params, cfg.grad_clip, cfg.grad_norm_fn, cfg.distributed)
            meters.add(step_metrics(out))
        speed.update(cfg.batch_size * cfg.world_size)
        step += 1
        progress.global_step += 1
        global_step = progress.global_step

        if step % cfg.print_freq == 0 or step == spe:
            remaining = (cfg.total_steps - global_step) * cfg.batch_size * cfg.world_size
            log_window(log, tb, epoch, step, spe, global_step, lr, meters.take_window(), speed.rate(), remaining, out)
            speed.reset()
        if validator is not None and (global_step % cfg.val_every == 0 if cfg.val_every else step >= spe):
            began = time.perf_counter()
            with torch.random.fork_rng(devices=_rng_devices(cfg.device)):
                validator(global_step // spe, global_step, cfg.distributed)
            speed.skip(time.perf_counter() - began)
        if save_state is not None and cfg.save_every_steps and global_step % cfg.save_every_steps == 0 \
                and step < spe:
            save_state(Position(epoch, step, global_step))
        stop = Stop(max_steps=bool(cfg.max_steps) and global_step >= cfg.max_steps,
                    signal=watch.agreed(cfg.device, cfg.distributed) if watch is not None else None)
        if stop or step >= spe:
            break
    return EpochResult(meters.epoch_means(), stop)


def agree_on_overflow(scaler: torch.amp.GradScaler, optimizers: list[torch.optim.Optimizer], distributed: bool) -> bool:
    """After ``scaler.unscale_``: one fp16 overflow verdict for every optimizer and every rank.

    GradScaler decides per optimizer and per process. With the class-sharded head an inf in one rank's
    head shard would make that rank alone skip its update while the others step, and the ranks would
    drift apart. The found-inf flags of all optimizers are combined, all-reduced (MAX) and written back
    into GradScaler's per-optimizer state, where ``scaler.step`` and ``scaler.update`` read them (the
    place torch's own ShardedGradScaler synchronises). Returns True when the step is skipped.
    """
    states = [scaler._per_optimizer_states[id(opt)]["found_inf_per_device"] for opt in optimizers]
    flags = [flag for per_device in states for flag in per_device.values()]
    if not flags:
        return False
    verdict = torch.stack([f.to(flags[0].device, torch.float32) for f in flags]).amax()
    if distributed:
        tdist.all_reduce(verdict, op=tdist.ReduceOp.MAX)
    for per_device in states:
        for flag in per_device.values():
            flag.copy_(verdict)
    return bool(verdict)


def optimizer_step(optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler, params: list[nn.Parameter],
                   grad_clip: float = 0.0, grad_norm_fn: Callable[[], torch.Tensor] | None = None,
                   distributed: bool = False) -> bool:
    """Unscale, agree on overflow, clip, step, update the scale; False when fp16 overflow skipped it."""
    skipped = False
    if scaler.is_enabled():
        for opt in optimizers:
            scaler.unscale_(opt)
        skipped = agree_on_overflow(scaler, optimizers, distributed)
    if grad_clip > 0:
        norm = grad_norm_fn() if grad_norm_fn is not None else \
            get_total_norm([p.grad for p in params if p.grad is not None])
        clip_grads_with_norm_(params, grad_clip, norm)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return not skipped
