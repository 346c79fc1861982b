"""--sample-rate through the trainer: the sampled head is built where asked, a resumed sampled run replays the
uninterrupted one bit for bit (the draw comes from the per-(seed, rank, step) RNG), and a sampled last.pth written
by 2 gloo ranks continues in one process.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from models.magface import MagFaceHead
from models.sharded import ShardedMagFaceHead
from run import train as train_entry
from run import train_dist
from run.build import build_head
from run.config import config_from_args, get_args_parser
from tests.training import assert_same_weights, free_port, train_args, write_list
from utils.dist import DistInfo, exit_process

CLASSES = 10
SAMPLED = ("--sample-rate", "0.3", "--lr", "0.05", "--batch-size", "4")

pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


@pytest.fixture(scope="module")
def data(celeba_dir, tmp_path_factory) -> Path:
    return write_list(celeba_dir, tmp_path_factory.mktemp("data") / "train.list", CLASSES, per_identity=4)


def _config(data: Path, out: Path, *extra: str):
    return config_from_args(get_args_parser().parse_args(train_args(data, out, CLASSES, extra=extra)))


def test_the_sampled_head_is_built_where_asked(data, tmp_path):
    cpu = torch.device("cpu")
    assert type(build_head(_config(data, tmp_path), DistInfo(), cpu)) is MagFaceHead
    head = build_head(_config(data, tmp_path, "--sample-rate", "0.3"), DistInfo(), cpu)
    assert isinstance(head, ShardedMagFaceHead) and head.sample_rate == 0.3 and head.weight.shape[0] == CLASSES
    refused = {("--sample-rate", "0"): "must lie in", ("--sample-rate", "1.5"): "must lie in",
               ("--sample-rate", "0.5", "--head-impl", "fused"): "needs the class-sharded head"}
    for bad, message in refused.items():
        with pytest.raises(ValueError, match=message):
            _config(data, tmp_path, *bad)


def test_a_resumed_sampled_run_equals_the_uninterrupted_one(data, tmp_path):
    train_entry.main(train_args(data, tmp_path / "ref", CLASSES, epochs=1, extra=SAMPLED))
    args = train_args(data, tmp_path / "run", CLASSES, epochs=1, extra=SAMPLED)
    train_entry.main([*args, "--max-steps", "4"])
    train_entry.main([*args, "--resume", "auto"])
    assert_same_weights(tmp_path / "run" / "last.pth", tmp_path / "ref" / "last.pth")
    assert torch.load(tmp_path / "ref" / "last.pth", weights_only=True)["config"]["sample_rate"] == 0.3
    exact = train_args(data, tmp_path / "exact", CLASSES, epochs=1, extra=(*SAMPLED[2:], "--sample-rate", "1"))
    train_entry.main(exact)
    with pytest.raises(AssertionError):  # sampling changed the training: the comparison above can fail
        assert_same_weights(tmp_path / "exact" / "last.pth", tmp_path / "ref" / "last.pth")


def _rank(rank: int, port: int, args: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train_dist.main(args)
    exit_process(0)  # success: skip the gloo teardown that can abort at interpreter exit


@pytest.mark.slow
def test_a_sampled_two_rank_run_continues_in_one_process(data, tmp_path):
    args = train_args(data, tmp_path, CLASSES, epochs=1, extra=SAMPLED)
    mp.spawn(_rank, args=(free_port(), [*args, "--max-steps", "3"]), nprocs=2, join=True)
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert saved["config"]["world_size"] == 2 and saved["config"]["sample_rate"] == 0.3
    assert saved["state_dict"]["module.fc.weight"].shape == (64, CLASSES)  # the whole head, gathered
    train_entry.main([*args, "--resume", "auto", "--max-steps", "6"])
    done = torch.load(tmp_path / "last.pth", weights_only=True)
    assert done["position"]["global_step"] == 6 and done["config"]["world_size"] == 1
    log = (tmp_path / "train.log").read_text()
    assert "world size 2 -> 1" in log and "sample_rate" not in log.split("world size 2 -> 1")[1].split("\n")[0]
