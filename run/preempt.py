"""Preemption: a scheduler's SIGTERM / SIGUSR1 stops training after the current step with last.pth saved.

Clusters preempt jobs by sending a signal and killing the job after a grace period. ``PreemptWatch``
turns the configured signals (``--preempt-signals``) into a flag; the loop asks ``agreed()`` after each
step, a MAX all-reduce of the flag, so every rank stops after the same step even when the signal
reached only some of them (torchrun forwards the one it receives to every worker, SLURM signals every
process, a user's ``kill`` reaches one). The trainer then writes ``last.pth`` once and raises
``Preempted``, which the command line turns into exit status 75 (EX_TEMPFAIL, "try again later").

Signals arriving while the state is saved only set the flag again: the write is never cut short by
them (and ``utils.atomic`` keeps the previous file whole should something else kill the process).
DataLoader workers ignore these signals unless their parent sends them (``ignore_in_worker``): they
receive them too when the whole process group is signalled, and a worker dying of one would end the
run with a loader error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as tdist

from utils.logger import get_logger

PREEMPT_EXIT = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the job should be run again


class Preempted(Exception):
    """Training stopped on a preemption signal after saving last.pth; resume with --resume auto."""


def parse_signals(text: str) -> tuple[signal.Signals, ...]:
    """'SIGTERM,SIGUSR1' (or 'TERM,USR1') -> the signals; '' or 'none' -> none."""
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    if names == ["NONE"]:
        return ()
    out = []
    for name in names:
        full = name if name.startswith("SIG") else "SIG" + name
        if full in ("SIGKILL", "SIGSTOP") or full not in signal.Signals.__members__:
            raise ValueError(f"--preempt-signals: {name!r} is not a signal that can be caught "
                             "(use names such as SIGTERM,SIGUSR1, or '' for none)")
        out.append(signal.Signals[full])
    return tuple(out)


def _wait_for_parent(signals: tuple[signal.Signals, ...]) -> None:
    while True:
        info = signal.sigwaitinfo(set(signals))
        if info.si_pid == os.getppid():  # the training process ends this worker (DataLoader shutdown)
            os._exit(0)


def ignore_in_worker(signals: tuple[signal.Signals, ...], worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the training process decides when to stop; the workers carry on.

    Plain SIG_IGN would also ignore the SIGTERM with which the DataLoader (and multiprocessing at exit)
    end a worker that does not stop by itself, and the training process would wait for it forever. So
    the signals are blocked and a thread takes them: one sent by the parent ends the worker, any other
    (a scheduler, torchrun signalling the process group) is ignored.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    threading.Thread(target=_wait_for_parent, args=(signals,), daemon=True,
                     name=f"preempt-signals-{worker_id}").start()


class PreemptWatch:
    """Records the preemption signals; installed for the length of the training loop."""

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self.repeats = 0
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: the handler may run in the middle of a write or a collective.
        if self.received is None:
            self.received = signal.Signals(signum)
        else:
            self.repeats += 1

    def __enter__(self) -> PreemptWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, device: torch.device, distributed: bool) -> signal.Signals | None:
        """Collective when distributed: the signal any rank received, or None; every rank gets the same."""
        code = 0 if self.received is None else int(self.received)
        if distributed:
            flag = torch.tensor([code], dtype=torch.int32, device=device)
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
            code = int(flag.item())
        return signal.Signals(code) if code else None


def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """The id ``scontrol requeue`` takes: ARRAYJOB_TASK for array jobs, else SLURM_JOB_ID; None outside SLURM."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def requeue_slurm(env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> str:
    """Ask SLURM to requeue this job (``scontrol requeue ID``); returns a line for the log."""
    job = slurm_job_id(os.environ if env is None else env)
    if job is None:
        return "--slurm-requeue: not running under SLURM (no SLURM_JOB_ID); not requeued"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"--slurm-requeue: 'scontrol requeue {job}' failed: {error}"
    if done.returncode:
        return f"--slurm-requeue: 'scontrol requeue {job}' exited {done.returncode}: {done.stderr.strip()}"
    return f"requeued SLURM job {job} (scontrol requeue)"


def raise_preempted(signal_name: str, global_step: int, last: Path, saved_step: int | None, repeats: int,
                    requeue: bool) -> None:
    """After the state is saved: requeue under SLURM if asked, then raise Preempted (exit status 75)."""
    log = get_logger()
    if repeats:
        log.warning(f"{repeats} more preemption signal(s) arrived during the save and were ignored")
    if requeue:
        log.warning(requeue_slurm())
    state = f"{last} holds global step {saved_step}" if saved_step is not None else f"{last} was not written"
    raise Preempted(f"preempted by {signal_name}: stopped after global step {global_step}; {state}; exit status "
                    f"{PREEMPT_EXIT} (requeue the job; --resume auto continues exactly)")
