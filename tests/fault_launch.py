"""Fault injection for the reliability tests, installed from outside the production code.

    python -m tests.fault_launch run.train ARGS...              # in place of python -m run.train ARGS...
    torchrun ... -m tests.fault_launch run.train_dist ARGS...   # in place of torchrun ... -m run.train_dist

runs the entry point's command with the faults that ``MAGFACE_FAULT_*`` variables ask for; in-process tests get
the same from ``training_faults()`` (the ``fault_injection`` fixture). The faults are real: the training loader
is wrapped (it knows which global step each batch is for), the backbone gets a forward pre-hook, and ``os.fsync``
is wrapped inside ``utils.atomic``'s writes. Step N is the step that follows the progress line "global step N"
(N steps done before it; the first step is 0).

- ``MAGFACE_FAULT_EXIT_STEP=N``: at the start of step N the process dies at once (``os._exit``, no
  cleanup, like a segfault or an OOM kill), exit code ``MAGFACE_FAULT_EXIT_CODE`` (default 13).
- ``MAGFACE_FAULT_HANG_STEP=N``: at the start of step N the process sleeps ``MAGFACE_FAULT_HANG_S``
  seconds (default 3600) before its first collective of the step: the other ranks wait in it.
- ``MAGFACE_FAULT_NAN_STEPS=N,M-K``: the input images of those steps become NaN in the training forward pass
  (and so the loss), as in a diverging run.
- ``MAGFACE_FAULT_SIGNAL_STEP=N``: at the start of step N send ``MAGFACE_FAULT_SIGNAL`` (default SIGTERM)
  to ``MAGFACE_FAULT_SIGNAL_TO``: ``self`` (default: this process and its DataLoader workers, as a
  scheduler signalling every process of a job) or ``launcher`` (the parent process: torchrun's agent,
  which forwards it to every worker).
- ``MAGFACE_FAULT_KILL_WORKERS_STEP=N``: at the start of step N SIGKILL this process's DataLoader
  workers, as the kernel's out-of-memory killer would.
- ``MAGFACE_FAULT_WRITE=ACTION:NAME``: inside every atomic write of a file called NAME (any file if NAME is
  empty), once its data is in the temporary file and before fsync and rename: ACTION is an errno name (ENOSPC,
  EDQUOT, EROFS) to raise that OSError, or a signal name (SIGTERM, SIGKILL...) to send to this process.
- ``MAGFACE_FAULT_RANK=R``: apply the step faults on rank R only (default: every rank).

Exit, hang, signal and kill act on a job's first attempt only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so a
job restarted by ``torchrun --max-restarts`` runs clean and can show that it recovers.
"""
from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from unittest import mock

PREFIX = "MAGFACE_FAULT_"
WRITE_ENV = PREFIX + "WRITE"


def _parse_steps(text: str) -> frozenset[int]:
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            steps.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"{PREFIX}NAN_STEPS: {part!r} is not a step or a range N-M") from None
    return frozenset(steps)


def _int(env: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = env.get(PREFIX + key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{key}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Faults:
    """The step faults of one training run, read from the environment when its loader is built."""

    exit_step: int | None = None
    exit_code: int = 13
    hang_step: int | None = None
    hang_s: float = 3600.0
    nan_steps: frozenset[int] = frozenset()
    rank: int | None = None
    first_attempt: bool = True
    signal_step: int | None = None
    signal: str = "SIGTERM"
    signal_to: str = "self"
    kill_workers_step: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Faults | None:
        """None unless some MAGFACE_FAULT_* variable other than the write fault is set."""
        env = os.environ if env is None else env
        if not any(k.startswith(PREFIX) and k != WRITE_ENV for k in env):
            return None
        return cls(
            exit_step=_int(env, "EXIT_STEP", None), exit_code=_int(env, "EXIT_CODE", 13),
            hang_step=_int(env, "HANG_STEP", None), hang_s=float(_int(env, "HANG_S", 3600)),
            nan_steps=_parse_steps(env.get(PREFIX + "NAN_STEPS", "")), rank=_int(env, "RANK", None),
            first_attempt=env.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0"),
            signal_step=_int(env, "SIGNAL_STEP", None), signal=env.get(PREFIX + "SIGNAL", "SIGTERM"),
            signal_to=env.get(PREFIX + "SIGNAL_TO", "self"), kill_workers_step=_int(env, "KILL_WORKERS_STEP", None),
        )

    def mine(self, rank: int) -> bool:
        return self.rank is None or self.rank == rank

    def at_step_start(self, step: int, rank: int) -> None:
        """Die, hang, signal or kill the loader workers here if told to (first attempt only)."""
        if not (self.mine(rank) and self.first_attempt):
            return
        if step == self.exit_step:
            print(f"[fault injection] rank {rank}: exiting hard at step {step}", flush=True)
            os._exit(self.exit_code)
        if step == self.hang_step:
            print(f"[fault injection] rank {rank}: hanging {self.hang_s:.0f} s at step {step}", flush=True)
            time.sleep(self.hang_s)
        if step == self.signal_step:
            self._send_signal(step, rank)
        if step == self.kill_workers_step:
            for child in multiprocessing.active_children():
                print(f"[fault injection] rank {rank}: SIGKILL to loader worker {child.pid} at step {step}", flush=True)
                os.kill(child.pid, signal.SIGKILL)

    def _send_signal(self, step: int, rank: int) -> None:
        sig = signal.Signals[self.signal]
        if self.signal_to == "launcher":
            targets = [os.getppid()]
        else:
            targets = [child.pid for child in multiprocessing.active_children()] + [os.getpid()]
        print(f"[fault injection] rank {rank}: {sig.name} to {self.signal_to} at step {step}", flush=True)
        for pid in targets:
            os.kill(pid, sig)


class _StepClock:
    """The global step the training loader's latest batch is for (None before the first)."""

    step: int | None = None


class FaultyLoader:
    """The training DataLoader, acting out the step faults just before it hands over each step's batch (where the
    loop starts the step); everything else (``_iterator``, ``sampler``...) is the loader's own."""

    def __init__(self, loader, faults: Faults, rank: int, clock: _StepClock) -> None:
        self._loader, self._faults, self._rank, self._clock = loader, faults, rank, clock

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator:
        sampler, per_rank = self._loader.sampler, self._loader.batch_size
        step = sampler.epoch * (sampler.per_rank // per_rank) + sampler.start // per_rank
        for batch in self._loader:
            self._clock.step = step
            self._faults.at_step_start(step, self._rank)
            yield batch
            step += 1


def _nan_input_hook(faults: Faults, rank: int, clock: _StepClock):
    def hook(module, args):
        if module.training and clock.step in faults.nan_steps and faults.mine(rank):
            import torch

            return (torch.full_like(args[0], float("nan")), *args[1:])
        return None

    return hook


def _atomic_target(fd: int) -> tuple[str, str] | None:
    """(folder, NAME) when ``fd`` is a temporary file of ``utils.atomic.atomic_write`` for NAME, else None."""
    from utils import atomic

    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    folder, base = os.path.split(link)
    found = re.fullmatch(rf"\.(.+)\.{re.escape(atomic._HOST)}-\d+\.[^.]+\.tmp", base)
    return (folder, found.group(1)) if found else None


@contextlib.contextmanager
def write_faults() -> Iterator[None]:
    """``MAGFACE_FAULT_WRITE`` (read at each write): the fault strikes in the fsync of the temporary file."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        action, _, name = os.environ.get(WRITE_ENV, "").partition(":")
        target = _atomic_target(fd) if action else None
        if target is not None and (not name or name == target[1]):
            if action.startswith("SIG"):
                os.kill(os.getpid(), signal.Signals[action])
            else:
                code = getattr(errno, action)
                raise OSError(code, f"[fault injection] {os.strerror(code)}", os.path.join(*target))
        real_fsync(fd)

    with mock.patch.object(os, "fsync", fsync):
        yield


@contextlib.contextmanager
def training_faults() -> Iterator[None]:
    """The step faults (read from the environment when a run builds its loader) and the write fault."""
    import run.build
    import run.trainer

    clock = _StepClock()
    rank = int(os.environ.get("RANK", "0"))
    real_loader, real_backbone = run.trainer.build_train_loader, run.build.build_backbone

    def build_train_loader(*args, **kwargs):
        loader = real_loader(*args, **kwargs)
        faults = Faults.from_env()
        if faults is None:
            return loader
        print(f"[fault injection] rank {rank}: {faults}", flush=True)
        return FaultyLoader(loader, faults, rank, clock)

    def build_backbone(*args, **kwargs):
        backbone = real_backbone(*args, **kwargs)
        faults = Faults.from_env()
        if faults is not None and faults.nan_steps:
            backbone.register_forward_pre_hook(_nan_input_hook(faults, rank, clock))
        return backbone

    with mock.patch.object(run.trainer, "build_train_loader", build_train_loader), \
            mock.patch.object(run.build, "build_backbone", build_backbone), write_faults():
        yield


if __name__ == "__main__":
    from run import startup_signals

    startup_signals.install()  # first, as the entry points do: a preemption signal from here on exits 75
    import importlib

    from utils.dist import exit_process

    entry = importlib.import_module(sys.argv.pop(1))  # run.train or run.train_dist
    with training_faults():
        status = entry.cli()
    exit_process(status)
