"""Failures outside the model, explained in one line with what to do: refused checkpoint writes (full
disk, quota, read-only folder), data faults in the middle of an epoch (an undecodable record, a
DataLoader worker killed by the out-of-memory killer) and failed collectives; and the trainers' exit
statuses for each (``EXIT_CODES``, ``write_refused``: what train.py and train_dist.py give
``utils.cli.run_cli``).

A refused write never costs the previous checkpoint (``utils.atomic``); ``--on-save-error`` says whether
training then stops (exit 5) or goes on with the older ``last.pth``. Only rank 0 writes, so its verdict
is broadcast and every rank stops, or continues, together.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch.distributed as tdist

from run.optim import NonFiniteError
from run.preempt import PREEMPT_EXIT, Preempted
from utils.atomic import SPACE_ERRNOS, WRITE_REFUSED_EXIT, OutputWriteError
from utils.cli import one_line
from utils.dist import broadcast_object
from utils.logger import get_logger


class WorkerDied(RuntimeError):
    """A DataLoader worker process died (killed by a signal or exited) mid-epoch."""


class DistFailure(RuntimeError):
    """A collective failed or timed out: another rank hung, died or lost its connection."""


# substrings that mark an error as coming from gloo / NCCL / the c10d store, and those that mean "too slow"
_DIST_MARKS = ("gloo", "nccl", "c10d", "processgroup", "connection closed by peer", "connection reset")
_TIMEOUT_MARKS = ("timed out", "timeout", "watchdog")


def explain_dist_error(error: BaseException, rank: int, timeout_s: float, joined: bool = True) -> DistFailure | None:
    """A one-line account of a failed collective, or None when ``error`` is something else."""
    text = str(error)
    first = next((line for line in text.splitlines() if line.strip()), type(error).__name__)
    lowered = text.lower()
    if not (isinstance(error, tdist.DistError) or any(mark in lowered for mark in _DIST_MARKS)):
        return None
    if not joined:
        return DistFailure(f"rank {rank}: could not join the process group within --dist-timeout {timeout_s:g} s "
                           f"(is MASTER_ADDR:MASTER_PORT reachable, did every node start?). Cause: {first}")
    if any(mark in lowered for mark in _TIMEOUT_MARKS):
        return DistFailure(f"rank {rank}: a collective operation did not complete within --dist-timeout "
                           f"{timeout_s:g} s: another rank is hung or far slower (see its log). Cause: {first}")
    return DistFailure(f"rank {rank}: lost the connection to another rank, which probably died (see its "
                       f"log above). Cause: {first}")


def is_space_error(error: BaseException) -> bool:
    """True for the OSErrors of a folder that cannot take a file now (full, over quota, read-only)."""
    return isinstance(error, OSError) and error.errno in SPACE_ERRNOS


def shared_save(write: Callable[[], None], path: Path, policy: str, distributed: bool) -> bool:
    """Run a collective save whose file rank 0 writes; True when written.

    A refused write: with ``policy`` "continue" a warning on every rank and False; with "stop" an
    OutputWriteError on every rank. Other errors propagate unchanged.
    """
    failure: tuple[int, str] | None = None
    try:
        write()
    except OSError as error:
        if not is_space_error(error):
            raise
        failure = (error.errno, str(error))
    if distributed:
        failure = broadcast_object(failure)
    if failure is None:
        return True
    code, text = failure
    if policy == "continue":
        get_logger().warning(f"{text}. --on-save-error continue: training goes on; {path.name} keeps its "
                             "previous state until a later save succeeds")
        return False
    raise OutputWriteError(code, f"{text}. Training stopped (--on-save-error stop); after freeing space, "
                                 "--resume auto continues from the last last.pth that was written "
                                 "(--on-save-error continue trains on instead)", str(path))


def _resume_hint(last: Path, saved_step: int | None) -> str:
    if saved_step is None:
        return ("then run again (no last.pth was written yet; --save-every-steps N writes one every N steps "
                "so that --resume auto can continue)")
    return f"then rerun with --resume auto to continue from {last} (global step {saved_step})"


def _dead_worker() -> RuntimeError | None:
    """torch's own error for a dead DataLoader worker (pid and signal), checked now rather than on SIGCHLD."""
    from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails  # private, stable since 1.0

    try:
        _error_if_any_worker_fails()
    except RuntimeError as found:
        return found
    return None


def data_fault(error: BaseException, epoch: int, global_step: int, last: Path,
               saved_step: int | None) -> BaseException | None:
    """A clear error for a loader failure in the middle of an epoch, or None when ``error`` is another kind."""
    where = f"in epoch {epoch} after global step {global_step}"
    if isinstance(error, ValueError):
        return ValueError(f"{one_line(error)} ({where}). Fix or remove that sample (or pass --skip-bad-images), "
                          + _resume_hint(last, saved_step))
    text = str(error)
    # A worker's death reaches the loop as torch's RuntimeError ("DataLoader worker (pid N) is killed by signal"
    # or "... exited unexpectedly") or, when the result queue's pipe breaks before torch notices, as the pipe's
    # ConnectionResetError / EOFError.
    if isinstance(error, (ConnectionResetError, EOFError)):
        error = _dead_worker() or error  # ask torch now which worker died, and how
        text = str(error)
    pipe_broke = isinstance(error, (ConnectionResetError, EOFError))
    if not (pipe_broke or isinstance(error, RuntimeError) and text.startswith("DataLoader worker")):
        return None
    pid = re.search(r"\(pids?(?:\(s\))? ([\d, ]+)\)", text)
    how = re.search(r"killed by signal: ([^.]+)", text)
    cause = f"was killed by signal {how.group(1).strip()}" if how else "exited unexpectedly"
    return WorkerDied(
        f"data loader worker (pid {pid.group(1) if pid else '?'}) {cause} {where}. A worker killed (SIGKILL) is "
        "usually the kernel's out-of-memory killer (see dmesg): lower --workers or the host's memory use, "
        + _resume_hint(last, saved_step))


# exit status of the trainers' failures beyond bad input (2, utils.cli); a write that the disk refused
# (full, quota, read-only: run.failures.is_space_error) exits with 5
EXIT_CODES = ((NonFiniteError, 3), (DistFailure, 4), (WorkerDied, 6), (Preempted, PREEMPT_EXIT))


def write_refused(error: BaseException) -> int | None:
    """``utils.cli.run_cli``'s ``classify`` for the trainers: a write the disk refused exits with 5."""
    return WRITE_REFUSED_EXIT if is_space_error(error) else None
