"""Failures outside the model, explained in one line with what to do: refused checkpoint writes (full
disk, quota, read-only folder) and data faults in the middle of an epoch (an undecodable record, a
DataLoader worker killed by the out-of-memory killer).

A refused write never costs the previous checkpoint (``utils.atomic``); ``--on-save-error`` says whether
training then stops (exit 5) or goes on with the older ``last.pth``. Only rank 0 writes, so its verdict
is broadcast and every rank stops, or continues, together.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from utils.atomic import SPACE_ERRNOS, OutputWriteError
from utils.cli import one_line
from utils.dist import broadcast_object
from utils.logger import get_logger


class WorkerDied(RuntimeError):
    """A DataLoader worker process died (killed by a signal or exited) mid-epoch."""


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


def data_fault(error: BaseException, epoch: int, global_step: int, last: Path,
               saved_step: int | None) -> BaseException | None:
    """A clear error for a loader failure in the middle of an epoch, or None when ``error`` is another kind."""
    where = f"in epoch {epoch} after global step {global_step}"
    if isinstance(error, ValueError):
        return ValueError(f"{one_line(error)} ({where}). Fix or remove that sample (or pass --skip-bad-images), "
                          + _resume_hint(last, saved_step))
    text = str(error)
    if not (isinstance(error, RuntimeError) and text.startswith("DataLoader worker")):
        return None
    pid = re.search(r"\(pids?(?:\(s\))? ([\d, ]+)\)", text)
    how = re.search(r"killed by signal: ([^.]+)", text)
    cause = f"was killed by signal {how.group(1).strip()}" if how else "exited unexpectedly"
    return WorkerDied(
        f"data loader worker (pid {pid.group(1) if pid else '?'}) {cause} {where}. A worker killed (SIGKILL) is "
        "usually the kernel's out-of-memory killer (see dmesg): lower --workers or the host's memory use, "
        + _resume_hint(last, saved_step))
