"""Issue 7, whole processes: a training process killed with SIGKILL mid-epoch resumes (--resume auto) to
the same final weights as an uninterrupted run; under torchrun a rank that dies is restarted and the
job resumes by itself; a rank that hangs is reported after --dist-timeout instead of blocking forever.

Faults are injected with the MAGFACE_FAULT_* variables of tests/fault_launch.py, or with a real SIGKILL.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.training import REPO, assert_same_weights, child_env, run_python, torchrun, train_args, write_list

CLASSES = 5


@pytest.fixture(scope="module")
def data(celeba_dir, tmp_path_factory):
    return write_list(celeba_dir, tmp_path_factory.mktemp("data") / "train.list", CLASSES, per_identity=8)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted(data, tmp_path):
    every = 2
    args = train_args(data, tmp_path / "run", CLASSES, epochs=3, extra=("--save-every-steps", str(every)))
    reference = run_python(["-m", "run.train", *train_args(data, tmp_path / "ref", CLASSES, epochs=3)], 300)
    assert reference.returncode == 0, reference.stdout[-3000:]

    victim = subprocess.Popen([sys.executable, "-m", "run.train", *args], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in victim.stdout:
            seen.append(line)
            if "global step 7 " in line:  # mid-epoch 1 (5 steps per epoch), last.pth written at step 6
                victim.send_signal(signal.SIGKILL)
                break
        victim.wait(timeout=60)
        seen += victim.stdout.readlines()
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL
    last_logged = max(int(s) for s in re.findall(r"global step (\d+) ", "".join(seen)))

    resumed = run_python(["-m", "run.train", *args, "--resume", "auto"], 300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    start = int(re.search(r"resumed from .*last\.pth at epoch \d+ step \d+ \(global step (\d+)\)",
                          resumed.stdout).group(1))
    assert 0 <= last_logged - start <= every, (last_logged, start)  # lost at most the steps since the last save
    assert_same_weights(tmp_path / "run" / "00003.pth", tmp_path / "ref" / "00003.pth")


@pytest.mark.slow
def test_torchrun_restarts_a_dead_rank_and_resumes(data, tmp_path):
    """Rank 1 exits hard before step 6 on the first attempt; torchrun --max-restarts 1 restarts the job,
    which resumes from last.pth (written every 2 steps) and ends with the uninterrupted run's weights.
    Before utils.dist.attempt_store the restarted ranks read the dead ranks' addresses from torchrun's
    store and failed ("Connection refused") or hung, in about half the runs on a loaded machine."""
    args = train_args(data, tmp_path / "run", CLASSES, extra=("--save-every-steps", "2", "--resume", "auto"))
    faulty = torchrun(2, args, timeout=600, max_restarts=1,
                      env=child_env(MAGFACE_FAULT_EXIT_STEP="6", MAGFACE_FAULT_RANK="1"), faults=True)
    assert faulty.returncode == 0, faulty.stdout[-4000:]
    assert "[fault injection] rank 1: exiting hard at step 6" in faulty.stdout
    assert re.search(r"resumed from .*last\.pth at epoch 1 step [01] \(global step [56]\)", faulty.stdout), \
        faulty.stdout[-4000:]
    clean = torchrun(2, train_args(data, tmp_path / "ref", CLASSES), timeout=600)
    assert clean.returncode == 0, clean.stdout[-4000:]
    assert_same_weights(tmp_path / "run" / "00002.pth", tmp_path / "ref" / "00002.pth")


@pytest.mark.slow
def test_hung_rank_is_reported_after_dist_timeout(data, tmp_path):
    args = train_args(data, tmp_path / "run", CLASSES, extra=("--dist-timeout", "8"))
    started = time.monotonic()
    hung = torchrun(2, args, timeout=240,
                    env=child_env(MAGFACE_FAULT_HANG_STEP="2", MAGFACE_FAULT_RANK="1", MAGFACE_FAULT_HANG_S="600"),
                    faults=True)
    elapsed = time.monotonic() - started
    assert hung.returncode != 0
    assert elapsed < 150, f"the job took {elapsed:.0f} s to fail"
    assert "[fault injection] rank 1: hanging 600 s at step 2" in hung.stdout
    assert "rank 0: a collective operation did not complete within --dist-timeout 8 s" in hung.stdout, \
        hung.stdout[-4000:]
