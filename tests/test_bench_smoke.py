"""Each benchmark runs at tiny settings on CPU and writes its JSON (the numbers themselves are not judged)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import bench_gen_feat, bench_sharded_head, bench_train

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["machine"]["usable_cores"] >= 1 and data["machine"]["torch"]
    return data


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "train.json"
    bench_train.main(["--archs", "iresnet18_w16", "--amp", "none", "--channels-last", "on", "--compile", "off",
                      "--data", "rec,tensor", "--batch-size", "8", "--classes", "50", "--embedding-size", "64",
                      "--steps", "2", "--warmup", "1", "--workers", "1", "--rec-images", "32",
                      "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    rows = _load(out)["results"]
    assert [r["data"] for r in rows] == ["rec", "tensor"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["img_s"] > 0 and r["peak_rss_mb"] > 0 and 0 <= r["data_wait_pct"] <= 100
    assert (tmp_path / "cache" / "faces_32_50" / "complete").is_file()


def test_bench_train_reports_a_failing_configuration(tmp_path):
    out = tmp_path / "train.json"
    bench_train.main(["--archs", "no_such_arch,iresnet18_w16", "--amp", "none", "--data", "tensor",
                      "--batch-size", "4", "--classes", "20", "--embedding-size", "32", "--steps", "1",
                      "--warmup", "1", "--rec-images", "8", "--cache-dir", str(tmp_path / "cache"),
                      "--json", str(out)])
    rows = _load(out)["results"]
    assert rows[0]["status"].startswith("FAILED ValueError") and "no_such_arch" in rows[0]["status"]
    assert rows[1]["status"] == "ok"


def test_bench_gen_feat_tiny(tmp_path):
    out = tmp_path / "gen_feat.json"
    bench_gen_feat.main(["--arch", "iresnet18_w16", "--limit", "12", "--dtypes", "fp32,bf16", "--batch-size", "8",
                         "--baseline-batch", "8", "--seed-workers", "1", "--json", str(out)])
    base, seed, fp32, bf16 = _load(out)["results"]
    assert base["method"].startswith("seed") and base["images"] == 12
    assert seed["method"].startswith("seed gen_feat procedure") and seed["rel_diff"] < 1e-5
    assert fp32["vs_seed_procedure"] > 0
    assert (fp32["dtype"], bf16["dtype"]) == ("fp32", "bf16")
    assert fp32["rel_diff"] < 1e-4 and fp32["speedup"] > 0
    assert bf16["min_cos_vs_fp32"] >= 0.999


def test_bench_sharded_head_tiny(tmp_path):
    out = tmp_path / "sharded.json"
    bench_sharded_head.main(["--classes", "1000", "--world-sizes", "1,2", "--dim", "16", "--global-batch", "8",
                             "--steps", "1", "--warmup", "0", "--sample-rates", "1,0.1", "--json", str(out)])
    rows = {(r["world"], r["sample_rate"]): r for r in _load(out)["results"]}
    assert [r["status"] for r in rows.values()] == ["ok"] * 4
    assert rows[1, 1.0]["shard_mb"] == pytest.approx(2 * rows[2, 1.0]["shard_mb"])
    assert rows[1, 1.0]["loss"] == pytest.approx(rows[2, 1.0]["loss"], rel=1e-5)
    # a softmax over a tenth of the classes: a smaller log-sum-exp, so a smaller loss than the exact one
    assert rows[1, 0.1]["loss"] < rows[1, 1.0]["loss"] and rows[2, 0.1]["loss"] < rows[2, 1.0]["loss"]


@pytest.mark.parametrize("script", ["bench/gpu_check.sh", "bench/gpu_speed.sh"])
def test_gpu_check_fails_fast_without_cuda(tmp_path, script):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the real GPU check")
    res = subprocess.run(["bash", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2
    assert "CUDA is not available" in res.stderr


def test_bench_assess_tiny(tmp_path, photos_dir):
    from bench import bench_assess

    out = tmp_path / "assess.json"
    bench_assess.main(["--photos", str(photos_dir), "--arch", "iresnet18_w16", "--embedding-size", "64",
                       "--limit", "4", "--dtypes", "fp32,bf16,int8", "--batch-size", "4", "--json", str(out)])
    rows = _load(out)["results"]
    assert [(r["what"], r["dtype"]) for r in rows] == [("detect+align", "-"), ("assess (exit 0)", "fp32"),
                                                       ("assess (exit 0)", "bf16"), ("assess (exit 0)", "int8")]
    assert all(r["photos"] == 4 and r["faces"] == 4 and r["photos_s"] > 0 for r in rows)
    for row in rows[2:]:  # each against fp32, face by face
        assert row["vs"] == "fp32" and row["faces_only_in_one"] == 0 and 0.95 < row["min_cos"] <= 1.0001, row
        assert 0 <= row["q_within_2"] <= 1 and row["q_max_diff"] >= 0
