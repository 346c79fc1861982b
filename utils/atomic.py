"""Atomic file writes: a reader sees the old file or the complete new one, never a partial write.

``atomic_write(path, mode)`` yields a file object for a temporary file in ``path``'s folder. On success
it flushes and fsyncs the file, gives it the permissions a plain ``open`` would have (``mkstemp``
creates files readable by their owner only, which surprised users sharing checkpoints or features on
a cluster), renames it over ``path`` and fsyncs the folder. On any error, an interrupt included, the
temporary file is removed and ``path`` is left as it was. A process killed outright (SIGKILL) can leave
a ``.NAME.HOST-PID.*.tmp`` file behind; ``path`` itself is still intact, and the next write of ``path``
removes such leftovers of processes of this host that are no longer alive (``sweep_leftovers``).

A full disk, an exhausted quota, a file-size limit or a read-only folder (ENOSPC, EDQUOT, EFBIG, EROFS,
EACCES) raises ``OutputWriteError``: an OSError with the same errno whose message names the path, the space
the write needed (the caller's estimate, else at least the bytes written before the failure) and the room
left. That holds whichever layer the failure surfaces in: torch.save's zip writer, for one, swallows the
OSError of a short write and raises a RuntimeError ("unexpected pos ...") in its place, with the OSError
only as its context; ``space_error_in`` finds it there.

``write_json(path, obj, ...)`` is the one JSON writer on top of it: every report, summary, config and
calibration file of the project goes through it, each caller passing the layout its files have always had.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import math
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

# The errors that mean "this folder cannot take the file now", as opposed to a bug in the writer.
SPACE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the file system or the process's file-size limit (ulimit -f)",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}
# the exit status of a command whose output the disk refused (full, quota, file-size limit, read-only): the trainers
# and gen_feat alike
WRITE_REFUSED_EXIT = 5


class OutputWriteError(OSError):
    """A write refused for lack of space, quota or permission; the previous file is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def _read_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so this runs once, at import (before
    any writer thread exists), rather than on every write, where another thread creating a file in
    between would get a world-writable one."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# what open(path, "w") would create: 0o666 minus the umask
_FILE_MODE = 0o666 & ~_read_umask()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def space_error_in(error: BaseException | None) -> OSError | None:
    """The OSError of a refused write (errno in SPACE_ERRNOS) that ``error`` is, or that caused it: the chain of
    causes and contexts is followed, since some writers re-raise a short write as another exception."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in SPACE_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def _room_left(folder: Path, code: int) -> str:
    """What limits the file: the free space (ENOSPC, EDQUOT) or the process's file-size limit (EFBIG)."""
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return "" if limit == resource.RLIM_INFINITY else f", the file-size limit (ulimit -f) is {_mib(limit)}"
    try:
        return f", {_mib(shutil.disk_usage(folder).free)} are free in {folder}"
    except OSError:
        return ""


def explain_write_error(error: OSError, path: Path, written: int | None,
                        expected: int | None = None) -> OutputWriteError:
    """The one-line account of a write that the folder refused (``error.errno`` in SPACE_ERRNOS)."""
    what = SPACE_ERRNOS[error.errno]
    text = f"could not write {path}: {what} ({errno.errorcode[error.errno]})"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if expected is not None:
            need = f"about {_mib(expected)}"
        elif written is not None:
            need = f"at least {_mib(written)} (written before it failed)"
        else:
            need = "an unknown size"
        way = "raise the limit" if error.errno == errno.EFBIG else "free space"
        text += f": the file needs {need}{_room_left(path.parent, error.errno)}; {way} or write elsewhere"
    else:
        text += f": make {path.parent} writable or write elsewhere"
    text += "; the previous file, if any, is unchanged"
    return OutputWriteError(error.errno, text, str(path))


_HOST = socket.gethostname().replace(".", "_")  # in temporary names: which host's process wrote it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left (``.NAME.HOST-PID.*.tmp``): those of this
    host whose process is gone. Another host's, or a live process's write in progress, are left alone."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(_HOST)}-*.tmp"):
        pid = tmp.name[len(path.name) + len(_HOST) + 3:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                gone.append(tmp)
    return gone


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", expected_size: int | None = None) -> Iterator[IO]:
    """Write ``path`` atomically (see the module docstring); ``mode`` is "wb" or "w". ``expected_size`` (bytes), when
    the caller can estimate it, is what a refused write's message says the file needs."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp, written = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except Exception:
                with contextlib.suppress(OSError, ValueError):
                    written = f.tell()
                raise
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        refused = None if isinstance(error, OutputWriteError) else space_error_in(error)
        if refused is not None:
            raise explain_write_error(refused, path, written, expected_size) from error
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None and numpy scalars made Python ones."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, rendered in memory, then written atomically (a reader never sees half a
    PNG; the parent folder is made). matplotlib itself is the caller's import."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, end: str = "\n",
               nan_as_null: bool = False, **dump_kwargs: Any) -> None:
    """``json.dumps(obj, indent=indent, **dump_kwargs) + end`` written atomically.

    ``nan_as_null`` writes strict JSON (NaN and inf become null; the evaluation reports, which a metric
    undefined on the data must not turn into a file other readers reject). Without it json's defaults
    hold (NaN is written as ``NaN``).
    """
    if nan_as_null:
        obj = finite_or_none(obj)
        dump_kwargs["allow_nan"] = False
    text = json.dumps(obj, indent=indent, **dump_kwargs) + end
    with atomic_write(path, "w") as f:
        f.write(text)
