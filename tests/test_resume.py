"""Resuming reproduces the uninterrupted run, and a last.pth moves between world sizes.

(a) save -> load -> continue gives bit-identical weights, BN statistics, head and momenta to a run that
    never stopped (CPU, --deterministic, same seed), from an epoch-aligned stop (--max-steps) and from a
    mid-epoch last.pth written by --save-every-steps (the process dies at the next step);
(b) a last.pth written by 2 gloo ranks resumes in 1 process and vice versa: the whole head and its
    momentum are re-sliced to the new shards and the run continues.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from models.collectives import shard_range
from run import train as train_entry
from run import train_dist
from run.build import build_run, maybe_resume
from run.config import config_from_args, get_args_parser
from run.trainer import train
from tests.training import (
    assert_same_weights,
    child_env,
    free_port,
    run_python,
    state_dict_of,
    train_args,
    train_module,
    write_list,
)
from utils.dist import DistInfo, barrier, cleanup, exit_process, init_distributed

CLASSES = 5
EXTRA = ("--dropout", "0.2", "--lr", "0.05")  # dropout draws from the global RNG: resume must replay it


pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


@pytest.fixture(scope="module")
def data(celeba_dir, tmp_path_factory) -> Path:
    return write_list(celeba_dir, tmp_path_factory.mktemp("data") / "train.list", CLASSES, per_identity=8)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted run: 2 epochs of 5 steps."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    train_entry.main(train_args(data, out, CLASSES, extra=EXTRA))
    return out


def _optimizer_states_equal(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p / "last.pth", weights_only=True) for p in (a, b))
    assert sa["position"] == sb["position"]
    torch.testing.assert_close(sa["head_optimizer"]["momentum"], sb["head_optimizer"]["momentum"], rtol=0, atol=0)
    for key, state in sa["optimizer"]["state"].items():
        torch.testing.assert_close(state["momentum_buffer"], sb["optimizer"]["state"][key]["momentum_buffer"],
                                   rtol=0, atol=0)


def test_resume_after_max_steps_equals_uninterrupted(data, reference, tmp_path):
    args = train_args(data, tmp_path, CLASSES, extra=EXTRA)
    train_entry.main([*args, "--max-steps", "3"])
    assert torch.load(tmp_path / "last.pth", weights_only=True)["position"]["global_step"] == 3
    with pytest.raises(AssertionError):  # 3 steps are not 10: the comparison below can fail
        assert_same_weights(tmp_path / "last.pth", reference / "last.pth")
    train_entry.main([*args, "--resume", "auto", "--workers", "1"])  # loader workers do not change the data
    assert_same_weights(tmp_path / "00002.pth", reference / "00002.pth")
    assert_same_weights(tmp_path / "last.pth", reference / "last.pth")
    _optimizer_states_equal(tmp_path, reference)


def test_resume_keeps_the_fp16_loss_scale(data, tmp_path):
    """fp16 on the CPU: GradScaler backs off from 65536 in the first steps; resume must restore the scale."""
    fp16 = (*EXTRA, "--amp", "fp16")
    train_entry.main(train_args(data, tmp_path / "ref", CLASSES, extra=fp16))
    args = train_args(data, tmp_path / "run", CLASSES, extra=fp16)
    train_entry.main([*args, "--max-steps", "3"])
    scale = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["scaler"]["scale"]
    assert scale < 2.0**16, "no overflow in the first steps: this test would not see a lost scale"
    train_entry.main([*args, "--resume", "auto"])
    assert_same_weights(tmp_path / "run" / "00002.pth", tmp_path / "ref" / "00002.pth")
    saved = [torch.load(tmp_path / d / "last.pth", weights_only=True)["scaler"] for d in ("run", "ref")]
    assert saved[0] == saved[1]


@pytest.mark.slow
def test_resume_from_mid_epoch_save_every_steps(data, reference, tmp_path):
    """--save-every-steps 3 writes last.pth at step 6 (epoch 1, step 1); the process dies at step 7."""
    args = train_args(data, tmp_path, CLASSES, extra=(*EXTRA, "--save-every-steps", "3"))
    crashed = run_python([*train_module("run.train", faults=True), *args], timeout=300,
                         env=child_env(MAGFACE_FAULT_EXIT_STEP="7"))
    assert crashed.returncode == 13, crashed.stdout[-3000:]
    assert torch.load(tmp_path / "last.pth", weights_only=True)["position"] == \
        {"epoch": 1, "step_in_epoch": 1, "global_step": 6}
    resumed = run_python(["-m", "run.train", *args, "--resume", "auto"], timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout and "at epoch 1 step 1 (global step 6)" in resumed.stdout
    assert_same_weights(tmp_path / "00002.pth", reference / "00002.pth")
    _optimizer_states_equal(tmp_path, reference)


def _check_resliced(cfg_args: list[str], dist_info: DistInfo, resume: Path) -> None:
    """Load ``resume`` into a fresh run at this world size: shard = the file's rows, momentum too."""
    cfg = config_from_args(get_args_parser().parse_args([*cfg_args, "--resume", str(resume)]))
    run = build_run(cfg, dist_info)
    pos = maybe_resume(run, steps_per_epoch=5)
    saved = torch.load(resume, weights_only=True)
    start, end = shard_range(CLASSES, dist_info.world_size, dist_info.rank)
    full = saved["state_dict"]["module.fc.weight"].t()
    assert run.head.weight.shape[0] == end - start
    torch.testing.assert_close(run.head.weight.detach(), full[start:end], rtol=0, atol=0)
    momentum = run.opt_head.state[run.head.weight]["momentum_buffer"]
    torch.testing.assert_close(momentum, saved["head_optimizer"]["momentum"][start:end], rtol=0, atol=0)
    torch.testing.assert_close(run.backbone.fc.weight.detach(), saved["state_dict"]["module.features.fc.weight"],
                               rtol=0, atol=0)
    assert (pos.epoch, pos.step_in_epoch, pos.global_step) == (0, 3, 3)


def _two_ranks(rank: int, port: int, args: list[str], check_resume: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if not check_resume:
        train_dist.main(args)
        exit_process(0)  # success: skip the gloo teardown that can abort at interpreter exit
    info = init_distributed(backend="gloo")
    try:
        _check_resliced(args, info, Path(check_resume))
        train(config_from_args(get_args_parser().parse_args([*args, "--resume", check_resume])), info)
        barrier()
    finally:
        cleanup()
    exit_process(0)


@pytest.mark.slow
def test_two_ranks_to_one_process(data, tmp_path):
    args = train_args(data, tmp_path, CLASSES, extra=EXTRA)
    mp.spawn(_two_ranks, args=(free_port(), [*args, "--max-steps", "3"], ""), nprocs=2, join=True)
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert saved["config"]["world_size"] == 2 and saved["state_dict"]["module.fc.weight"].shape == (64, CLASSES)
    _check_resliced(args, DistInfo(), tmp_path / "last.pth")
    train_entry.main([*args, "--resume", str(tmp_path / "last.pth"), "--max-steps", "5"])
    done = torch.load(tmp_path / "last.pth", weights_only=True)
    assert done["position"]["global_step"] == 5 and done["config"]["world_size"] == 1
    assert "world size 2 -> 1" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_one_process_to_two_ranks(data, tmp_path):
    args = train_args(data, tmp_path, CLASSES, extra=EXTRA)
    train_entry.main([*args, "--max-steps", "3"])
    before = state_dict_of(tmp_path / "last.pth")
    mp.spawn(_two_ranks, args=(free_port(), [*args, "--max-steps", "5"], str(tmp_path / "last.pth")), nprocs=2,
             join=True)
    done = torch.load(tmp_path / "last.pth", weights_only=True)
    assert done["position"]["global_step"] == 5 and done["config"]["world_size"] == 2
    assert not torch.equal(done["state_dict"]["module.fc.weight"], before["module.fc.weight"])


def test_resume_with_damage_augmentation_equals_uninterrupted(data, tmp_path):
    """--degrade-prob draws from (seed, rank, step) only: a resumed run damages the same faces the same way."""
    degrade = (*EXTRA, "--degrade-prob", "0.5", "--degrade-kinds", "all", "--degrade-max-severity", "0.8")
    train_entry.main(train_args(data, tmp_path / "ref", CLASSES, extra=degrade))
    args = train_args(data, tmp_path / "run", CLASSES, extra=degrade)
    train_entry.main([*args, "--max-steps", "3"])
    train_entry.main([*args, "--resume", "auto", "--workers", "1"])
    assert_same_weights(tmp_path / "run" / "last.pth", tmp_path / "ref" / "last.pth")
    train_entry.main(train_args(data, tmp_path / "plain", CLASSES, extra=EXTRA))
    with pytest.raises(AssertionError):  # the augmentation changed the training: the check above can fail
        assert_same_weights(tmp_path / "plain" / "last.pth", tmp_path / "ref" / "last.pth")
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert saved["config"]["degrade_prob"] == 0.5 and saved["config"]["degrade_max_severity"] == 0.8
