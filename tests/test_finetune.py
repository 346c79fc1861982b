"""Fine-tuning from a pretrained backbone: class-mean head init (single process and 2 gloo ranks), frozen units,
the backbone's lr multiplier, the convention taken from the pretrained file, the config recorded, and resume."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from dataloader import TensorImageDataset
from models import MagFaceHead, build_backbone
from models.backbones import backbone_units
from models.checkpoint import read_checkpoint, save_released
from run import train as train_entry
from run.head_init import class_mean_sums, frozen_modules, init_head_from_class_means
from tests.training import (
    ARCH,
    INPUT_SIZE,
    assert_same_weights,
    free_port,
    state_dict_of,
    torchrun,
    train_args,
    write_list,
)
from utils.convention import INSIGHTFACE, MAGFACE, convention_name, parse_convention
from utils.dist import DistInfo, cleanup, init_distributed

pytestmark = pytest.mark.usefixtures("one_thread_and_restore")
EMB = 64


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(ARCH, EMB, input_size=INPUT_SIZE)


def test_class_means_set_rows_and_leave_unseen_classes_random():
    data = TensorImageDataset.random(18, num_classes=5, seed=1)
    data.labels[data.labels == 4] = 0  # class 4 gets no face: its row must stay random
    backbone = tiny_backbone().eval()
    head = MagFaceHead(EMB, 5, init_seed=7)
    random_rows = head.weight.detach().clone()
    init_head_from_class_means(head, backbone, data, DistInfo(), torch.device("cpu"), MAGFACE,
                               batch_size=4)
    with torch.no_grad():
        emb = F.normalize(backbone(data.images.float() / 255.0), dim=1)
    for c in range(4):
        expected = F.normalize(emb[data.labels == c].mean(0), dim=0)
        torch.testing.assert_close(head.weight[c], expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(head.weight[4], random_rows[4])
    assert backbone.training is False  # put back as it was


def _sums_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_distributed(backend="gloo", timeout_s=60)
    try:
        data = TensorImageDataset.random(11, num_classes=4, seed=2)  # 11 faces: ranks get 6 and 5
        sums, counts = class_mean_sums(tiny_backbone(), data, 4, info, torch.device("cpu"), MAGFACE, batch_size=3)
        torch.save({"sums": sums, "counts": counts}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        cleanup()


def test_class_means_on_two_gloo_ranks_equal_one_process(tmp_path):
    context = mp.start_processes(_sums_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1.0):
        assert time.monotonic() < deadline, "gloo workers hung"
    data = TensorImageDataset.random(11, num_classes=4, seed=2)
    sums, counts = class_mean_sums(tiny_backbone(), data, 4, DistInfo(), torch.device("cpu"),
                                   MAGFACE, batch_size=3)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["counts"], counts) and int(counts.sum()) == 11
        torch.testing.assert_close(got["sums"], sums, rtol=1e-6, atol=1e-6)


def test_frozen_units_must_leave_one_to_train():
    model = tiny_backbone()
    assert len(frozen_modules(model, 2)) == 4  # stem (conv1, bn1, prelu) + layer1
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]"):
        frozen_modules(model, len(backbone_units(model)))


def test_convention_names_read_back():
    for conv in (MAGFACE, INSIGHTFACE, parse_convention("RGB:0.1,0.2,0.3:0.5,0.5,0.25")):
        assert parse_convention(convention_name(conv)) == conv


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A 'pretrained' backbone in the released layout with a non-default input convention."""
    path = tmp_path / "pretrained.pth"
    save_released(path, tiny_backbone(seed=5), None, epoch=3, arch=ARCH, config={"input_size": INPUT_SIZE},
                  convention=INSIGHTFACE)
    return path


def finetune_args(data: Path, out: Path, pretrained: Path, steps: int, *extra: str) -> list[str]:
    return train_args(data, out, classes=6, batch=8, epochs=3, extra=(
        "--pretrained", str(pretrained), "--head-init", "class-means", "--freeze-depth", "2",
        "--backbone-lr-mult", "0.5", "--lr", "0.05", "--max-steps", str(steps), *extra))


def test_finetune_freezes_records_and_resumes_exactly(celeba_dir, tmp_path, pretrained):
    data = write_list(celeba_dir, tmp_path / "train.list", identities=6, per_identity=4)  # 24 faces: 3 steps/epoch
    ref = tmp_path / "ref"
    train_entry.main(finetune_args(data, ref, pretrained, 5))
    log = (ref / "train.log").read_text()
    assert "head rows initialised from class means of 24 faces (6 classes; 0 without a face" in log
    assert "--freeze-depth 2:" in log

    final = state_dict_of(ref / "last.pth")
    start = state_dict_of(pretrained)
    frozen = [k for k in start if k.split(".")[2] in ("conv1", "bn1", "prelu", "layer1")]
    trained = [k for k in start if k.startswith("module.features.layer4.") and k.endswith("weight")]
    assert frozen and trained
    assert all(torch.equal(final[k], start[k]) for k in frozen), "a frozen weight or BN statistic moved"
    assert not any(torch.equal(final[k], start[k]) for k in trained)

    obj = read_checkpoint(ref / "last.pth")
    cfg = obj["config"]
    assert (cfg["head_init"], cfg["freeze_depth"], cfg["backbone_lr_mult"]) == ("class-means", 2, 0.5)
    assert cfg["input_convention"] == "insightface"  # 'auto' took the pretrained file's convention
    assert obj["input_convention"] == INSIGHTFACE.to_dict()
    assert json.loads((ref / "config.json").read_text())["input_convention"] == "insightface"
    groups = obj["optimizer"]["param_groups"]
    assert len(groups) == 1 and groups[0]["lr_scale"] == 0.5

    # interrupted after 2 steps, resumed to 5: identical to the uninterrupted run, head not re-initialised
    cut = tmp_path / "cut"
    train_entry.main(finetune_args(data, cut, pretrained, 2))
    train_entry.main(finetune_args(data, cut, pretrained, 5, "--resume", "auto"))
    assert_same_weights(ref / "last.pth", cut / "last.pth")
    assert (cut / "train.log").read_text().count("head rows initialised") == 1


def test_backbone_lr_mult_zero_trains_the_head_alone(celeba_dir, tmp_path, pretrained):
    data = write_list(celeba_dir, tmp_path / "train.list", identities=6, per_identity=4)
    out = tmp_path / "run"
    train_entry.main(train_args(data, out, classes=6, batch=8, epochs=1, extra=(
        "--pretrained", str(pretrained), "--backbone-lr-mult", "0", "--lr", "0.05", "--max-steps", "2")))
    final, start = state_dict_of(out / "last.pth"), state_dict_of(pretrained)
    weights = [k for k in start if k.endswith("weight") or k.endswith("bias")]
    assert all(torch.equal(final[k], start[k]) for k in weights)


@pytest.mark.slow
def test_distributed_finetune_runs_on_gloo(celeba_dir, tmp_path, pretrained):
    """torchrun, 2 ranks, the sharded head initialised from class means that each rank summed over half the faces."""
    data = write_list(celeba_dir, tmp_path / "train.list", identities=6, per_identity=4)
    out = tmp_path / "dist"
    done = torchrun(2, finetune_args(data, out, pretrained, 2), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (out / "train.log").read_text()
    assert "head rows initialised from class means of 24 faces (6 classes" in log
    assert read_checkpoint(out / "last.pth")["config"]["world_size"] == 2
