"""The seed's trainer command lines, ``--vis_mag`` and verification while training (``--val-bin``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from eval.bin_io import pack_bin, read_bin
from eval.verification import evaluate_pairs
from inference.extract import embed_array
from models.checkpoint import load_backbone
from run.config import BENIGN_KEYS, TrainConfig, config_from_args, get_args_parser
from run.vis_mag import target_statistics
from tests.training import (
    assert_same_weights,
    free_port,
    state_dict_of,
    torchrun,
    write_list,
)

pytestmark = pytest.mark.usefixtures("one_thread_and_restore")

# FORMATS.md "The seed's command lines": run/run.sh (trainer.py), run_dist.sh and run_dist_cos.sh (trainer_dist.py)
COMMON = ["--arch", "iresnet50", "--train_list", "L", "--epochs", "25", "--start-epoch", "0", "--batch-size", "512",
          "--embedding-size", "512"]
TAIL = ["--learning-rate", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4", "--lr-drop-epoch", "10", "18", "22",
        "--lr-drop-ratio", "0.1", "--print-freq", "100", "--pth-save-fold", "OUT", "--pth-save-epoch", "1",
        "--l_a", "10", "--u_a", "110"]
SEED = {
    "run.sh": [*COMMON[:4], "--workers", "8", *COMMON[4:], "--last-fc-size", "85742", "--arc-scale", "64", *TAIL,
               "--l_margin", "0.45", "--u_margin", "0.8", "--lambda_g", "35", "--vis_mag", "1"],
    "run_dist.sh": [*COMMON[:4], "--workers", "1", *COMMON[4:], "--last-fc-size", "85744", *TAIL,
                    "--l_margin", "0.45", "--u_margin", "0.8", "--lambda_g", "35", "--vis_mag", "1", "--fp16", "0"],
    "run_dist_cos.sh": [*COMMON[:4], "--workers", "1", *COMMON[4:], "--last-fc-size", "85744", *TAIL, "--arc",
                        "0", "--l_margin", "0.35", "--u_margin", "0.8", "--lambda_g", "150", "--vis_mag", "1",
                        "--fp16", "0"],
}
EXPECTED = {"arch": "iresnet50", "train_list": "L", "epochs": 25, "start_epoch": 0, "batch_size": 512,
            "embedding_size": 512, "arc_scale": 64.0, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
            "lr_drop_epoch": [10, 18, 22], "lr_drop_ratio": 0.1, "print_freq": 100, "pth_save_fold": "OUT",
            "pth_save_epoch": 1, "l_a": 10.0, "u_a": 110.0, "u_margin": 0.8, "vis_mag": 1, "amp": "none"}
PER_SCRIPT = {
    "run.sh": {"workers": 8, "last_fc_size": 85742, "margin": "arc", "l_margin": 0.45, "lambda_g": 35.0},
    "run_dist.sh": {"workers": 1, "last_fc_size": 85744, "margin": "arc", "l_margin": 0.45, "lambda_g": 35.0},
    "run_dist_cos.sh": {"workers": 1, "last_fc_size": 85744, "margin": "cos", "l_margin": 0.35, "lambda_g": 150.0},
}
# appended by the tests (last wins, as the launchers pass extra flags): a tiny CPU run
SMALL = ["--arch", "iresnet18_w16", "--embedding-size", "64", "--input-size", "56", "--last-fc-size", "4",
         "--batch-size", "8", "--device", "cpu", "--workers", "0", "--tensorboard", "0", "--deterministic", "1",
         "--vis-mag-start", "0", "--vis-mag-every", "1", "-p", "1"]


def parse(argv: list[str]) -> TrainConfig:
    return config_from_args(get_args_parser().parse_args(argv))


@pytest.mark.parametrize("script", sorted(SEED))
def test_seed_command_lines_parse_to_the_recipe(script):
    cfg = parse(SEED[script]).to_dict()
    expected = EXPECTED | PER_SCRIPT[script]
    assert {k: cfg[k] for k in expected} == expected


def test_short_forms_and_defaults():
    cfg = parse(["--train_list", "L", "-j", "3", "-b", "64", "-p", "7", "--lr", "0.2", "--wd", "1e-4", "--fp16", "1"])
    assert (cfg.workers, cfg.batch_size, cfg.print_freq, cfg.lr, cfg.weight_decay, cfg.amp) == (3, 64, 7, 0.2, 1e-4,
                                                                                                 "fp16")
    plain = parse(["--train_list", "L"])
    assert (plain.vis_mag, plain.val_bin, plain.val_every, plain.save_best, plain.amp, plain.margin) == \
        (0, [], 0, False, "none", "arc")
    monitoring = {"vis_mag", "vis_mag_start", "vis_mag_every", "val_bin", "val_every", "val_batch_size", "save_best"}
    assert monitoring <= BENIGN_KEYS


def test_bad_monitoring_flags_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--save-best needs --val-bin"):
        parse(["--train_list", "L", "--save-best"])
    with pytest.raises(FileNotFoundError, match=f"--val-bin: verification set not found: {tmp_path}/no.bin"):
        parse(["--train_list", "L", "--val-bin", str(tmp_path / "no.bin")])
    with pytest.raises(ValueError, match="--vis-mag-every must be >= 1"):
        parse(["--train_list", "L", "--vis-mag-every", "0"])


def small_bin(lfw_dir: Path, tmp_path: Path, pairs: int = 12) -> Path:
    lines = (lfw_dir / "img.list").read_text().splitlines()[: 2 * pairs]
    (tmp_path / "val_img.list").write_text("".join(f"{lfw_dir / line.split()[0]}\n" for line in lines))
    # the list holds same-person pairs (rows 2i, 2i+1); cross the odd pairs to get impostors too
    rows = [(2 * i, 2 * i + 1, 1) if i % 2 == 0 else (2 * i, (2 * i + 3) % (2 * pairs), 0) for i in range(pairs)]
    (tmp_path / "val_pair.list").write_text("".join(f"{i} {j} {s}\n" for i, j, s in rows))
    pack_bin(tmp_path / "val_img.list", tmp_path / "val_pair.list", tmp_path / "val.bin")
    return tmp_path / "val.bin"


def check_vis_file(path: Path, batch: int, scale: float = 64.0) -> None:
    with np.load(path) as dump:
        assert sorted(dump.files) == ["arr_0", "arr_1", "arr_2"]
        x_norm, prob, scaled_cos = dump["arr_0"], dump["arr_1"], dump["arr_2"]
    assert x_norm.shape == prob.shape == scaled_cos.shape == (batch,)
    assert (x_norm > 0).all() and ((prob > 0) & (prob <= 1)).all() and (np.abs(scaled_cos) <= scale).all()
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_seed_trainer_argv_runs_with_vis_mag_and_validation(celeba_dir, lfw_dir, tmp_path):
    """run.sh's exact argv (+ small overrides): the seed's vis files, and validation that scores the model
    exactly as eval.verification scores the checkpoint written at the same step."""
    from run.train import main

    data = write_list(celeba_dir, tmp_path / "train.list", identities=4, per_identity=4)
    val_bin, out = small_bin(lfw_dir, tmp_path), tmp_path / "out"
    argv = [a.replace("OUT", str(out)).replace("L", str(data)) if a in ("OUT", "L") else a for a in SEED["run.sh"]]
    main([*argv, *SMALL, "--max-steps", "3", "--val-bin", str(val_bin), "--val-every", "3", "--save-best"])
    # 2 steps per epoch: the seed's rule i > start, i % every == 0 on the step in the epoch (0-based)
    assert sorted(p.name for p in (out / "vis").glob("*.npz")) == ["epoch_0_iter1.npz"]
    check_vis_file(out / "vis" / "epoch_0_iter1.npz", batch=8)

    record = json.loads((out / "val_metrics.json").read_text())
    assert [h["global_step"] for h in record["history"]] == [3] and record["best_global_step"] == 3
    images, issame = read_bin(val_bin)
    model, conv, _ = load_backbone(out / "step_00000003.pth")  # written at --max-steps 3
    feats = embed_array(model, images, convention=conv, prepare=False)
    expected = evaluate_pairs(feats[0::2], feats[1::2], issame)
    got = record["sets"]["val"]
    assert got["best_accuracy"] == pytest.approx(expected["accuracy_mean"])
    assert got["best_threshold"] == pytest.approx(expected["threshold"])
    mags = np.linalg.norm(feats, axis=1)
    assert record["last"]["sets"]["val"]["magnitude"]["p50"] == pytest.approx(np.median(mags), rel=1e-4)
    assert_same_weights(out / "best.pth", out / "step_00000003.pth")


@pytest.mark.slow
def test_monitoring_leaves_training_and_resume_bitwise_unchanged(celeba_dir, lfw_dir, tmp_path):
    from run.train import main

    data = write_list(celeba_dir, tmp_path / "train.list", identities=4, per_identity=4)
    val_bin = small_bin(lfw_dir, tmp_path)
    base = ["--train_list", str(data), "--seed", "3", "--dropout", "0.2", *SMALL]
    main([*base, "--pth-save-fold", str(tmp_path / "plain"), "--max-steps", "4"])
    watched = [*base, "--pth-save-fold", str(tmp_path / "watched"), "--vis_mag", "1", "--val-bin", str(val_bin),
               "--val-every", "1", "--save-best", "--resume", "auto"]
    main([*watched, "--max-steps", "2"])
    main([*watched, "--max-steps", "4"])
    assert_same_weights(tmp_path / "plain" / "last.pth", tmp_path / "watched" / "last.pth")
    record = json.loads((tmp_path / "watched" / "val_metrics.json").read_text())
    assert [h["global_step"] for h in record["history"]] == [1, 2, 3, 4]
    best = max(record["history"], key=lambda h: h["mean_accuracy"])  # the first of the best, as kept
    assert record["best_global_step"] == best["global_step"]


def _shard_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from models.collectives import shard_range
    from utils.dist import cleanup, init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    init_distributed(backend="gloo", timeout_s=60)
    try:
        for classes in (7, 2):  # uneven shards; 2 classes on 3 ranks leaves rank 2 without any
            emb, labels, weight = _case(classes)
            start, end = shard_range(classes, world, rank)
            stats = target_statistics(emb, labels, weight[start:end], 64.0, start, distributed=True)
            torch.save(stats, Path(out_dir) / f"rank{rank}_{classes}.pt")
    finally:
        cleanup()


def _case(classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(classes)
    return torch.randn(70, 16, generator=gen) * 5, torch.randint(0, classes, (70,), generator=gen), \
        torch.randn(classes, 16, generator=gen)


@pytest.mark.slow
def test_target_statistics_sharded_equals_dense(tmp_path):
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_shard_worker, args=(3, free_port(), str(tmp_path)), nprocs=3, start_method=method)
    for classes in (7, 2):
        emb, labels, weight = _case(classes)
        logits = 64.0 * F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).t()
        expected = (emb.norm(dim=1), F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1),
                    logits.gather(1, labels[:, None]).squeeze(1))
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6)
                   for a, b in zip(target_statistics(emb, labels, weight, 64.0), expected, strict=True))
        for rank in range(3):
            got = torch.load(tmp_path / f"rank{rank}_{classes}.pt")
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_seed_dist_cos_argv_under_torchrun_with_monitoring(celeba_dir, lfw_dir, tmp_path):
    data = write_list(celeba_dir, tmp_path / "train.list", identities=4, per_identity=4)
    val_bin, out = small_bin(lfw_dir, tmp_path), tmp_path / "out"
    argv = [a.replace("OUT", str(out)).replace("L", str(data)) if a in ("OUT", "L") else a
            for a in SEED["run_dist_cos.sh"]]
    done = torchrun(2, [*argv, *SMALL, "--max-steps", "3", "--val-bin", str(val_bin), "--val-every", "2",
                        "--save-best", "--dist-timeout", "120"], timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "world size 2, 4/rank x 2 steps/epoch" in done.stdout
    check_vis_file(out / "vis" / "epoch_0_iter1.npz", batch=8)  # the whole global batch, gathered
    record = json.loads((out / "val_metrics.json").read_text())
    assert [h["global_step"] for h in record["history"]] == [2] and record["best_global_step"] == 2
    config = json.loads((out / "config.json").read_text())
    assert (config["margin"], config["lambda_g"], config["world_size"]) == ("cos", 150.0, 2)
    assert state_dict_of(out / "best.pth")["module.fc.weight"].shape == (64, 4)
