"""Issue 26: nothing lost on a bad day. Divergence, a real full disk, two runs in one folder, a re-run over a
finished run, start-up signals, changed data or batch size on resume, bad numbers on the command line.

The failures are real where the kernel allows: a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it
fail with EFBIG) in a child process, a small tmpfs when this machine lets the test mount one, an flock held by
another live process, SIGKILL and SIGTERM sent to real processes.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from run import train as train_entry
from run.failures import WRITE_REFUSED_EXIT
from run.run_dir import LOCK_NAME, RunLock, RunLocked
from run.startup_signals import EXIT_STATUS
from run.state import WEIGHT_LIMIT
from tests.training import (
    REPO,
    child_env,
    free_port,
    train_args,
    write_list,
)

CLASSES = 4  # x 4 faces, batch 4: 4 steps per epoch

pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


@pytest.fixture(scope="module")
def data(celeba_dir, tmp_path_factory):
    return write_list(celeba_dir, tmp_path_factory.mktemp("data") / "train.list", CLASSES, per_identity=4)


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _train(args: list[str]) -> int:
    return train_entry.cli(args)


def _log(out) -> str:
    return (out / "train.log").read_text()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run(args: list[str], timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "run.train", *args], cwd=REPO, env=child_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **popen)


# -- 1. divergence never poisons last.pth ---------------------------------------------------------------------------

def test_divergence_keeps_the_last_sound_state_and_a_lower_lr_continues(data, tmp_path):
    out = tmp_path / "run"
    base = train_args(data, out, CLASSES, batch=4, epochs=3)
    assert _train([*base, "--lr", "0.05", "--max-steps", "4"]) == 0
    good = _state(out / "last.pth")
    assert good["position"]["global_step"] == 4
    # an lr of 1e30: the first update blows the weights up (its own loss was finite), the next losses are not
    assert _train([*base, "--resume", "auto", "--lr", "1e30", "--max-nonfinite", "3"]) == 3
    kept = _state(out / "last.pth")
    assert kept["position"]["global_step"] == 4
    assert all(torch.equal(kept["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])
    log = _log(out)
    assert "not written at global step 5" in log and "weight tensors are non-finite or explode" in log
    assert f"{out / 'last.pth'} keeps global step 4, the last sound state" in log
    assert _train([*base, "--resume", "auto", "--lr", "0.05", "--max-steps", "6"]) == 0
    resumed = _state(out / "last.pth")
    assert resumed["position"]["global_step"] == 6
    assert all(torch.isfinite(t).all() and t.abs().max() < WEIGHT_LIMIT
               for t in resumed["state_dict"].values() if t.is_floating_point())


def test_a_poisoned_resume_file_is_refused(data, tmp_path):
    out = tmp_path / "run"
    base = train_args(data, out, CLASSES, batch=4)
    assert _train([*base, "--max-steps", "2"]) == 0
    state = _state(out / "last.pth")
    key = next(k for k in state["state_dict"] if k.endswith("conv1.weight"))
    state["state_dict"][key][0, 0, 0, 0] = float("inf")
    torch.save(state, out / "last.pth")
    assert _train([*base, "--resume", "auto"]) == 2
    assert "1 of" in _log(out) and "weight tensors are non-finite or explode (written by a diverged run)" in _log(out)


# -- 2. a refused write is a write failure, whatever layer raises it ----------------------------------------------

def test_file_size_limit_during_a_checkpoint_write_exits_5_and_keeps_last_pth(data, tmp_path):
    """torch.save's zip writer turns the EFBIG of a short write into a RuntimeError: still exit 5, one line."""
    out = tmp_path / "run"
    base = train_args(data, out, CLASSES, batch=4, epochs=3)
    assert _train([*base, "--max-steps", "1"]) == 0
    before = (out / "last.pth").read_bytes()
    size = len(before)
    done = _run([*base, "--resume", "auto", "--max-steps", "3"], preexec_fn=_limit_file_size(size // 2))
    assert done.returncode == WRITE_REFUSED_EXIT, done.stdout[-3000:]
    error = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in done.stdout, done.stdout[-3000:]
    assert "file too large" in error[0] and "(EFBIG)" in error[0] and "the file needs about" in error[0]
    assert f"the file-size limit (ulimit -f) is {size // 2 / 2**20:.1f} MiB" in error[0]
    assert (out / "last.pth").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # --on-save-error continue really continues: every save refused, the run reaches its end, last.pth intact
    done = _run([*base, "--resume", "auto", "--max-steps", "3", "--save-every-steps", "1", "--on-save-error",
                 "continue"], preexec_fn=_limit_file_size(size // 2))
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.count("--on-save-error continue: training goes on") >= 2
    assert "global step 3" in done.stdout and (out / "last.pth").read_bytes() == before


def _mount_tmpfs(folder, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (a real full disk); skipped where this process may not mount one (needs CAP_SYS_ADMIN)."""
    folder = tmp_path / "tmpfs"
    if not _mount_tmpfs(folder, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the file-size-limit test covers EFBIG")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_exits_5_with_the_room_left(data, small_tmpfs):
    out = small_tmpfs / "run"
    base = train_args(data, out, CLASSES, batch=4)
    done = _run([*base, "--max-steps", "1"])  # a 6 MB checkpoint on a 4 MiB file system
    assert done.returncode == WRITE_REFUSED_EXIT, done.stdout[-3000:]
    error = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in done.stdout, done.stdout[-3000:]
    assert "no space left on device (ENOSPC): the file needs about" in error[0] and "MiB are free in" in error[0]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_at_start_is_one_line(data, small_tmpfs):
    with open(small_tmpfs / "filler", "wb") as f:  # fill the file system to the last block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    done = _run(train_args(data, small_tmpfs / "run", CLASSES, batch=4, extra=("--max-steps", "1")))
    assert done.returncode == WRITE_REFUSED_EXIT, done.stdout[-3000:]
    assert "Traceback" not in done.stdout and "Logging error" not in done.stdout, done.stdout[-3000:]
    errors = [line for line in done.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no space left on device (ENOSPC)" in errors[0], done.stdout[-3000:]


# -- 3. one run per folder ------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from run.run_dir import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_in_a_locked_folder_is_refused_and_kill_9_leaves_no_stale_lock(data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        base = train_args(data, out, CLASSES, batch=4, extra=("--max-steps", "1"))
        done = _run(base)
        assert done.returncode == 2, done.stdout[-3000:]
        line = done.stdout.strip().splitlines()[-1]
        assert f"is in use by another run (pid {holder.pid} host " in line and "started 20" in line
        assert not (out / "train.log").exists()  # the refused run wrote nothing into the folder
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert _train(train_args(data, out, CLASSES, batch=4, extra=("--max-steps", "1"))) == 0
    assert (out / LOCK_NAME).exists()


def test_run_lock_in_process(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLocked, match=f"pid {os.getpid()} "):
        RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released on exit
        pass


# -- 4. a folder holding a run is not overwritten unless asked ----------------------------------------------------

def test_a_rerun_without_resume_is_refused_and_overwrite_starts_over(data, tmp_path):
    out = tmp_path / "run"
    base = train_args(data, out, CLASSES, batch=4, epochs=3)
    assert _train([*base, "--max-steps", "6"]) == 0
    before = (out / "last.pth").read_bytes()
    assert _train([*base, "--max-steps", "2"]) == 2
    assert (out / "last.pth").read_bytes() == before
    assert f"{out} already holds a run (last.pth at global step 6); --resume auto continues it, --overwrite" \
        in _log(out)
    assert _train([*base, "--max-steps", "2", "--overwrite"]) == 0
    assert _state(out / "last.pth")["position"]["global_step"] == 2
    assert sorted(p.name for p in out.glob("*.pth")) == ["last.pth", "step_00000002.pth"]  # the old run's are gone
    assert "--overwrite: deleted the previous run's 00001.pth, last.pth, step_00000006.pth" in _log(out)


def test_launchers_keep_resume_auto():
    for script in ("run/run.sh", "run/run_dist.sh"):
        assert "--resume auto" in (REPO / script).read_text(), script


# -- 7. smaller ones -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.05, 0.5, 1.5, 3.0])
def test_sigterm_at_any_moment_of_start_up_exits_75(data, tmp_path, delay):
    """Imports, list reading, model set-up, the loop: a SIGTERM anywhere gives 75 (the run lasts well past 3 s)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "run.train",
                             *train_args(data, out, CLASSES, batch=4, epochs=20)],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STATUS, text[-3000:]
    if delay <= 0.5:  # still importing torch: the start-up handler, not the loop's, stopped it
        assert "stopped by SIGTERM outside the training loop" in text, text[-3000:]


def test_stale_temporaries_of_every_writer_are_swept(data, tmp_path):
    out = tmp_path / "run"
    (out / "vis").mkdir(parents=True)
    stale = [out / ".config.json.abc123.tmp", out / ".last.pth.x1.tmp", out / "vis" / ".epoch_0.npz.q.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    assert _train(train_args(data, out, CLASSES, batch=4, extra=("--max-steps", "1"))) == 0
    assert not any(p.exists() for p in stale)
    assert all(f"removed {p}: a partial file left by an interrupted write" in _log(out) for p in stale)


def test_a_changed_batch_size_on_resume_goes_on_from_the_same_sample(data, tmp_path):
    out = tmp_path / "run"
    assert _train(train_args(data, out, CLASSES, batch=2, epochs=2, extra=("--max-steps", "4"))) == 0  # 8 samples
    assert _train(train_args(data, out, CLASSES, batch=4, epochs=2, extra=("--resume", "auto"))) == 0
    log = _log(out)
    assert "--batch-size 2 -> 4: the epoch goes on from its sample 8 (step 2 at the new size)" in log
    assert "epoch 0 [3/4] global step 3" in log  # not skipped to the next epoch


def test_a_changed_training_list_on_resume_is_named(data, tmp_path):
    out = tmp_path / "run"
    listed = tmp_path / "train.list"
    listed.write_text(data.read_text())
    assert _train(train_args(listed, out, CLASSES, batch=4, extra=("--max-steps", "2"))) == 0
    lines = listed.read_text().splitlines()
    listed.write_text("\n".join(lines[:-1]) + "\n")  # one face fewer, same path
    assert _train(train_args(listed, out, CLASSES, batch=4, extra=("--resume", "auto", "--max-steps", "3"))) == 0
    log = _log(out)
    assert "the training data changed since the checkpoint (images 16 -> 15; its content changed (sha256))" in log
    assert "some of its images are seen twice and others not at all this epoch" in log


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "0"])
def test_lr_must_be_finite_and_positive(data, tmp_path, value, capsys):
    assert _train(train_args(data, tmp_path / "run", CLASSES, extra=("--lr", value))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr" in err[0]


# -- under DDP: rank 0 decides, every rank stops the same way --------------------------------------------------------

def test_ddp_full_disk_and_refused_folder_stop_every_rank(data, tmp_path):
    out = tmp_path / "run"
    base = train_args(data, out, CLASSES, batch=4, extra=("--max-steps", "2"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m", "run.train_dist"]
    limited = subprocess.run([*launcher, *base], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=240, preexec_fn=_limit_file_size(1 << 20))
    assert limited.returncode != 0, limited.stdout[-4000:]
    for rank in (0, 1):
        assert re.search(rf"\[rank {rank}\] ERROR train_dist.py: error: could not write \S+: file too large",
                         limited.stdout), limited.stdout[-4000:]
    assert limited.stdout.count("exitcode  : 5") == 2  # torchrun's summary: both ranks exit 5
    assert not re.search(rf'File "{REPO}/(?!\.venv)', limited.stdout)  # no traceback of ours (torchrun prints its own)
    assert _train(train_args(data, out, CLASSES, batch=4, extra=("--max-steps", "1", "--overwrite"))) == 0
    launcher[launcher.index("--master_port") + 1] = str(free_port())
    refused = subprocess.run([*launcher, *base], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=240)
    assert refused.returncode != 0
    assert refused.stdout.count("already holds a run (last.pth at global step 1)") == 2, refused.stdout[-4000:]
