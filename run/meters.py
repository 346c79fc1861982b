"""The training loop's step metrics: summed on the device, averaged per log window and per epoch, and the
progress line (and TensorBoard scalars) each window prints."""
from __future__ import annotations

import logging

import torch

from utils.logger import TensorBoard, format_eta

METRICS = ("loss", "loss_id", "loss_g_weighted", "accuracy", "mag_mean", "mag_min", "mag_max", "margin")


def step_metrics(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """One step's METRICS from the head's output, as one fp32 tensor on its device."""
    x = out["x_norm"].detach()
    return torch.stack([
        out["loss"].detach(), out["loss_id"].detach(), out["loss_g_weighted"].detach(),
        out["accuracy"].detach().float(), x.mean(), x.min(), x.max(), out["m_a"].detach().mean(),
    ]).float()


class Meters:
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


def log_window(log: logging.Logger, tb: TensorBoard | None, epoch: int, step: int, steps_per_epoch: int,
               global_step: int, lr: float, mean: torch.Tensor, rate: float, images_left: int,
               out: dict[str, torch.Tensor]) -> None:
    """The progress line of a log window (its mean metrics, img/s and the ETA of ``images_left``)."""
    m = dict(zip(METRICS, mean.tolist(), strict=True))
    eta = images_left / max(rate, 1e-9)
    log.info(
        f"epoch {epoch} [{step}/{steps_per_epoch}] global step {global_step} lr {lr:.5f} "
        f"loss {m['loss']:.4f} L_id {m['loss_id']:.4f} lambda_g*L_g {m['loss_g_weighted']:.4f} "
        f"acc {m['accuracy'] * 100:.2f}% mag {m['mag_mean']:.2f} [{m['mag_min']:.2f}, {m['mag_max']:.2f}] "
        f"margin {m['margin']:.4f} {rate:.1f} img/s ETA {format_eta(eta)}"
    )
    if tb is not None:
        tb.scalars({f"train/{k}": v for k, v in m.items()} | {"train/lr": lr, "train/img_per_s": rate}, global_step)
        tb.histogram("train/magnitude", out["x_norm"].detach().float().cpu(), global_step)
