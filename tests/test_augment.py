"""The optional damage augmentation: off by default, recorded in config.json, a pure function of its seeds."""
from __future__ import annotations

import json

import pytest
import torch

from dataloader.augment import DegradeAugment, parse_kinds
from faces.degrade import KINDS
from run.config import TrainConfig, config_differences, config_from_args, get_args_parser


def _faces(celeba_dir, n: int = 6) -> torch.Tensor:
    import cv2

    paths = sorted((celeba_dir).rglob("*.jpg"))[:n]
    return torch.stack([torch.from_numpy(cv2.imread(str(p))).permute(2, 0, 1).contiguous() for p in paths])


def test_off_by_default_and_recorded_in_config(tmp_path):
    cfg = TrainConfig(synthetic=8)
    assert cfg.degrade_prob == 0.0
    args = get_args_parser().parse_args(["--synthetic", "8", "--degrade-prob", "0.3", "--degrade-kinds", "blur,dark",
                                         "--degrade-max-severity", "0.5"])
    cfg = config_from_args(args)
    cfg.save_json(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["degrade_prob"], saved["degrade_kinds"], saved["degrade_max_severity"]) == (0.3, "blur,dark", 0.5)
    assert any("degrade_prob" in d for d in config_differences(saved, TrainConfig(synthetic=8)))
    old = {k: v for k, v in TrainConfig(synthetic=8).to_dict().items() if not k.startswith("degrade")}
    assert config_differences(old, TrainConfig(synthetic=8)) == []  # a checkpoint from before the option


@pytest.mark.parametrize("flags", [["--degrade-prob", "1.5"], ["--degrade-kinds", "blur,smudge"],
                                   ["--degrade-max-severity", "-0.1"], ["--degrade-kinds", ""]])
def test_bad_values_are_named(flags):
    with pytest.raises(ValueError, match="--degrade-"):
        config_from_args(get_args_parser().parse_args(["--synthetic", "8", *flags]))


def test_parse_kinds():
    assert parse_kinds("all") == KINDS
    assert parse_kinds(" noise, jpeg ") == ("noise", "jpeg")


def test_damage_is_a_pure_function_of_seed_rank_step(celeba_dir):
    images = _faces(celeba_dir)
    keep = images.clone()
    aug = DegradeAugment(0.5, KINDS, 1.0)
    a = aug(images, seed=3, rank=0, step=7)
    assert torch.equal(images, keep), "the input batch must not be modified"
    assert torch.equal(a, aug(images, seed=3, rank=0, step=7))
    others = [aug(images, seed=s, rank=r, step=t) for s, r, t in ((4, 0, 7), (3, 1, 7), (3, 0, 8))]
    assert all(not torch.equal(a, o) for o in others)
    assert torch.equal(DegradeAugment(0.0)(images, 3, 0, 7), images)
    every = DegradeAugment(1.0, ("noise",), 1.0)(images, 3, 0, 7)
    changed = [(every[i] != images[i]).any().item() for i in range(len(images))]
    assert sum(changed) >= len(images) - 1  # noise changes pixels at any severity above ~0.01
