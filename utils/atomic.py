"""Atomic file writes: a reader sees the old file or the complete new one, never a partial write.

``atomic_write(path, mode)`` yields a file object for a temporary file in ``path``'s folder. On success
it flushes and fsyncs the file, gives it the permissions a plain ``open`` would have (``mkstemp``
creates files readable by their owner only, which surprised users sharing checkpoints or features on
a cluster), renames it over ``path`` and fsyncs the folder. On any error, an interrupt included, the
temporary file is removed and ``path`` is left as it was. A process killed outright (SIGKILL) can leave
a ``.NAME.*.tmp`` file behind; ``path`` itself is still intact.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so this runs once, at import (before
    any writer thread exists), rather than on every write, where another thread creating a file in
    between would get a world-writable one."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# what open(path, "w") would create: 0o666 minus the umask
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` atomically (see the module docstring); ``mode`` is "wb" or "w"."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
