"""Issue 7, in-process parts: checkpoints survive a kill mid-write, foreign or damaged files are refused
with a clear message, --resume warns about changed hyper-parameters, and non-finite losses are skipped
(a run of them stops the job with the pre-divergence weights in last.pth)."""
from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from models.checkpoint import atomic_save, read_checkpoint
from run import train as train_entry
from run.build import build_run, maybe_resume
from run.config import config_from_args, get_args_parser
from run.run_dir import sweep_temporaries
from run.state import Position
from tests.training import (
    REPO,
    assert_same_weights,
    child_env,
    train_args,
    write_list,
)
from utils.dist import DistInfo
from utils.logger import LOGGER_NAME

CLASSES = 4

WRITER = textwrap.dedent("""
    import os, sys, torch
    from models.checkpoint import atomic_save
    from tests.fault_launch import WRITE_ENV, write_faults
    path = sys.argv[1]
    with write_faults():
        for version in (1, 2, 3):
            if version == 3:  # the write fault SIGKILLs this process inside the write, after the data went out
                os.environ[WRITE_ENV] = "SIGKILL:"
            atomic_save({"version": version, "data": torch.full((1_000_000,), float(version))}, path)
            print(version, flush=True)
""")


class ForeignObject:
    """A class a checkpoint must not smuggle in (unpickling it could run code)."""


pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


def test_sigkill_during_checkpoint_write_keeps_previous_file(tmp_path):
    """A SIGKILL inside the third write (tests/fault_launch.py's write fault, so it always lands mid-write)
    leaves the second checkpoint whole and a temporary file that the trainer's start-up removes."""
    path = tmp_path / "last.pth"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path)], cwd=REPO, env=child_env(),
                          stdout=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["1", "2"]
    state = read_checkpoint(path)
    assert state["version"] == 2 and torch.equal(state["data"], torch.full((1_000_000,), 2.0))
    partial = [p for p in tmp_path.iterdir() if p.name != "last.pth"]
    assert len(partial) == 1 and partial[0].name.startswith(".last.pth.") and partial[0].name.endswith(".tmp")
    assert partial[0].stat().st_size > 4_000_000  # the kill came after the new data was written
    assert sweep_temporaries(tmp_path) == partial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_truncated_and_foreign_files_are_refused(tmp_path):
    good = tmp_path / "good.pth"
    atomic_save({"state_dict": {"conv1.weight": torch.randn(64, 3, 3, 3)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("arch: iresnet50\nlr: 0.1\n")
    custom = tmp_path / "custom.pth"
    torch.save({"model": ForeignObject()}, custom)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases = {truncated: "could not be read (truncated, corrupt", text: "is not a PyTorch checkpoint",
             custom: "holds Python objects other than tensors", empty: "is empty (0 bytes)"}
    for path, needle in cases.items():
        with pytest.raises(ValueError) as info:
            read_checkpoint(path)
        assert needle in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "absent.pth")


def _args(celeba_dir, tmp_path, *extra: str) -> list[str]:
    data = write_list(celeba_dir, tmp_path / "train.list", CLASSES, per_identity=4)
    return train_args(data, tmp_path / "run", CLASSES, batch=4, extra=extra)


def test_resume_refuses_damaged_and_non_resume_files(celeba_dir, tmp_path):
    args = _args(celeba_dir, tmp_path, "--max-steps", "1")
    train_entry.main(args)
    run_dir = tmp_path / "run"
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes((run_dir / "last.pth").read_bytes()[:-100])
    with pytest.raises(ValueError, match="could not be read"):
        train_entry.main([*args, "--resume", str(damaged)])
    with pytest.raises(ValueError, match="is not a resumable training state .* use --pretrained"):
        train_entry.main([*args, "--resume", str(run_dir / "step_00000001.pth")])


def test_resume_warns_about_each_changed_hyper_parameter(celeba_dir, tmp_path, caplog):
    args = _args(celeba_dir, tmp_path)
    first = build_run(config_from_args(get_args_parser().parse_args(args)), DistInfo())
    first.save_state(Position(0, 0, 0))
    changed = [*args, "--resume", "auto", "--lr", "0.05", "--lambda_g", "40", "--margin", "cos",
               "--workers", "1"]
    run = build_run(config_from_args(get_args_parser().parse_args(changed)), DistInfo())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            maybe_resume(run, steps_per_epoch=4)
    finally:
        logger.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("hyper-parameter changed: lr: checkpoint 0.1 -> now 0.05" in m for m in warned), warned
    assert any("lambda_g: checkpoint 35.0 -> now 40.0" in m for m in warned), warned
    assert any("margin: checkpoint 'arc' -> now 'cos'" in m for m in warned), warned
    assert len(warned) == 3, warned  # --workers and --resume do not change the optimisation: no warning


@pytest.mark.usefixtures("fault_injection")
def test_single_non_finite_loss_is_skipped(celeba_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGFACE_FAULT_NAN_STEPS", "2")
    args = _args(celeba_dir, tmp_path, "--max-steps", "4")
    train_entry.main(args)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "non-finite loss (nan) at epoch 0 step 3 (global step 3): step skipped" in log
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert state["position"]["global_step"] == 4
    # the NaN forward pass did not leave NaN BatchNorm statistics behind
    bad = [k for k, v in state["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, bad


@pytest.mark.usefixtures("fault_injection")
def test_run_of_non_finite_losses_stops_with_pre_divergence_weights(celeba_dir, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    args = _args(celeba_dir, tmp_path)
    train_entry.main([*args, "--pth-save-fold", str(reference), "--max-steps", "3"])
    monkeypatch.setenv("MAGFACE_FAULT_NAN_STEPS", "3-5")
    assert train_entry.cli([*args, "--max-nonfinite", "3"]) == 3
    run_dir = tmp_path / "run"
    log = (run_dir / "train.log").read_text()
    assert log.count("step skipped") == 3
    assert ("train.py: error: 3 consecutive non-finite losses up to epoch 1 step 2 (global step 6): the run "
            "diverged") in log
    assert "state from before the divergence (after global step 3) saved to" in log
    state = torch.load(run_dir / "last.pth", weights_only=True)
    assert state["position"] == {"epoch": 0, "step_in_epoch": 3, "global_step": 3}
    assert_same_weights(run_dir / "last.pth", reference / "last.pth")
    assert not math.isnan(float(state["state_dict"]["module.features.bn1.running_mean"].sum()))
