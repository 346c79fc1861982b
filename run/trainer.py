"""Training from a config to the last checkpoint, for train.py and train_dist.py alike: the data, the run's
parts (``run.build``), the step configuration, and the epoch loop around ``run.engine.train_one_epoch`` with what
happens between epochs (epoch checkpoints, last.pth, the stop reasons) and the failures it explains.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from dataloader import BadSampleCounter, EpochShuffleSampler, build_train_dataset, build_train_loader
from dataloader.augment import DegradeAugment, parse_kinds
from dataloader.builder import train_workers
from run.build import Run, build_run, data_fingerprint, maybe_resume, uses_cudagraphs
from run.config import TrainConfig
from run.engine import Progress, StepConfig, lr_at, train_one_epoch
from run.failures import WorkerDied, data_fault
from run.head_init import init_head_from_class_means
from run.optim import NonFiniteError, NonFiniteGuard, sharded_grad_norm
from run.preempt import PreemptWatch, ignore_in_worker, parse_signals, raise_preempted
from run.run_dir import RunLock, clear_checkpoints, refuse_overwrite, sweep_temporaries
from run.startup_signals import installed as startup_signals
from run.state import Position
from run.vis_mag import MagnitudeVisualizer
from utils.cli import one_line
from utils.convention import parse_convention
from utils.dist import DistInfo, broadcast_object
from utils.logger import TensorBoard, get_logger, setup_logger
from utils.precision import amp_dtype


def step_config(cfg: TrainConfig, run: Run, steps_per_epoch: int, per_rank: int, start_step: int) -> StepConfig:
    """The constants of every step of this run."""
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    distributed = run.dist.distributed
    return StepConfig(
        device=run.device, batch_size=per_rank, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        lr_fn=lambda s: lr_at(s, steps_per_epoch, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_drop_epoch,
                              cfg.lr_drop_ratio, cfg.warmup_epochs),
        seed=cfg.seed, rank=run.dist.rank, world_size=run.dist.world_size, distributed=distributed,
        convention=parse_convention(cfg.input_convention), channels_last=run.channels_last,
        degrade=DegradeAugment(cfg.degrade_prob, parse_kinds(cfg.degrade_kinds), cfg.degrade_max_severity)
        if cfg.degrade_prob > 0 else None,
        amp_dtype=amp_dtype(cfg.amp), cudagraph_steps=uses_cudagraphs(cfg, run.device), grad_clip=cfg.grad_clip,
        grad_norm_fn=sharded_grad_norm(list(run.backbone.parameters()), list(run.head.parameters()), True)
        if distributed else None,
        frozen=run.frozen,
        # progress at least every tenth of a short run (--print-freq 100 would print nothing in a 40-step run)
        print_freq=max(1, min(cfg.print_freq, (total_steps - start_step) // 10)),
        save_every_steps=cfg.save_every_steps, max_steps=cfg.max_steps, val_every=cfg.val_every,
    )


def monitors(run: Run, tb: TensorBoard | None, dtype: torch.dtype | None, resume_step: int | None):
    """The (visualizer, validator) pair that --vis_mag and --val-bin ask for; None for each one not asked for."""
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
                                  dtype=dtype or torch.float32, batch_size=cfg.val_batch_size,
                                  embedding_size=cfg.embedding_size)
        save_best = functools.partial(run.save_epoch, name="best.pth") if cfg.save_best else None
        validator = Validator(sets, run.out_dir, embed, dist.is_main, tb, save_best, resume_step)
    return visualizer, validator


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
    step_cfg = step_config(cfg, run, steps_per_epoch, per_rank, pos.global_step)
    progress = Progress(pos.global_step, NonFiniteGuard(cfg.max_nonfinite))
    log.info(f"training {cfg.arch} on {len(dataset)} images, {cfg.last_fc_size} classes, world size "
             f"{dist.world_size}, {per_rank}/rank x {steps_per_epoch} steps/epoch, device {run.device}, amp {cfg.amp}")
    tb = TensorBoard(out_dir / "tb", enabled=cfg.tensorboard and dist.is_main)
    bad = BadSampleCounter(cfg.max_bad_fraction) if cfg.skip_bad_images else None
    written: list[str] = []
    try:
        checks = monitors(run, tb, step_cfg.amp_dtype, pos.global_step if cfg.resume else None)
        if cfg.max_steps and progress.global_step >= cfg.max_steps:
            log.info(f"--max-steps {cfg.max_steps} already reached (global step {progress.global_step}); nothing to do")
        elif pos.epoch >= cfg.epochs:
            log.info(f"all {cfg.epochs} epochs already done; nothing to do")
        else:
            with PreemptWatch(signals) as watch:
                written = _epochs(run, loader, sampler, step_cfg, progress, pos, tb, bad, watch, *checks)
    finally:
        tb.close()
    return {"checkpoints": written, "global_step": progress.global_step, "out_dir": str(out_dir)}


def stop_workers(loader) -> None:
    """Shut a loader's (persistent) workers down now: torch's SIGCHLD handler otherwise raises its own error for
    the dead worker at a random later moment, e.g. while the one-line report of this failure is being written."""
    iterator = getattr(loader, "_iterator", None)  # private: the persistent workers' iterator, if any
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def _diverged(run: Run, progress: Progress, spe: int) -> None:
    """After NonFiniteError: the weights are those from before the first non-finite step; saved when sound, so that
    resume replays from there; weights that an update blew up (its loss was still finite) keep the last sound
    last.pth."""
    log, last = get_logger(), run.out_dir / "last.pth"
    g0 = progress.global_step - progress.guard.consecutive + 1
    if run.save_state(Position(g0 // spe, g0 % spe, g0)):
        log.error(f"state from before the divergence (after global step {g0}) saved to {last}")
    elif run.saved_step is not None:
        log.error(f"{last} keeps global step {run.saved_step}, the last sound state: --resume auto with a "
                  "lower --lr continues from it")
    else:
        log.error(f"no sound state to save: {last} was never written (--save-every-steps N keeps one)")


def _epochs(run: Run, loader, sampler, step_cfg: StepConfig, progress: Progress, pos: Position, tb: TensorBoard,
            bad, watch: PreemptWatch, visualizer, validator) -> list[str]:
    cfg, log, written, spe = run.cfg, get_logger(), [], step_cfg.steps_per_epoch
    for epoch in range(pos.epoch, cfg.epochs):
        first = pos.step_in_epoch if epoch == pos.epoch else 0
        sampler.set_epoch(epoch)
        sampler.set_start(first * step_cfg.batch_size)
        try:
            result = train_one_epoch(run.model, run.head, [run.opt_backbone, run.opt_head], run.scaler, loader,
                                     epoch, first, step_cfg, progress, tb, bad, visualizer, validator,
                                     run.save_state, watch)
        except NonFiniteError:
            _diverged(run, progress, spe)
            raise
        except (ValueError, RuntimeError, ConnectionResetError, EOFError) as error:
            fault = data_fault(error, epoch, progress.global_step, run.out_dir / "last.pth", run.saved_step)
            if fault is None:
                raise
            if isinstance(fault, WorkerDied):
                stop_workers(loader)
            raise fault from error
        stop, step_reached = result.stop, progress.global_step - epoch * spe
        done = step_reached >= spe
        log.info(f"epoch {epoch} {'done' if done else f'stopped at step {step_reached}'}: "
                 + " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        skipped = bad.end_epoch(epoch) if bad is not None else None
        if skipped is not None:
            log.warning(skipped)
        if done and ((epoch + 1) % cfg.pth_save_epoch == 0 or epoch + 1 == cfg.epochs) or stop.max_steps:
            # an epoch-named file only for a finished epoch; a --max-steps stop mid-epoch names its global step
            path = run.save_epoch(epoch + 1, None if done else f"step_{progress.global_step:08d}.pth")
            if path is not None:
                written.append(str(path))
                log.info(f"wrote {path}")
        if run.saved_step != progress.global_step:  # a signal during a --save-every-steps save: already written
            run.save_state(Position(epoch + 1, 0, progress.global_step) if done
                           else Position(epoch, step_reached, progress.global_step))
        if stop.signal is not None:
            raise_preempted(stop.signal.name, progress.global_step, run.out_dir / "last.pth", run.saved_step,
                            watch.repeats, requeue=cfg.slurm_requeue and run.dist.is_main)
        if stop.max_steps:
            log.info(f"--max-steps {cfg.max_steps} reached; resumable state in {run.out_dir / 'last.pth'}")
            break
    return written
