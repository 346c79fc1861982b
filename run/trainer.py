"""Set-up shared by train.py and train_dist.py: data, model, head, optimizers, resume, epochs, saves.

The only difference between the entry points is ``dist`` (a DistInfo with world_size 1 for the
single-process trainer) and hence how the backbone is wrapped (DataParallel or DDP) and which head
is built (dense MagFaceHead or the class-sharded one).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dataloader import BadSampleCounter, EpochShuffleSampler, build_train_dataset, build_train_loader
from dataloader.augment import DegradeAugment, parse_kinds
from dataloader.builder import train_workers
from models import ClassWeightHead, MagFaceHead, build_backbone
from models.checkpoint import backbone_state, load_backbone_state, read_checkpoint, save_released
from models.fused import ChunkedMagFaceHead
from models.sharded import ShardedMagFaceHead
from run.config import TrainConfig
from run.engine import BatchPrep, LoopState, Stop, lr_at, train_one_epoch
from run.failures import WorkerDied, data_fault, shared_save
from run.faults import Faults
from run.head_init import freeze, frozen_modules, init_head_from_class_means
from run.hooks import build_hooks
from run.optim import NonFiniteError, NonFiniteGuard, StepPolicy, sharded_grad_norm
from run.preempt import PreemptWatch, ignore_in_worker, parse_signals, raise_preempted
from run.run_dir import RunLock, clear_checkpoints, refuse_overwrite, sweep_temporaries
from run.startup_signals import installed as startup_signals
from run.state import Position, resume_file, resume_training, save_training_state, unsound_tensors
from utils.cli import one_line
from utils.convention import parse_convention
from utils.dist import DistInfo, broadcast_object, resolve_device
from utils.logger import TensorBoard, get_logger, setup_logger
from utils.precision import amp_dtype


def build_head(cfg: TrainConfig, dist: DistInfo, device: torch.device) -> ClassWeightHead:
    """The dense, fused or class-sharded head; its initial rows depend on --seed only, not on the world size."""
    config, dim, classes = cfg.head_config(), cfg.embedding_size, cfg.last_fc_size
    if dist.distributed and cfg.head_impl != "dense":
        raise ValueError(f"--head-impl {cfg.head_impl} is for single-process training; the distributed trainer's "
                         "class-sharded head already fuses the margin and the cross-entropy")
    if dist.distributed:
        head = ShardedMagFaceHead(dim, classes, dist.rank, dist.world_size, config, init_seed=cfg.seed)
    elif cfg.head_impl == "fused":
        head = ChunkedMagFaceHead(dim, classes, config, chunk=cfg.head_chunk, init_seed=cfg.seed)
    else:
        head = MagFaceHead(dim, classes, config, init_seed=cfg.seed)
    return head.to(device)


@dataclass
class Run:
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


def _loop_state(cfg: TrainConfig, run: Run, steps_per_epoch: int, per_rank: int, pos: Position) -> LoopState:
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    # progress at least every tenth of a short run (--print-freq 100 would print nothing in a 40-step run)
    print_freq = max(1, min(cfg.print_freq, (total_steps - pos.global_step) // 10))
    distributed = run.dist.distributed
    grad_norm = sharded_grad_norm(list(run.backbone.parameters()), list(run.head.parameters()), True) \
        if distributed else None
    prep = BatchPrep(
        device=run.device, batch_size=per_rank, seed=cfg.seed, rank=run.dist.rank,
        convention=parse_convention(cfg.input_convention), channels_last=run.channels_last,
        degrade=DegradeAugment(cfg.degrade_prob, parse_kinds(cfg.degrade_kinds), cfg.degrade_max_severity)
        if cfg.degrade_prob > 0 else None,
        faults=Faults.from_env(),
    )
    return LoopState(
        prep=prep, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        lr_fn=lambda s: lr_at(s, steps_per_epoch, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_drop_epoch,
                              cfg.lr_drop_ratio, cfg.warmup_epochs),
        policy=StepPolicy(grad_clip=cfg.grad_clip, grad_norm_fn=grad_norm, sync_overflow=distributed),
        amp_dtype=amp_dtype(cfg.amp), cudagraph_steps=uses_cudagraphs(cfg, run.device),
        world_size=run.dist.world_size, print_freq=print_freq,
        global_step=pos.global_step, guard=NonFiniteGuard(cfg.max_nonfinite), frozen=run.frozen,
    )


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


def _claim_folder(cfg: TrainConfig, dist: DistInfo, stack: contextlib.ExitStack) -> list:
    """Rank 0 locks PTH_SAVE_FOLD for the run and refuses to overwrite a previous run's files; every rank gets
    the verdict. Returns the previous run's checkpoints that --overwrite deleted."""
    problem, cleared = None, []
    if dist.is_main:
        try:
            stack.enter_context(RunLock(cfg.pth_save_fold))
            refuse_overwrite(cfg.pth_save_fold, cfg.resume, cfg.overwrite)
            if cfg.overwrite and not cfg.resume:
                cleared = clear_checkpoints(cfg.pth_save_fold)
        except (ValueError, OSError) as error:
            problem = one_line(error)
            if not dist.distributed:
                raise
    problem = broadcast_object(problem) if dist.distributed else problem
    if problem is not None:
        raise ValueError(problem)
    return cleared


def train(cfg: TrainConfig, dist: DistInfo) -> dict:
    """Train to the end (or --max-steps); returns a summary with the paths written."""
    signals = parse_signals(cfg.preempt_signals)
    with startup_signals(signals), contextlib.ExitStack() as stack:
        cleared = _claim_folder(cfg, dist, stack)
        log = setup_logger(Path(cfg.pth_save_fold) / "train.log", dist.rank)
        if cleared:
            log.warning(f"--overwrite: deleted the previous run's {', '.join(p.name for p in cleared)}")
        if dist.is_main:
            for stale in sweep_temporaries(cfg.pth_save_fold):
                log.warning(f"removed {stale}: a partial file left by an interrupted write")
        return _train(cfg, dist, signals)


def _train(cfg: TrainConfig, dist: DistInfo, signals) -> dict:
    out_dir, log = Path(cfg.pth_save_fold), get_logger()
    if cfg.workers < 0:
        cfg.workers = train_workers(int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)))
        log.info(f"--workers -1: {cfg.workers} loader workers per rank (from the usable cores)")
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} (total) is not divisible by the world size {dist.world_size}")
    per_rank = cfg.batch_size // dist.world_size
    dataset = build_train_dataset(train_list=cfg.train_list or None, rec=cfg.rec or None,
                                  synthetic=cfg.synthetic or None, num_classes=cfg.last_fc_size,
                                  skip_bad=cfg.skip_bad_images)
    sampler = EpochShuffleSampler(len(dataset), dist.world_size, dist.rank, shuffle=True, seed=cfg.seed)
    steps_per_epoch = sampler.per_rank // per_rank
    if steps_per_epoch == 0:
        raise ValueError(f"the data has {len(dataset)} images, fewer than one batch of {cfg.batch_size}")
    run = build_run(cfg, dist)
    run.data = data_fingerprint(cfg, dataset)
    loader = build_train_loader(dataset, per_rank, cfg.workers, sampler, pin_memory=run.device.type == "cuda",
                                worker_init_fn=functools.partial(ignore_in_worker, signals) if signals else None)
    pos = maybe_resume(run, steps_per_epoch)
    if cfg.head_init == "class-means" and run.saved_step is None:  # a resumed run has its trained head already
        init_head_from_class_means(run.head, run.backbone, dataset, dist, run.device,
                                   parse_convention(cfg.input_convention), batch_size=per_rank, workers=cfg.workers)
    if dist.is_main:
        cfg.save_json(out_dir / "config.json", world_size=dist.world_size, data=run.data)
    state = _loop_state(cfg, run, steps_per_epoch, per_rank, pos)
    log.info(f"training {cfg.arch} on {len(dataset)} images, {cfg.last_fc_size} classes, world size "
             f"{dist.world_size}, {per_rank}/rank x {steps_per_epoch} steps/epoch, device {run.device}, amp {cfg.amp}")
    if state.prep.faults is not None:
        log.warning(f"fault injection active (test hooks): {state.prep.faults}")
    tb = TensorBoard(out_dir / "tb", enabled=cfg.tensorboard and dist.is_main)
    bad = BadSampleCounter(cfg.max_bad_fraction) if cfg.skip_bad_images else None
    written: list[str] = []
    try:
        state.hooks = build_hooks(run, steps_per_epoch, tb, state.amp_dtype, pos.global_step if cfg.resume else None)
        if cfg.max_steps and state.global_step >= cfg.max_steps:
            log.info(f"--max-steps {cfg.max_steps} already reached (global step {state.global_step}); nothing to do")
        elif pos.epoch >= cfg.epochs:
            log.info(f"all {cfg.epochs} epochs already done; nothing to do")
        else:
            with PreemptWatch(signals) as watch:
                written = _epochs(run, loader, sampler, state, pos, tb, bad, per_rank, watch)
    finally:
        tb.close()
    return {"checkpoints": written, "global_step": state.global_step, "out_dir": str(out_dir)}


def stop_workers(loader) -> None:
    """Shut a loader's (persistent) workers down now: torch's SIGCHLD handler otherwise raises its own error for
    the dead worker at a random later moment, e.g. while the one-line report of this failure is being written."""
    iterator = getattr(loader, "_iterator", None)  # private: the persistent workers' iterator, if any
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def _epochs(run: Run, loader, sampler, state: LoopState, pos: Position, tb: TensorBoard, bad,
            per_rank: int, watch: PreemptWatch) -> list[str]:
    cfg, log, written, spe = run.cfg, get_logger(), [], state.steps_per_epoch
    for epoch in range(pos.epoch, cfg.epochs):
        first = pos.step_in_epoch if epoch == pos.epoch else 0
        sampler.set_epoch(epoch)
        sampler.set_start(first * per_rank)

        def on_step_end(step: int, epoch: int = epoch) -> Stop:
            if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0 and step < spe:
                run.save_state(Position(epoch, step, state.global_step))
            # the signal check is collective: every rank makes it after every step and stops after the same one
            return Stop(max_steps=bool(cfg.max_steps) and state.global_step >= cfg.max_steps,
                        signal=watch.agreed(run.device, run.dist.distributed))

        try:
            result = train_one_epoch(run.model, run.head, [run.opt_backbone, run.opt_head], run.scaler, loader,
                                     epoch, first, state, tb, on_step_end, bad)
        except NonFiniteError:
            # The weights are those from before the first non-finite step: saved when sound, so that resume replays
            # from there; weights that an update blew up (its loss was still finite) keep the last sound last.pth.
            g0 = state.global_step - state.guard.consecutive + 1
            last = run.out_dir / "last.pth"
            if run.save_state(Position(g0 // spe, g0 % spe, g0)):
                log.error(f"state from before the divergence (after global step {g0}) saved to {last}")
            elif run.saved_step is not None:
                log.error(f"{last} keeps global step {run.saved_step}, the last sound state: --resume auto with a "
                          "lower --lr continues from it")
            else:
                log.error(f"no sound state to save: {last} was never written (--save-every-steps N keeps one)")
            raise
        except (ValueError, RuntimeError, ConnectionResetError, EOFError) as error:
            fault = data_fault(error, epoch, state.global_step, run.out_dir / "last.pth", run.saved_step)
            if fault is None:
                raise
            if isinstance(fault, WorkerDied):
                stop_workers(loader)
            raise fault from error
        stop = result.stop
        step_reached = state.global_step - epoch * spe
        done = step_reached >= spe
        log.info(f"epoch {epoch} {'done' if done else f'stopped at step {step_reached}'}: "
                 + " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        skipped = bad.end_epoch(epoch) if bad is not None else None
        if skipped is not None:
            log.warning(skipped)
        if done and ((epoch + 1) % cfg.pth_save_epoch == 0 or epoch + 1 == cfg.epochs) or stop.max_steps:
            # an epoch-named file only for a finished epoch; a --max-steps stop mid-epoch names its global step
            path = run.save_epoch(epoch + 1, None if done else f"step_{state.global_step:08d}.pth")
            if path is not None:
                written.append(str(path))
                log.info(f"wrote {path}")
        if run.saved_step != state.global_step:  # a signal during a --save-every-steps save: already written
            run.save_state(Position(epoch + 1, 0, state.global_step) if done else Position(epoch, step_reached,
                                                                                          state.global_step))
        if stop.signal is not None:
            raise_preempted(stop.signal.name, state.global_step, run.out_dir / "last.pth", run.saved_step,
                            watch.repeats, requeue=cfg.slurm_requeue and run.dist.is_main)
        if stop.max_steps:
            log.info(f"--max-steps {cfg.max_steps} reached; resumable state in {run.out_dir / 'last.pth'}")
            break
    return written
