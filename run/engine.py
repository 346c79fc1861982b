"""The one training loop, shared by train.py and train_dist.py.

``train_one_epoch`` is the same for every execution mode; only the wrapping of the backbone (plain,
DataParallel or DDP) and the head (dense or class-sharded) differ, and both are decided by the caller.

Everything random in a step is a pure function of (seed, rank, global step): the mirror mask
(``flip_mask``), the optional damage augmentation (``LoopState.degrade``) and the global torch RNG that
dropout draws from (``step_seed``). A run resumed at
step k therefore replays exactly what an uninterrupted run does from step k on.
"""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from run.faults import Faults
from run.optim import NonFiniteGuard, StepPolicy, optimizer_step
from utils.convention import MAGFACE, InputConvention, to_model_input
from utils.logger import TensorBoard, Throughput, format_eta, get_logger
from utils.precision import autocast

METRICS = ("loss", "loss_id", "loss_g_weighted", "accuracy", "mag_mean", "mag_min", "mag_max", "margin")


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


class StepHooks(Protocol):
    """Monitoring that reads a step without changing it (``run.hooks.TrainHooks``: --vis_mag, --val-bin)."""

    def on_forward(self, epoch: int, step: int, embeddings: torch.Tensor, labels: torch.Tensor,
                   head: nn.Module) -> None: ...

    def after_step(self, epoch: int, step: int, global_step: int) -> None: ...


@dataclass(frozen=True)
class BatchPrep:
    """How a loader batch becomes this rank's model input (``prepare_batch``); fixed for a run."""

    device: torch.device
    batch_size: int  # per rank; short batches (skipped bad images) are padded to it
    seed: int = 0
    rank: int = 0
    convention: InputConvention = MAGFACE
    channels_last: bool = False
    # Optional damage augmentation of the host batch (--degrade-prob); None = off.
    degrade: Callable[[torch.Tensor, int, int, int], torch.Tensor] | None = None
    faults: Faults | None = None  # test hooks (run/faults.py)


@dataclass
class LoopState:
    """The loop's schedule and position, with the fixed parts of a step; ``global_step`` advances as it runs."""

    prep: BatchPrep
    steps_per_epoch: int
    total_steps: int
    lr_fn: Callable[[int], float]
    policy: StepPolicy = field(default_factory=StepPolicy)
    amp_dtype: torch.dtype | None = None
    # The backbone replays CUDA graphs (--compile-mode reduce-overhead / max-autotune): mark each step.
    cudagraph_steps: bool = False
    world_size: int = 1
    print_freq: int = 100
    global_step: int = 0
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    hooks: StepHooks | None = None
    # --freeze-depth: backbone modules kept in eval mode (their BatchNorm statistics fixed) while the rest trains
    frozen: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class Stop:
    """Why the loop ends after a step: ``--max-steps`` reached, and/or the preemption signal every rank agreed on."""

    max_steps: bool = False
    signal: signal.Signals | None = None

    def __bool__(self) -> bool:
        return self.max_steps or self.signal is not None


@dataclass
class EpochResult:
    metrics: dict[str, float]  # the epoch's mean step metrics (METRICS)
    stop: Stop = field(default_factory=Stop)  # the last on_step_end verdict; false when nothing asked to stop


def flip_mask(seed: int, step: int, n: int) -> torch.Tensor:
    """Which images of this step are mirrored: a pure function of (seed, step), so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, generator=g) < 0.5


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the global torch RNG for one step (dropout): resumable, and different on each rank."""
    return ((seed * 1_000_003 + step) * 4099 + rank + 1) % (2**63)


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, prep: BatchPrep,
                  global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad short batches (skipped bad images), mirror, move uint8 to the device, then normalise there."""
    if images.shape[0] == 0:
        raise ValueError(f"every image of the batch at global step {global_step} was unreadable "
                         "(see the 'skipped bad sample' warnings); fix the training data")
    if images.shape[0] < prep.batch_size:
        idx = torch.arange(prep.batch_size) % images.shape[0]
        images, labels = images[idx], labels[idx]
    if prep.degrade is not None:
        images = prep.degrade(images, prep.seed, prep.rank, global_step)
    # The loader's pinned batch goes to the device as it is and is mirrored there: mirroring 10 MB of
    # uint8 on the host made an unpinned copy (a blocking transfer) and kept the GPU waiting each step.
    mask = flip_mask(prep.seed, global_step, images.shape[0]).to(prep.device, non_blocking=True)
    images = images.to(prep.device, non_blocking=True)
    labels = labels.to(prep.device, non_blocking=True)
    images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    x = to_model_input(images, prep.convention)
    if prep.faults is not None:
        x = prep.faults.corrupt(x, global_step, prep.rank)
    if prep.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def _step_metrics(out: dict[str, torch.Tensor]) -> torch.Tensor:
    x = out["x_norm"].detach()
    return torch.stack([
        out["loss"].detach(), out["loss_id"].detach(), out["loss_g_weighted"].detach(),
        out["accuracy"].detach().float(), x.mean(), x.min(), x.max(), out["m_a"].detach().mean(),
    ]).float()


class _Meters:
    """Sums of the step metrics over the log window and over the epoch.

    The sums stay on the metrics' device and reach the host only when a window is logged or the epoch
    ends: a per-step ``.cpu()`` would make the host wait for the GPU after every step, and the next
    batch's transfer could no longer overlap the current step's compute.
    """

    def __init__(self, device: torch.device) -> None:
        self.window, self.epoch = torch.zeros(len(METRICS), device=device), torch.zeros(len(METRICS), device=device)
        self.window_n = self.epoch_n = 0

    def add(self, metrics: torch.Tensor) -> None:
        self.window += metrics
        self.epoch += metrics
        self.window_n += 1
        self.epoch_n += 1

    def take_window(self) -> torch.Tensor:
        mean = (self.window / max(self.window_n, 1)).cpu()
        self.window.zero_()
        self.window_n = 0
        return mean

    def epoch_means(self) -> dict[str, float]:
        return dict(zip(METRICS, (self.epoch / max(self.epoch_n, 1)).tolist(), strict=True))


def _guarded_forward(backbone: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, buffers: list,
                     saved: list, state: LoopState) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool]:
    """Forward pass; when the loss is not finite the BatchNorm statistics it touched are put back."""
    if buffers:
        torch._foreach_copy_(saved, buffers)
    with autocast(state.prep.device, state.amp_dtype):
        emb = backbone(x)
    out = head(emb, y)
    finite = bool(torch.isfinite(out["loss"]))
    if not finite and buffers:
        torch._foreach_copy_(buffers, saved)
    return out, emb, finite


def train_one_epoch(
    backbone: nn.Module,
    head: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    batches: Iterable,
    epoch: int,
    first_step: int,
    state: LoopState,
    tb: TensorBoard | None = None,
    on_step_end: Callable[[int], Stop] | None = None,
    bad_counter=None,
) -> EpochResult:
    """Run the steps of one epoch from ``first_step``; returns the epoch's mean metrics and why it stopped.

    ``on_step_end(step_in_epoch)`` runs after every step (periodic saves, the stop checks); a true ``Stop``
    (``--max-steps`` reached, a preemption signal) ends the epoch after that step and is returned. A step with
    a non-finite loss changes nothing: no update, and the BatchNorm statistics of its forward pass are put back.
    """
    log = get_logger()
    backbone.train()
    head.train()
    for module in state.frozen:
        module.eval()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    buffers = list(backbone.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    prep, stop = state.prep, Stop()
    meters, speed, step = _Meters(prep.device), Throughput(), first_step
    for images, labels, n_bad in batches:
        if bad_counter is not None:
            bad_counter.update(int(images.shape[0]), int(n_bad))
        if prep.faults is not None:
            prep.faults.at_step_start(state.global_step, prep.rank)
        torch.manual_seed(step_seed(prep.seed, prep.rank, state.global_step))
        if state.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = prepare_batch(images, labels, prep, state.global_step)
        lr = state.lr_fn(state.global_step)
        for group in (g for opt in optimizers for g in opt.param_groups):
            group["lr"] = lr * group.get("lr_scale", 1.0)  # --backbone-lr-mult
        out, emb, finite = _guarded_forward(backbone, head, x, y, buffers, saved_buffers, state)
        loss_value = 0.0 if finite else out["loss"].item()
        if state.guard.update(finite, loss_value, epoch, step + 1, state.global_step + 1):
            if state.hooks is not None:
                state.hooks.on_forward(epoch, step, emb, y, head)
            scaler.scale(out["loss"]).backward()
            optimizer_step(optimizers, scaler, params, state.policy)
            meters.add(_step_metrics(out))
        speed.update(prep.batch_size * state.world_size)
        step += 1
        state.global_step += 1
        if step % state.print_freq == 0 or step == state.steps_per_epoch:
            _log_window(log, tb, epoch, step, state, lr, meters.take_window(), speed.rate(), out)
            speed.reset()
        if state.hooks is not None:
            began = time.perf_counter()
            state.hooks.after_step(epoch, step, state.global_step)
            speed.skip(time.perf_counter() - began)
        if on_step_end is not None:
            stop = on_step_end(step)
        if stop or step >= state.steps_per_epoch:
            break
    return EpochResult(meters.epoch_means(), stop)


def _log_window(log, tb: TensorBoard | None, epoch: int, step: int, state: LoopState, lr: float,
                mean: torch.Tensor, rate: float, out: dict[str, torch.Tensor]) -> None:
    m = dict(zip(METRICS, mean.tolist(), strict=True))
    remaining = state.total_steps - state.global_step
    eta = remaining * state.prep.batch_size * state.world_size / max(rate, 1e-9)
    log.info(
        f"epoch {epoch} [{step}/{state.steps_per_epoch}] global step {state.global_step} lr {lr:.5f} "
        f"loss {m['loss']:.4f} L_id {m['loss_id']:.4f} lambda_g*L_g {m['loss_g_weighted']:.4f} "
        f"acc {m['accuracy'] * 100:.2f}% mag {m['mag_mean']:.2f} [{m['mag_min']:.2f}, {m['mag_max']:.2f}] "
        f"margin {m['margin']:.4f} {rate:.1f} img/s ETA {format_eta(eta)}"
    )
    if tb is not None:
        tb.scalars({f"train/{k}": v for k, v in m.items()} | {"train/lr": lr, "train/img_per_s": rate},
                   state.global_step)
        tb.histogram("train/magnitude", out["x_norm"].detach().float().cpu(), state.global_step)
