"""One run per output folder, and a folder holding a run is not overwritten by accident.

``RunLock`` is an advisory lock (``fcntl.flock``) on ``PTH_SAVE_FOLD/.run.lock``, held for the run's life by
the process that writes the folder (rank 0 under DDP). The kernel drops it when that process dies, however it
dies (kill -9 included), so a crash never leaves a stale lock; the file's text (pid, host, start time) only
names the holder for the second run's message. flock works across the hosts of an NFS mount on Linux >= 2.6.12
(the client maps it onto a POSIX lock); a file system without locks makes the lock an error, said as such.

``existing_run`` tells what a folder already holds (its last.pth's global step, or its epoch checkpoints), so a
new run into it without ``--resume`` or ``--overwrite`` can refuse in one line; ``sweep_temporaries`` removes the
``.NAME.*.tmp`` files that atomic writes of a killed run left behind (safe only under the lock: a live run's
writes in progress look the same).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from pathlib import Path

from models.checkpoint import read_checkpoint

LOCK_NAME = ".run.lock"
EPOCH_FILE = re.compile(r"^(\d{5}|step_\d{8})\.pth$")  # released-layout checkpoints: 00001.pth, step_00000040.pth


class RunLocked(ValueError):
    """The output folder is in use by another live run."""


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock or raises RunLocked naming the holder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunLocked(f"{self.path.parent} is in use by another run ({self.holder()}; lock {self.path}): "
                                "wait for it to end, stop it, or give another --pth-save-fold") from None
            raise OSError(error.errno, f"cannot lock {self.path}: {error.strerror} (a file system without "
                                       "file locks? give a --pth-save-fold on one that has them)") from None
        self._fd = fd
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        try:  # the holder's line only names it to a second run: a full disk here is said by the run's first write
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} started {started}\n".encode())
        except OSError:
            pass
        return self

    def holder(self) -> str:
        """The holder's line from the lock file ('pid P host H started T'), or a note that it is unknown."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "holder unknown"

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock; the file stays (its text is stale)
            self._fd = None


def existing_run(folder: str | os.PathLike) -> str | None:
    """What a previous run left in ``folder`` (for the refusal), or None when it holds no checkpoint."""
    folder = Path(folder)
    last = folder / "last.pth"
    epochs = sorted(p.name for p in folder.glob("*.pth") if EPOCH_FILE.match(p.name)) if folder.is_dir() else []
    if last.is_file():
        try:
            step = read_checkpoint(last, mmap=True).get("position", {}).get("global_step")
        except (ValueError, OSError):
            step = None
        return f"last.pth at global step {step}" if step is not None else "a last.pth (unreadable)"
    if epochs:
        return f"epoch checkpoints {epochs[0]}..{epochs[-1]}" if len(epochs) > 1 else f"epoch checkpoint {epochs[0]}"
    return None


def refuse_overwrite(folder: str | os.PathLike, resume: str, overwrite: bool) -> None:
    """A one-line error when a new run (no --resume, no --overwrite) would write over a previous run's files."""
    if resume or overwrite:
        return
    held = existing_run(folder)
    if held is not None:
        raise ValueError(f"{folder} already holds a run ({held}); --resume auto continues it, --overwrite starts "
                         "over in it (deleting its checkpoints first), or give another --pth-save-fold")


def clear_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """--overwrite: delete the previous run's last.pth, best.pth and epoch checkpoints, so that a later --resume auto
    cannot pick up the old run's state and no old epoch file sits beside the new run's."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    old = sorted(p for p in folder.glob("*.pth") if p.name in ("last.pth", "best.pth") or EPOCH_FILE.match(p.name))
    for path in old:
        path.unlink(missing_ok=True)
    return old


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files (interrupted atomic writes) in ``folder`` and its direct sub-folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted([*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")])
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
