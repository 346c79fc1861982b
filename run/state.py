"""Resumable training state (``last.pth``) on top of the released checkpoint layout.

``last.pth`` is a released-layout file (``state_dict`` with ``module.features.*`` and the full
``module.fc.weight``), so every tool reads it, plus what resuming needs: both optimizers (the head's
momentum gathered whole, so a run can resume at another world size), the GradScaler, the position in
the epoch and the RNG states. The head is always stored whole and re-sliced on load.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from models.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    backbone_state,
    head_weight,
    load_backbone_state,
    read_checkpoint,
    released_state_dict,
)
from models.magface import ClassWeightHead
from run.config import TrainConfig, config_differences
from utils.convention import parse_convention
from utils.dist import DistInfo, broadcast_object
from utils.logger import get_logger

KIND = "magface-resume"


@dataclass
class Position:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(state["python"])


def _head_momentum(opt_head: torch.optim.Optimizer, head: ClassWeightHead) -> torch.Tensor | None:
    return opt_head.state.get(head.weight, {}).get("momentum_buffer")


def save_training_state(path: str | Path, backbone: nn.Module, head: ClassWeightHead,
                        opt_backbone: torch.optim.Optimizer, opt_head: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, pos: Position, arch: str, config: dict, is_main: bool) -> None:
    """Collective when distributed (every rank calls it): the head's weight and momentum are gathered whole on
    rank 0, which writes the file atomically."""
    full_w = head.gather_full_weight(dst=0)
    mom = _head_momentum(opt_head, head)
    full_mom = None if mom is None else head.gather_rows(mom.float(), dst=0)
    if not is_main:
        return
    head_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt_head.state_dict()["param_groups"]]
    obj = {
        "epoch": pos.epoch,
        "arch": arch,
        "state_dict": released_state_dict(backbone, full_w),
        "optimizer": opt_backbone.state_dict(),
        "head_optimizer": {"param_groups": head_groups, "momentum": None if full_mom is None else full_mom.cpu()},
        "scaler": scaler.state_dict(),
        "position": {"epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch, "global_step": pos.global_step},
        "rng": rng_state(),
        "config": dict(config),
        "input_convention": parse_convention(config.get("input_convention", "magface")).to_dict(),
        "kind": KIND,
        "format_version": FORMAT_VERSION,
    }
    atomic_save(obj, path)


def load_training_state(path: str | Path, backbone: nn.Module, head: ClassWeightHead,
                        opt_backbone: torch.optim.Optimizer, opt_head: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, restore_rng: bool = True) -> tuple[Position, dict]:
    """Restore everything ``save_training_state`` wrote; returns the position and the saved config."""
    obj = read_checkpoint(path)
    if obj.get("kind") != KIND:
        raise ValueError(
            f"{path} is not a resumable training state (no 'kind': '{KIND}'); to start from its weights "
            "use --pretrained instead of --resume"
        )
    for key in ("position", "optimizer", "head_optimizer", "scaler", "config"):
        if key not in obj:
            raise ValueError(f"resume file {path} lacks the key '{key}'")
    load_backbone_state(backbone, backbone_state(obj, path), str(path))
    full_w = head_weight(obj)
    if full_w is None or full_w.shape != (head.num_classes, head.embedding_size):
        got = None if full_w is None else tuple(full_w.shape)
        raise ValueError(f"resume file {path}: head weight {got} does not fit "
                         f"[{head.num_classes}, {head.embedding_size}] (--last-fc-size / --embedding-size)")
    head.load_full_weight(full_w)
    opt_backbone.load_state_dict(obj["optimizer"])
    head_opt = obj["head_optimizer"]
    groups = [dict(g, params=[i]) for i, g in enumerate(head_opt["param_groups"])]
    state = {}
    if head_opt["momentum"] is not None:
        state[0] = {"momentum_buffer": head.local_rows(head_opt["momentum"])}
    opt_head.load_state_dict({"state": state, "param_groups": groups})
    if scaler.is_enabled() and obj["scaler"]:
        scaler.load_state_dict(obj["scaler"])
    if restore_rng:
        set_rng_state(obj["rng"])
    p = obj["position"]
    return Position(int(p["epoch"]), int(p["step_in_epoch"]), int(p["global_step"])), dict(obj["config"])


WEIGHT_LIMIT = 1e6  # a trained weight this large means an update exploded (iResNet / MobileFaceNet weights: < 100)


def unsound_tensors(backbone: nn.Module, head: ClassWeightHead, distributed: bool) -> tuple[int, int]:
    """(tensors that are non-finite or exceed WEIGHT_LIMIT, tensors checked): weights not worth saving.

    Collective when distributed: the head's rows are split over the ranks, so the flags are all-reduced (MAX);
    the backbone is the same on every rank. One pass over the weights, one host sync.
    """
    params = [p.detach() for p in (*backbone.parameters(), *head.parameters()) if p.numel()]
    buffers = [b.detach() for b in backbone.buffers() if b.is_floating_point() and b.numel()]
    # the largest |value| of each tensor in one fused pass (NaN propagates); "not <=" also catches NaN
    largest = torch.stack(torch._foreach_norm(params, ord=float("inf"))).float()
    flags = ~(largest <= WEIGHT_LIMIT)
    if buffers:
        flags = torch.cat([flags, ~torch.isfinite(torch.stack(torch._foreach_norm(buffers, ord=float("inf"))))])
    found = flags.to(torch.int32)
    if distributed:
        tdist.all_reduce(found, op=tdist.ReduceOp.MAX)
    return int(found.sum()), len(flags)


def resume_file(resume: str, out_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        candidate = out_dir / "last.pth"
        return candidate if candidate.is_file() else None
    return Path(resume)


def resume_training(cfg: TrainConfig, dist: DistInfo, backbone: nn.Module, head: ClassWeightHead,
                    opt_backbone: torch.optim.Optimizer, opt_head: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, steps_per_epoch: int, data: dict | None = None) -> Position | None:
    """Apply ``--resume`` (collective): None when there is nothing to resume, else the position. ``data``: this
    run's data fingerprint, compared with the checkpoint's.

    Rank 0 decides (``auto`` finds PTH_SAVE_FOLD/last.pth) and every rank loads the same file, so ranks
    cannot disagree about whether a job restarted by torchrun resumes. The global step is recounted from
    (epoch, step) with this run's steps per epoch, which differ when the world size changed.
    """
    log = get_logger()
    path = broadcast_object(resume_file(cfg.resume, Path(cfg.pth_save_fold)) if dist.is_main else None)
    if path is None:
        if cfg.resume == "auto":
            log.info("--resume auto: no last.pth yet, starting a new run")
        return None
    if dist.rank != 0 and not Path(path).is_file():
        raise FileNotFoundError(f"rank {dist.rank}: resume file {path} exists on rank 0 but not here; "
                                "--pth-save-fold must be on a filesystem that every node shares")
    pos, saved_cfg = load_training_state(path, backbone, head, opt_backbone, opt_head, scaler)
    bad, total = unsound_tensors(backbone, head, dist.distributed)
    if bad:
        raise ValueError(f"resume file {path}: {bad} of {total} weight tensors are non-finite or explode (written by a "
                         "diverged run); resume from an earlier checkpoint or start over (--overwrite)")
    for diff in config_differences(saved_cfg, cfg):
        log.warning(f"resume from {path}: hyper-parameter changed: {diff}")
    _warn_if_data_changed(path, saved_cfg.get("data"), data, log)
    epoch, step = pos.epoch, _step_at_new_batch(path, pos.step_in_epoch, saved_cfg, cfg.batch_size, log)
    if step >= steps_per_epoch:
        epoch, step = epoch + 1, 0
    resumed = Position(epoch, step, epoch * steps_per_epoch + step)
    if resumed.global_step != pos.global_step:
        log.warning(f"resume from {path}: global step {pos.global_step} recounted as {resumed.global_step} "
                    f"({steps_per_epoch} steps per epoch now); the learning-rate schedule follows the epochs")
    saved_world = saved_cfg.get("world_size")
    log.info(f"resumed from {path} at epoch {resumed.epoch} step {resumed.step_in_epoch} (global step "
             f"{resumed.global_step})" + (f"; world size {saved_world} -> {dist.world_size}" if saved_world else ""))
    return resumed


def _step_at_new_batch(path: Path, step: int, saved_cfg: dict, batch_size: int, log) -> int:
    """The step in the epoch at which this run's batch size reaches the sample the checkpoint's run stopped at."""
    saved = saved_cfg.get("batch_size")  # the total batch of the run that wrote the position
    if not saved or saved == batch_size:
        return step
    sample = step * saved
    new_step = sample // batch_size
    replay = sample - new_step * batch_size
    log.warning(f"resume from {path}: --batch-size {saved} -> {batch_size}: the epoch goes on from its sample {sample} "
                f"(step {new_step} at the new size" + (f"; {replay} samples per epoch position are replayed)"
                                                       if replay else ")"))
    return new_step


def _warn_if_data_changed(path: Path, saved: dict | None, now: dict | None, log) -> None:
    """A warning that says what happens when the training data differs from the checkpoint's (same path, new
    content included): the rest of the epoch is no exact continuation."""
    if not saved or not now or saved == now:
        return
    what = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in ("source", "images") if saved.get(k) != now.get(k)]
    if saved.get("sha256") != now.get("sha256"):
        what.append("its content changed (sha256)")
    log.warning(f"resume from {path}: the training data changed since the checkpoint ({'; '.join(what)}): the rest of "
                "this epoch follows the new data's shuffled order, so some of its images are seen twice and others "
                "not at all this epoch; later epochs are whole. Start over (--overwrite) for an exact run")
