"""utils.atomic: the old file or the complete new one, with open()'s permissions; write_json's layouts."""
from __future__ import annotations

import errno
import importlib
import os
import re
import stat

import numpy as np
import pytest

from tests.fault_launch import WRITE_ENV
from utils import atomic
from utils.atomic import atomic_write, write_json


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


@pytest.mark.parametrize("code, what", [("ENOSPC", "no space left on device (ENOSPC): the file needs at least 2.0 MiB"),
                                        ("EDQUOT", "disk quota exceeded (EDQUOT): the file needs at least 2.0 MiB"),
                                        ("EROFS", "the file system is read-only (EROFS): make")])
@pytest.mark.usefixtures("fault_injection")
def test_refused_write_keeps_the_old_file_and_names_path_and_space(tmp_path, monkeypatch, code, what):
    """The MAGFACE_FAULT_WRITE fault (tests/fault_launch.py) raises the OSError inside the write, after 2 MiB
    reached the temporary."""
    target = tmp_path / "feats.npy"
    with atomic_write(target) as f:
        f.write(b"old")
    monkeypatch.setenv(WRITE_ENV, f"{code}:feats.npy")
    with pytest.raises(OSError) as info:
        with atomic_write(target) as f:
            f.write(b"x" * 2**21)
    assert info.value.errno == getattr(errno, code)
    message = str(info.value)
    assert message.startswith(f"could not write {target}: {what}") and "\n" not in message
    assert "the previous file, if any, is unchanged" in message
    if code != "EROFS":
        assert re.search(rf"MiB are free in {re.escape(str(tmp_path))}; free space or write elsewhere", message)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npy"]
    with atomic_write(tmp_path / "other.npy") as f:  # the hook acts on the named file only
        f.write(b"fine")


def test_unwritable_folder_is_explained(tmp_path, monkeypatch):
    """mkstemp itself refused (a read-only mount): the same message, and nothing is left behind."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match=rf"could not write {re.escape(str(tmp_path / 'r.json'))}: permission denied "
                                     rf"\(EACCES\): make {re.escape(str(tmp_path))} writable"):
        with atomic_write(tmp_path / "r.json", "w") as f:
            f.write("{}")
    assert list(tmp_path.iterdir()) == []


def test_write_json_keeps_each_callers_layout(tmp_path):
    obj = {"b": float("nan"), "a": [np.float32(0.5), np.int64(3), True, None], "c": float("inf")}
    write_json(tmp_path / "strict.json", obj, nan_as_null=True)  # the evaluation reports
    assert (tmp_path / "strict.json").read_text() == (
        '{\n  "b": null,\n  "a": [\n    0.5,\n    3,\n    true,\n    null\n  ],\n  "c": null\n}\n')
    write_json(tmp_path / "plain.json", {"b": float("nan"), "a": tmp_path}, indent=1, end="", default=str)
    assert (tmp_path / "plain.json").read_text() == f'{{\n "b": NaN,\n "a": "{tmp_path}"\n}}'
    write_json(tmp_path / "sorted.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "sorted.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json(tmp_path / "strict.json", [np.nan], allow_nan=False)
    assert (tmp_path / "strict.json").read_text().endswith('"c": null\n}\n')  # the refused write changed nothing


STUCK_WRITER = """
import sys, time
from utils.atomic import atomic_write
with atomic_write(sys.argv[1], "w") as f:
    f.write("half a report")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def test_the_next_write_sweeps_what_a_killed_writer_left(tmp_path):
    """A real writer killed with SIGKILL mid-write leaves its temporary; the next write of that file removes it,
    while a live writer's temporary (this process's) is left alone."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    target = tmp_path / "report.json"
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(target)], cwd=repo, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".report.json.{atomic._HOST}-{child.pid}.")
    live = tmp_path / f".report.json.{atomic._HOST}-{os.getpid()}.inflight.tmp"
    live.write_text("another thread's write in progress")
    write_json(target, {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "report.json"])
