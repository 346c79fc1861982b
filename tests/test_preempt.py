"""Issue 16: preemption signals, refused checkpoint writes and data faults in the middle of a run.

Every fault comes from a deterministic hook installed from outside the trainer (tests/fault_launch.py's
MAGFACE_FAULT_* variables, MAGFACE_FAULT_WRITE inside a file write), never from a timed sleep.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import stat
import subprocess
import time

import pytest
import torch

from dataloader import EpochShuffleSampler, RecordIODataset
from dataloader.pack_rec import main as pack_main
from run import train as train_entry
from run.preempt import PREEMPT_EXIT, ignore_in_worker, parse_signals, slurm_job_id
from tests.fault_launch import WRITE_ENV
from tests.training import (
    assert_same_weights,
    child_env,
    torchrun,
    train_args,
    write_list,
)

CLASSES = 4  # x 4 faces, batch 4: 4 steps per epoch, 2 epochs

pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


@pytest.fixture(scope="module")
def data(celeba_dir, tmp_path_factory):
    return write_list(celeba_dir, tmp_path_factory.mktemp("data") / "train.list", CLASSES, per_identity=4)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run that every interrupted-and-resumed run must equal bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    train_entry.main(train_args(data, out, CLASSES, batch=4))
    return out


def _position(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["position"]


def _temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.usefixtures("fault_injection")
def test_sigterm_finishes_the_step_saves_once_and_resume_is_exact(data, reference, tmp_path, monkeypatch):
    """SIGTERM to the process and its loader worker at the start of step 2 (mid-epoch 0); a second SIGTERM
    arrives in the middle of the last.pth write, the first one of the run. The step is finished, last.pth
    written whole, exit status 75, the worker survives the signal, and --resume auto ends with the
    uninterrupted run's weights."""
    args = train_args(data, tmp_path / "run", CLASSES, batch=4, extra=("--workers", "1"))
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("MAGFACE_FAULT_SIGNAL_STEP", "2")
    monkeypatch.setenv(WRITE_ENV, "SIGTERM:last.pth")
    assert train_entry.cli(args) == PREEMPT_EXIT == 75
    assert signal.getsignal(signal.SIGTERM) == handler  # the training loop's handler is gone again
    log = (tmp_path / "run" / "train.log").read_text()
    assert "preempted by SIGTERM: stopped after global step 3;" in log, log[-2000:]
    assert "1 more preemption signal(s) arrived during the save and were ignored" in log
    assert _position(tmp_path / "run" / "last.pth") == {"epoch": 0, "step_in_epoch": 3, "global_step": 3}
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["last.pth"]
    assert not _temporaries(tmp_path / "run")

    monkeypatch.delenv("MAGFACE_FAULT_SIGNAL_STEP")
    monkeypatch.delenv(WRITE_ENV)
    assert train_entry.cli([*args, "--resume", "auto"]) == 0
    assert_same_weights(tmp_path / "run" / "00002.pth", reference / "00002.pth")


@pytest.mark.usefixtures("fault_injection")
def test_signal_during_a_checkpoint_write_and_slurm_requeue(data, reference, tmp_path, monkeypatch):
    """SIGTERM lands inside the --save-every-steps write at step 3: that write completes (it already
    holds the state to resume from, so nothing is written twice), the job asks SLURM to requeue it,
    and resuming gives the uninterrupted weights."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(WRITE_ENV, "SIGTERM:last.pth")
    args = train_args(data, tmp_path / "run", CLASSES, batch=4, extra=("--save-every-steps", "3"))
    assert train_entry.cli([*args, "--slurm-requeue", "1"]) == 75
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"preempted by SIGTERM: stopped after global step 3; {tmp_path / 'run' / 'last.pth'} holds global " \
           "step 3" in log, log[-2000:]
    assert "requeued SLURM job 4242 (scontrol requeue)" in log
    assert calls.read_text() == "requeue 4242\n"
    assert _position(tmp_path / "run" / "last.pth")["global_step"] == 3
    assert not _temporaries(tmp_path / "run")

    monkeypatch.delenv(WRITE_ENV)
    assert train_entry.cli([*args, "--resume", "auto"]) == 0
    assert_same_weights(tmp_path / "run" / "00002.pth", reference / "00002.pth")


@pytest.mark.slow
def test_torchrun_forwards_sigterm_to_every_rank_and_resume_is_exact(celeba_dir, tmp_path):
    """Rank 0 sends SIGTERM to torchrun's agent at step 3; the agent forwards it to both workers, which
    stop after the same step with last.pth written; torchrun --resume auto then ends bit-identical to an
    uninterrupted 2-rank run."""
    data = write_list(celeba_dir, tmp_path / "train.list", 5, per_identity=8)  # 5 steps per epoch at batch 8
    args = train_args(data, tmp_path / "run", 5)
    hit = torchrun(2, args, timeout=300, env=child_env(MAGFACE_FAULT_SIGNAL_STEP="3", MAGFACE_FAULT_RANK="0",
                                                        MAGFACE_FAULT_SIGNAL_TO="launcher"), faults=True)
    assert hit.returncode != 0, hit.stdout[-4000:]
    assert "[fault injection] rank 0: SIGTERM to launcher at step 3" in hit.stdout
    stops = {rank: int(step) for rank, step in re.findall(
        r"\[rank (\d)\] ERROR train_dist\.py: error: preempted by SIGTERM: stopped after global step (\d+)",
        hit.stdout)}
    assert sorted(stops) == ["0", "1"] and len(set(stops.values())) == 1, hit.stdout[-4000:]
    assert _position(tmp_path / "run" / "last.pth")["global_step"] == stops["0"] >= 4
    resumed = torchrun(2, [*args, "--resume", "auto"], timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    clean = torchrun(2, train_args(data, tmp_path / "ref", 5), timeout=300)
    assert clean.returncode == 0, clean.stdout[-4000:]
    assert_same_weights(tmp_path / "run" / "00002.pth", tmp_path / "ref" / "00002.pth")


@pytest.mark.usefixtures("fault_injection")
def test_full_disk_during_a_checkpoint_stops_or_continues_and_keeps_last_pth(data, tmp_path, monkeypatch):
    args = train_args(data, tmp_path / "run", CLASSES, batch=4, extra=("--save-every-steps", "1"))
    assert train_entry.cli([*args, "--max-steps", "2"]) == 0
    last = tmp_path / "run" / "last.pth"
    before = last.read_bytes()
    monkeypatch.setenv(WRITE_ENV, "ENOSPC:last.pth")
    resumed = [*args, "--resume", "auto", "--max-steps", "4"]
    assert train_entry.cli(resumed) == 5
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"could not write {last}: no space left on device (ENOSPC): the file needs about" in log
    assert "Training stopped (--on-save-error stop)" in log
    assert last.read_bytes() == before and not _temporaries(tmp_path / "run")

    assert train_entry.cli([*resumed, "--on-save-error", "continue"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("--on-save-error continue: training goes on; last.pth keeps its previous state") == 2
    assert last.read_bytes() == before and not _temporaries(tmp_path / "run")
    assert (tmp_path / "run" / "00001.pth").is_file()  # other files are still written


def _rec_with_undecodable_record(celeba_dir, tmp_path, batch: int, at_step: int) -> tuple:
    """A .rec of the training faces whose record read at step ``at_step`` of epoch 0 holds no image."""
    out = tmp_path / "rec"
    pack_main(["--train_list", str(write_list(celeba_dir, tmp_path / "l.list", CLASSES, 4)), "--out", str(out)])
    ds = RecordIODataset(out)
    sampler = EpochShuffleSampler(len(ds), 1, 0, shuffle=True, seed=3)
    sampler.set_epoch(0)
    index = list(sampler)[at_step * batch + 1]
    key, offset = int(ds.keys[index]), int(ds.offsets[index])
    data = bytearray((out / "train.rec").read_bytes())
    data[offset + 32: offset + 36] = b"JUNK"  # the JPEG's first bytes, after magic, length and header
    (out / "train.rec").write_bytes(bytes(data))
    return out, key, offset


def test_undecodable_record_mid_epoch_is_named_with_how_to_resume(celeba_dir, tmp_path):
    rec, key, offset = _rec_with_undecodable_record(celeba_dir, tmp_path, batch=4, at_step=2)
    args = train_args(tmp_path / "unused", tmp_path / "run", CLASSES, batch=4,
                      extra=("--workers", "1", "--save-every-steps", "1"))
    args[args.index("--train_list"):args.index("--train_list") + 2] = ["--rec", str(rec)]
    assert train_entry.cli(args) == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert (f"train.py: error: bad training record {rec / 'train.rec'} key {key} at offset {offset}: "
            "not a decodable image") in log, log[-2000:]
    assert (f"(in epoch 0 after global step 2). Fix or remove that sample (or pass --skip-bad-images), then rerun "
            f"with --resume auto to continue from {tmp_path / 'run' / 'last.pth'} (global step 2)") in log


@pytest.mark.usefixtures("fault_injection")
def test_loader_worker_killed_is_named_with_how_to_resume(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAGFACE_FAULT_KILL_WORKERS_STEP", "2")
    args = train_args(data, tmp_path / "run", CLASSES, batch=4, extra=("--workers", "1", "--save-every-steps", "2"))
    assert train_entry.cli(args) == 6
    pid = re.search(r"SIGKILL to loader worker (\d+) at step 2", capsys.readouterr().out).group(1)
    log = (tmp_path / "run" / "train.log").read_text()
    # torch reports the death as "killed by signal: Killed" when its SIGCHLD handler sees it first and as "exited
    # unexpectedly" when the queue check does (a race): the handler's line names the worker either way
    found = re.search(rf"train\.py: error: data loader worker \(pid {pid}\) (?:was killed by signal Killed|exited "
                      r"unexpectedly) in epoch "
                      r"(\d+) after global step (\d+)\. A worker killed \(SIGKILL\) is usually the kernel's "
                      r"out-of-memory killer \(see dmesg\): lower --workers or the host's memory use, then rerun with "
                      rf"--resume auto to continue from {re.escape(str(tmp_path / 'run' / 'last.pth'))} "
                      r"\(global step (\d+)\)", log)
    assert found, log[-2000:]
    # The worker keeps up to 2 batches ahead (prefetch 2 x 1 worker), so the death surfaces after step 2 or 3 of
    # epoch 0, or, when the last batch of epoch 0 was already queued, when epoch 1 asks the persistent worker
    # for its first batch (after step 4, which also wrote last.pth).
    assert tuple(int(g) for g in found.groups()) in {(0, 2, 2), (0, 3, 2), (1, 4, 4)}, found.group(0)


def _worker(signals, ready) -> None:
    ignore_in_worker(signals, 0)
    ready.set()
    time.sleep(60)


def test_loader_worker_ignores_others_signals_but_not_its_parents():
    """A scheduler's SIGTERM to every process must not kill a DataLoader worker, yet the DataLoader's own
    terminate() (SIGTERM from the parent, also used by multiprocessing at exit) must still end it."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_worker, args=((signal.SIGTERM, signal.SIGUSR1), ready), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for name in ("TERM", "USR1"):  # sent by another process, as slurmstepd or torchrun would
            subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
        worker.join(1.0)
        assert worker.is_alive()
        worker.terminate()
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        worker.kill()


def test_signal_names_and_slurm_ids():
    assert parse_signals("SIGTERM,usr1") == (signal.SIGTERM, signal.SIGUSR1)
    assert parse_signals("") == parse_signals("none") == ()
    for bad in ("SIGKILL", "TERMINATE"):
        with pytest.raises(ValueError, match="--preempt-signals"):
            parse_signals(bad)
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({"SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}) == "5_2"
    assert slurm_job_id({}) is None
