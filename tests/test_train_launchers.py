"""run/run.sh, run/run_dist.sh and run/run_dist_cos.sh: usage, the published recipe, pass-through flags."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.training import REPO, child_env, free_port, write_list

SCRIPTS = ("run.sh", "run_dist.sh", "run_dist_cos.sh")
# the published recipe, as config.json records it (FORMATS.md)
RECIPE = {"arch": "iresnet100", "last_fc_size": 85742, "batch_size": 512, "lr": 0.1, "lr_drop_epoch": [10, 18, 22],
          "epochs": 25, "momentum": 0.9, "weight_decay": 5e-4, "arc_scale": 64.0, "l_a": 10.0, "u_a": 110.0,
          "embedding_size": 512, "resume": "auto"}
ARC = {"margin": "arc", "l_margin": 0.45, "u_margin": 0.8, "lambda_g": 35.0}
COS = {"margin": "cos", "l_margin": 0.35, "u_margin": 0.8, "lambda_g": 150.0}
# what a CPU smoke run has to override; everything else stays as published
SMALL = ["--arch", "iresnet18_w16", "--embedding-size", "64", "--input-size", "56", "--last-fc-size", "4",
         "--batch-size", "8", "--device", "cpu", "--workers", "0", "--max-steps", "1", "--tensorboard", "0"]


def bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run" / script), *args], cwd=REPO, env=child_env(**env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_and_missing_data(script, tmp_path):
    text = (REPO / "run" / script).read_text()
    assert not [bad for bad in ("/work/", "/home/", "/mnt/", "/nfs/", "/scratch/") if bad in text]  # no machine paths
    helped = bash(script, "--help")
    assert helped.returncode == 2 and "DATA" in helped.stdout
    missing = bash(script, str(tmp_path / "absent.list"))
    assert missing.returncode == 2 and "does not exist" in missing.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script, nproc, margin", [("run.sh", 0, ARC), ("run_dist_cos.sh", 2, COS)])
def test_launcher_runs_the_published_recipe(celeba_dir, tmp_path, script, nproc, margin):
    data = write_list(celeba_dir, tmp_path / "train.list", identities=4, per_identity=4)
    out = tmp_path / "out"
    env = {"OUT": str(out)}
    if nproc:
        env.update(NPROC=str(nproc), MASTER_PORT=str(free_port()), MAX_RESTARTS="0")
    done = bash(script, str(data), *SMALL, **env)
    assert done.returncode == 0, done.stdout[-3000:]
    config = json.loads((out / "config.json").read_text())
    expected = RECIPE | margin | {"arch": "iresnet18_w16", "last_fc_size": 4, "batch_size": 8, "embedding_size": 64}
    assert {k: config[k] for k in expected} == expected
    assert config["world_size"] == max(nproc, 1) and config["train_list"] == str(data)
    assert (out / "last.pth").is_file()
