"""utils.atomic.atomic_write: the old file or the complete new one, with open()'s permissions."""
from __future__ import annotations

import importlib
import os
import stat

import pytest

from utils import atomic
from utils.atomic import atomic_write


def test_new_file_gets_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        importlib.reload(atomic)  # the umask is read once, at import
        with atomic.atomic_write(tmp_path / "a.json", "w") as f:
            f.write("{}\n")
        with open(tmp_path / "b.json", "w") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
        importlib.reload(atomic)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
    assert (tmp_path / "a.json").read_text() == "{}\n"


def test_error_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with atomic_write(target) as f:  # the folder is created
        f.write(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"new, half written")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(tmp_path / "x", "a"):
            pass
