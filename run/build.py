"""The run's parts, built from the config: backbone (wrapped for DataParallel, DDP or torch.compile), head,
optimizers, scaler, and the run's checkpoints (``Run.save_state`` / ``Run.save_epoch``, collective), resume included.

The only difference between the entry points is ``dist`` (a DistInfo with world_size 1 for the single-process
trainer) and hence how the backbone is wrapped (DataParallel or DDP) and which head is built (dense MagFaceHead or
the class-sharded one).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import ClassWeightHead, MagFaceHead, build_backbone
from models.checkpoint import backbone_state, load_backbone_state, read_checkpoint, save_released
from models.fused import ChunkedMagFaceHead
from models.sharded import ShardedMagFaceHead
from run.config import TrainConfig
from run.failures import shared_save
from run.head_init import freeze, frozen_modules
from run.state import Position, resume_file, resume_training, save_training_state, unsound_tensors
from utils.convention import parse_convention
from utils.dist import DistInfo, resolve_device
from utils.logger import get_logger


def build_head(cfg: TrainConfig, dist: DistInfo, device: torch.device) -> ClassWeightHead:
    """The dense, fused or class-sharded head; its initial rows depend on --seed only, not on the world size.

    --sample-rate below 1 takes the class-sharded head in one process too (one shard): only it samples."""
    config, dim, classes = cfg.head_config(), cfg.embedding_size, cfg.last_fc_size
    if dist.distributed and cfg.head_impl != "dense":
        raise ValueError(f"--head-impl {cfg.head_impl} is for single-process training; the distributed trainer's "
                         "class-sharded head already fuses the margin and the cross-entropy")
    if dist.distributed or cfg.sample_rate < 1.0:
        head = ShardedMagFaceHead(dim, classes, dist.rank, dist.world_size, config, init_seed=cfg.seed,
                                  sample_rate=cfg.sample_rate)
    elif cfg.head_impl == "fused":
        head = ChunkedMagFaceHead(dim, classes, config, chunk=cfg.head_chunk, init_seed=cfg.seed)
    else:
        head = MagFaceHead(dim, classes, config, init_seed=cfg.seed)
    return head.to(device)


@dataclass
class Run:
    """One training run's parts and the step of its last written last.pth."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    backbone: nn.Module
    model: nn.Module
    head: ClassWeightHead
    opt_backbone: torch.optim.Optimizer
    opt_head: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    out_dir: Path
    channels_last: bool
    frozen: tuple[nn.Module, ...] = ()  # --freeze-depth
    saved_step: int | None = None  # global step of the last last.pth this run wrote or resumed from
    data: dict | None = None  # the training data's fingerprint (data_fingerprint), kept in every checkpoint

    @property
    def config(self) -> dict:
        """The resolved config as stored in checkpoints, with the world size it ran at and the data's fingerprint."""
        return self.cfg.to_dict() | {"world_size": self.dist.world_size, "data": self.data}

    def unsound(self) -> str | None:
        """Collective: why the weights must not be saved (non-finite or exploded tensors), or None."""
        bad, total = unsound_tensors(self.backbone, self.head, self.dist.distributed)
        return f"{bad} of {total} weight tensors are non-finite or explode" if bad else None

    def save_state(self, pos: Position) -> bool:
        """Collective: every rank calls it; rank 0 writes last.pth (--on-save-error when it cannot). Weights that are
        not finite are never written: last.pth keeps the last sound state. True when written."""
        path = self.out_dir / "last.pth"
        problem = self.unsound()
        if problem is not None:
            kept = f"global step {self.saved_step}" if self.saved_step is not None else "nothing (none was written)"
            get_logger().warning(f"{path} not written at global step {pos.global_step}: {problem}; it keeps {kept}")
            return False

        def write() -> None:
            save_training_state(path, self.backbone, self.head, self.opt_backbone, self.opt_head, self.scaler, pos,
                                self.cfg.arch, self.config, self.dist.is_main)

        if shared_save(write, path, self.cfg.on_save_error, self.dist.distributed):
            self.saved_step = pos.global_step
            return True
        return False

    def save_epoch(self, epoch_done: int, name: str | None = None) -> Path | None:
        """Collective: the released layout with the whole [D, C] head, written by rank 0 (as ``name``); None if
        refused."""
        path = self.out_dir / (name or f"{epoch_done:05d}.pth")

        def write() -> None:
            full = self.head.gather_full_weight(dst=0)
            if self.dist.is_main:
                save_released(path, self.backbone, full, epoch_done, self.cfg.arch, self.opt_backbone.state_dict(),
                              self.config, parse_convention(self.cfg.input_convention))

        return path if shared_save(write, path, self.cfg.on_save_error, self.dist.distributed) else None


def _wrap(backbone: nn.Module, cfg: TrainConfig, dist: DistInfo, device: torch.device) -> nn.Module:
    model = backbone
    if dist.distributed:
        ids = [device.index] if device.type == "cuda" else None
        with warnings.catch_warnings():
            # BN statistics stay per rank, as in the seed; newer torch renames the flag.
            warnings.simplefilter("ignore", FutureWarning)
            model = nn.parallel.DistributedDataParallel(backbone, device_ids=ids, broadcast_buffers=False)
    elif device.type == "cuda" and torch.cuda.device_count() > 1:
        model = nn.DataParallel(backbone)
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    if use_compile:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return model


def uses_cudagraphs(cfg: TrainConfig, device: torch.device) -> bool:
    """The compiled backbone replays CUDA graphs: each step must be marked (their outputs are reused)."""
    compiled = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    return compiled and device.type == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")


def build_run(cfg: TrainConfig, dist: DistInfo) -> Run:
    pretrained = read_checkpoint(cfg.pretrained) if cfg.pretrained else None  # read once: weights and convention
    cfg.resolve_input_convention(resume_file(cfg.resume, Path(cfg.pth_save_fold)), pretrained)  # 'auto' -> a name
    device = resolve_device(cfg.device, dist.local_rank)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    backbone = build_backbone(cfg.arch, cfg.embedding_size, cfg.dropout, cfg.input_size).to(device)
    if pretrained is not None:
        load_backbone_state(backbone, backbone_state(pretrained, cfg.pretrained), cfg.pretrained)
        get_logger().info(f"backbone initialised from {cfg.pretrained}")
    frozen = tuple(frozen_modules(backbone, cfg.freeze_depth)) if cfg.freeze_depth else ()
    if frozen:
        count = freeze(list(frozen))
        get_logger().info(f"--freeze-depth {cfg.freeze_depth}: {count} backbone parameters fixed, "
                          f"{sum(p.numel() for p in backbone.parameters() if p.requires_grad)} train")
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = build_head(cfg, dist, device)
    sgd = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    opt_backbone = torch.optim.SGD([{"params": trainable, "lr_scale": cfg.backbone_lr_mult}], **sgd)
    opt_head = torch.optim.SGD(head.parameters(), **sgd)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    model = _wrap(backbone, cfg, dist, device)
    return Run(cfg, dist, device, backbone, model, head, opt_backbone, opt_head, scaler, Path(cfg.pth_save_fold),
               channels_last, frozen)


def maybe_resume(run: Run, steps_per_epoch: int) -> Position:
    """Restore last.pth when --resume asks for it (collective); else the start position."""
    pos = resume_training(run.cfg, run.dist, run.backbone, run.head, run.opt_backbone, run.opt_head, run.scaler,
                          steps_per_epoch, run.data)
    if pos is not None:
        run.saved_step = pos.global_step
    return pos if pos is not None else Position(run.cfg.start_epoch, 0, run.cfg.start_epoch * steps_per_epoch)


def data_fingerprint(cfg: TrainConfig, dataset) -> dict:
    """What identifies the training data: its source, size and the sha256 of the list (or .idx) file, so that a
    resumed run can tell when the data changed under the same path."""
    source = cfg.train_list or cfg.rec or f"synthetic {cfg.synthetic}"
    index = cfg.train_list or getattr(dataset, "idx_path", None)
    digest = None
    if index:
        h = hashlib.sha256()
        with open(index, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"source": str(source), "images": len(dataset), "sha256": digest}
