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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from run.faults import Faults
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


class NonFiniteError(RuntimeError):
    pass


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is NaN/inf and aborts after ``limit`` consecutive ones."""

    limit: int = 20
    consecutive: int = 0
    total: int = 0

    def update(self, finite: bool, loss: float, epoch: int, step: int, global_step: int) -> bool:
        """Record one step's verdict (steps counted from 1, as in the progress lines); returns ``finite``,
        raises NonFiniteError at the limit."""
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        get_logger().warning(
            f"non-finite loss ({loss}) at epoch {epoch} step {step} (global step {global_step}): step skipped, "
            f"weights unchanged ({self.consecutive} in a row, limit --max-nonfinite {self.limit})"
        )
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite losses up to epoch {epoch} step {step} (global step "
                f"{global_step}): the run diverged. Weights were not updated by those steps; lower --lr, use "
                "--amp bf16 instead of fp16, set --grad-clip, or check the data."
            )
        return False


@dataclass
class LoopState:
    """What the loop needs beyond the modules; ``global_step`` advances as it runs."""

    device: torch.device
    steps_per_epoch: int
    total_steps: int
    batch_size: int
    lr_fn: Callable[[int], float]
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    # The backbone replays CUDA graphs (--compile-mode reduce-overhead / max-autotune): mark each step.
    cudagraph_steps: bool = False
    grad_clip: float = 0.0
    seed: int = 0
    print_freq: int = 100
    global_step: int = 0
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    # Global gradient norm for --grad-clip; None = the norm of every optimised gradient in this process.
    grad_norm_fn: Callable[[], torch.Tensor] | None = None
    rank: int = 0
    world_size: int = 1
    # Ranks hold different parameters (sharded head): fp16 overflow verdicts must be all-reduced.
    sync_overflow: bool = False
    faults: Faults | None = None
    convention: InputConvention = MAGFACE
    # Optional damage augmentation of the host batch (--degrade-prob); None = off.
    degrade: Callable[[torch.Tensor, int, int, int], torch.Tensor] | None = None
    hooks: StepHooks | None = None


def flip_mask(seed: int, step: int, n: int) -> torch.Tensor:
    """Which images of this step are mirrored: a pure function of (seed, step), so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, generator=g) < 0.5


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the global torch RNG for one step (dropout): resumable, and different on each rank."""
    return ((seed * 1_000_003 + step) * 4099 + rank + 1) % (2**63)


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, state: LoopState) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad short batches (skipped bad images), mirror, move uint8 to the device, then normalise there."""
    if images.shape[0] == 0:
        raise ValueError(f"every image of the batch at global step {state.global_step} was unreadable "
                         "(see the 'skipped bad sample' warnings); fix the training data")
    if images.shape[0] < state.batch_size:
        idx = torch.arange(state.batch_size) % images.shape[0]
        images, labels = images[idx], labels[idx]
    if state.degrade is not None:
        images = state.degrade(images, state.seed, state.rank, state.global_step)
    # The loader's pinned batch goes to the device as it is and is mirrored there: mirroring 10 MB of
    # uint8 on the host made an unpinned copy (a blocking transfer) and kept the GPU waiting each step.
    mask = flip_mask(state.seed, state.global_step, images.shape[0]).to(state.device, non_blocking=True)
    images = images.to(state.device, non_blocking=True)
    labels = labels.to(state.device, non_blocking=True)
    images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    x = to_model_input(images, state.convention)
    if state.faults is not None:
        x = state.faults.corrupt(x, state.global_step, state.rank)
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def _step_metrics(out: dict[str, torch.Tensor]) -> torch.Tensor:
    x = out["x_norm"].detach()
    return torch.stack([
        out["loss"].detach(), out["loss_id"].detach(), out["loss_g_weighted"].detach(),
        out["accuracy"].detach().float(), x.mean(), x.min(), x.max(), out["m_a"].detach().mean(),
    ]).float()


def sharded_grad_norm(replicated: list[nn.Parameter], sharded: list[nn.Parameter],
                      distributed: bool) -> Callable[[], torch.Tensor]:
    """The global gradient L2 norm when some parameters are split over the ranks (the class-sharded head).

    ``replicated`` gradients (the DDP backbone) are identical on every rank after DDP's all-reduce and
    count once; the squared norms of the ``sharded`` slices are summed over the ranks. Every rank gets
    the same value, so clipping scales every rank's gradients by the same factor.
    """
    def norm() -> torch.Tensor:
        own = get_total_norm([p.grad for p in replicated if p.grad is not None]).float()
        shard = get_total_norm([p.grad for p in sharded if p.grad is not None]).float().to(own.device)
        shard_sq = shard * shard
        if distributed:
            tdist.all_reduce(shard_sq, op=tdist.ReduceOp.SUM)
        return torch.sqrt(own * own + shard_sq)

    return norm


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


def optimizer_step(optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   params: list[nn.Parameter], state: LoopState) -> bool:
    """Unscale, agree on overflow, clip, step, update the scale; False when fp16 overflow skipped it."""
    skipped = False
    if scaler.is_enabled():
        for opt in optimizers:
            scaler.unscale_(opt)
        skipped = agree_on_overflow(scaler, optimizers, state.sync_overflow)
    if state.grad_clip > 0:
        norm = state.grad_norm_fn() if state.grad_norm_fn is not None else \
            get_total_norm([p.grad for p in params if p.grad is not None])
        clip_grads_with_norm_(params, state.grad_clip, norm)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return not skipped


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
    with autocast(state.device, state.amp_dtype):
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
    on_step_end: Callable[[int], bool] | None = None,
    bad_counter=None,
) -> dict[str, float]:
    """Run the steps of one epoch from ``first_step``; returns the epoch's mean metrics.

    ``on_step_end(step_in_epoch)`` runs after every step (periodic saves); it returns True to stop
    early (``--max-steps``). A step with a non-finite loss changes nothing: no update, and the
    BatchNorm statistics of its forward pass are put back.
    """
    log = get_logger()
    backbone.train()
    head.train()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    buffers = list(backbone.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    meters, speed, step = _Meters(state.device), Throughput(), first_step
    for images, labels, n_bad in batches:
        if bad_counter is not None:
            bad_counter.update(int(images.shape[0]), int(n_bad))
        if state.faults is not None:
            state.faults.at_step_start(state.global_step, state.rank)
        torch.manual_seed(step_seed(state.seed, state.rank, state.global_step))
        if state.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = prepare_batch(images, labels, state)
        lr = state.lr_fn(state.global_step)
        for group in (g for opt in optimizers for g in opt.param_groups):
            group["lr"] = lr
        out, emb, finite = _guarded_forward(backbone, head, x, y, buffers, saved_buffers, state)
        loss_value = 0.0 if finite else out["loss"].item()
        if state.guard.update(finite, loss_value, epoch, step + 1, state.global_step + 1):
            if state.hooks is not None:
                state.hooks.on_forward(epoch, step, emb, y, head)
            scaler.scale(out["loss"]).backward()
            optimizer_step(optimizers, scaler, params, state)
            meters.add(_step_metrics(out))
        speed.update(state.batch_size * state.world_size)
        step += 1
        state.global_step += 1
        if step % state.print_freq == 0 or step == state.steps_per_epoch:
            _log_window(log, tb, epoch, step, state, lr, meters.take_window(), speed.rate(), out)
            speed.reset()
        if state.hooks is not None:
            began = time.perf_counter()
            state.hooks.after_step(epoch, step, state.global_step)
            speed.skip(time.perf_counter() - began)
        stop = on_step_end(step) if on_step_end is not None else False
        if stop or step >= state.steps_per_epoch:
            break
    return meters.epoch_means()


def _log_window(log, tb: TensorBoard | None, epoch: int, step: int, state: LoopState, lr: float,
                mean: torch.Tensor, rate: float, out: dict[str, torch.Tensor]) -> None:
    m = dict(zip(METRICS, mean.tolist(), strict=True))
    remaining = state.total_steps - state.global_step
    eta = remaining * state.batch_size * state.world_size / max(rate, 1e-9)
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
