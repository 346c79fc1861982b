"""The one training loop, shared by train.py and train_dist.py.

``train_one_epoch`` is the same for every execution mode; only the wrapping of the backbone (plain,
DataParallel or DDP) and the head (dense or class-sharded) differ, and both are decided by the caller.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from utils.convention import MAGFACE, to_model_input
from utils.logger import TensorBoard, Throughput, format_eta, get_logger

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


class NonFiniteError(RuntimeError):
    pass


@dataclass
class NonFiniteGuard:
    """Skips steps whose loss is NaN/inf and aborts after ``limit`` consecutive ones."""

    limit: int = 20
    consecutive: int = 0
    total: int = 0

    def check(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        if bool(torch.isfinite(loss)):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        get_logger().warning(
            f"non-finite loss ({loss.item()}) at epoch {epoch} step {step}: step skipped "
            f"({self.consecutive} in a row, limit {self.limit})"
        )
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite losses up to epoch {epoch} step {step}: the run "
                "diverged. Weights were not updated by those steps; lower --lr, use --amp bf16 instead of "
                "fp16, set --grad-clip, or check the data."
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
    grad_clip: float = 0.0
    seed: int = 0
    print_freq: int = 100
    global_step: int = 0
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    grad_norm_fn: Callable[[], torch.Tensor] | None = None


def flip_mask(seed: int, step: int, n: int) -> torch.Tensor:
    """Which images of this step are mirrored: a pure function of (seed, step), so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, generator=g) < 0.5


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, state: LoopState) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad short batches (skipped bad images), mirror, move uint8 to the device, then normalise there."""
    if images.shape[0] < state.batch_size:
        idx = torch.arange(state.batch_size) % max(images.shape[0], 1)
        images, labels = images[idx], labels[idx]
    mask = flip_mask(state.seed, state.global_step, images.shape[0])
    images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    images = images.to(state.device, non_blocking=True)
    labels = labels.to(state.device, non_blocking=True)
    x = to_model_input(images, MAGFACE)
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def _autocast(state: LoopState) -> contextlib.AbstractContextManager:
    if state.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=state.device.type, dtype=state.amp_dtype)


def _step_metrics(out: dict[str, torch.Tensor], lambda_g: float) -> torch.Tensor:
    x = out["x_norm"].detach()
    return torch.stack([
        out["loss"].detach(), out["loss_id"].detach(), lambda_g * out["loss_g"].detach(),
        out["accuracy"].detach().float(), x.mean(), x.min(), x.max(), out["margin"].detach().mean(),
    ]).float()


def optimizer_step(optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   params: list[nn.Parameter], state: LoopState) -> None:
    if state.grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        norm = state.grad_norm_fn() if state.grad_norm_fn is not None else \
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        factor = (state.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, factor)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


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

    ``on_step_end(step_in_epoch)`` runs after every optimizer step (periodic saves); it returns True
    to stop early (``--max-steps``).
    """
    log = get_logger()
    backbone.train()
    head.train()
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    lambda_g = head.cfg.lambda_g
    window, epoch_sum, epoch_n = torch.zeros(len(METRICS)), torch.zeros(len(METRICS)), 0
    window_n, speed = 0, Throughput()
    step = first_step
    for batch in batches:
        images, labels, n_bad = batch
        if bad_counter is not None:
            bad_counter.update(int(images.shape[0]), int(n_bad))
        x, y = prepare_batch(images, labels, state)
        lr = state.lr_fn(state.global_step)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        with _autocast(state):
            emb = backbone(x)
        out = head(emb, y)
        if not state.guard.check(out["loss"], epoch, step):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        else:
            scaler.scale(out["loss"]).backward()
            optimizer_step(optimizers, scaler, params, state)
            metrics = _step_metrics(out, lambda_g).cpu()
            window += metrics
            epoch_sum += metrics
            window_n += 1
            epoch_n += 1
        speed.update(state.batch_size)
        step += 1
        state.global_step += 1
        if step % state.print_freq == 0 or step == state.steps_per_epoch:
            _log_window(log, tb, epoch, step, state, lr, window / max(window_n, 1), speed.rate(), out)
            window.zero_()
            window_n = 0
            speed.reset()
        stop = on_step_end(step) if on_step_end is not None else False
        if stop or step >= state.steps_per_epoch:
            break
    return dict(zip(METRICS, (epoch_sum / max(epoch_n, 1)).tolist(), strict=True))


def _log_window(log, tb: TensorBoard | None, epoch: int, step: int, state: LoopState, lr: float,
                mean: torch.Tensor, rate: float, out: dict[str, torch.Tensor]) -> None:
    m = dict(zip(METRICS, mean.tolist(), strict=True))
    remaining = state.total_steps - state.global_step
    eta = remaining * state.batch_size / max(rate, 1e-9)
    log.info(
        f"epoch {epoch} [{step}/{state.steps_per_epoch}] lr {lr:.5f} loss {m['loss']:.4f} "
        f"L_id {m['loss_id']:.4f} lambda_g*L_g {m['loss_g_weighted']:.4f} acc {m['accuracy'] * 100:.2f}% "
        f"mag {m['mag_mean']:.2f} [{m['mag_min']:.2f}, {m['mag_max']:.2f}] margin {m['margin']:.4f} "
        f"{rate:.1f} img/s ETA {format_eta(eta)}"
    )
    if tb is not None:
        tb.scalars({f"train/{k}": v for k, v in m.items()} | {"train/lr": lr, "train/img_per_s": rate},
                   state.global_step)
        tb.histogram("train/magnitude", out["x_norm"].detach().float().cpu(), state.global_step)
