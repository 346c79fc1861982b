"""Fault injection for the reliability tests. TEST HOOKS ONLY: inert unless a MAGFACE_FAULT_* variable is set.

The trainer reads the environment once (``Faults.from_env``); with none of these variables set it gets
None and the loop never calls in here. Step N is the step that follows the progress line "global step N"
(N steps done before it; the first step is 0).

- ``MAGFACE_FAULT_EXIT_STEP=N``: at the start of step N the process dies at once (``os._exit``, no
  cleanup, like a segfault or an OOM kill), exit code ``MAGFACE_FAULT_EXIT_CODE`` (default 13).
- ``MAGFACE_FAULT_HANG_STEP=N``: at the start of step N the process sleeps ``MAGFACE_FAULT_HANG_S``
  seconds (default 3600) before its first collective of the step: the other ranks wait in it.
- ``MAGFACE_FAULT_NAN_STEPS=N,M-K``: the input images of those steps become NaN, so the forward pass
  (and the loss) is non-finite, as in a diverging run.
- ``MAGFACE_FAULT_SIGNAL_STEP=N``: at the start of step N send ``MAGFACE_FAULT_SIGNAL`` (default SIGTERM)
  to ``MAGFACE_FAULT_SIGNAL_TO``: ``self`` (default: this process and its DataLoader workers, as a
  scheduler signalling every process of a job) or ``launcher`` (the parent process: torchrun's agent,
  which forwards it to every worker).
- ``MAGFACE_FAULT_KILL_WORKERS_STEP=N``: at the start of step N SIGKILL this process's DataLoader
  workers, as the kernel's out-of-memory killer would.
- ``MAGFACE_FAULT_WRITE=ACTION:NAME``: a fault inside the write of a file (``utils.atomic.FAULT_ENV``).
- ``MAGFACE_FAULT_RANK=R``: apply the faults on rank R only (default: every rank).

Exit, hang, signal and kill act on a job's first attempt only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so a
job restarted by ``torchrun --max-restarts`` runs clean and can show that it recovers.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

PREFIX = "MAGFACE_FAULT_"


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
        """None (the normal case) unless some MAGFACE_FAULT_* variable is set."""
        env = os.environ if env is None else env
        if not any(k.startswith(PREFIX) for k in env):
            return None
        return cls(
            exit_step=_int(env, "EXIT_STEP", None), exit_code=_int(env, "EXIT_CODE", 13),
            hang_step=_int(env, "HANG_STEP", None), hang_s=float(_int(env, "HANG_S", 3600)),
            nan_steps=_parse_steps(env.get(PREFIX + "NAN_STEPS", "")), rank=_int(env, "RANK", None),
            first_attempt=env.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0"),
            signal_step=_int(env, "SIGNAL_STEP", None), signal=env.get(PREFIX + "SIGNAL", "SIGTERM"),
            signal_to=env.get(PREFIX + "SIGNAL_TO", "self"), kill_workers_step=_int(env, "KILL_WORKERS_STEP", None),
        )

    def _mine(self, rank: int) -> bool:
        return self.rank is None or self.rank == rank

    def at_step_start(self, step: int, rank: int) -> None:
        """Die or hang here if told to (first attempt only)."""
        if not (self._mine(rank) and self.first_attempt):
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

    def corrupt(self, x: torch.Tensor, step: int, rank: int) -> torch.Tensor:
        """NaN images on the listed steps, the input untouched otherwise."""
        if step in self.nan_steps and self._mine(rank):
            return torch.full_like(x, float("nan"))
        return x
