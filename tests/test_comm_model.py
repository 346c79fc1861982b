"""The communication model's arithmetic against hand-computed values (bench/comm_model.py)."""
from __future__ import annotations

import json

import pytest

from bench import comm_model as cm
from models import build_backbone


def test_ring_costs_known_answers() -> None:
    assert cm.ring_all_reduce_s(1e9, 8, 1e9) == pytest.approx(1.75)  # 2 * 7/8 * 1 s
    assert cm.ring_all_reduce_s(1e9, 2, 1e9) == pytest.approx(1.0)
    assert cm.ring_all_gather_s(8e9, 8, 1e9) == pytest.approx(7.0)  # 7/8 * 8 s
    assert cm.ring_all_reduce_s(1e9, 1, 1e9) == cm.ring_all_gather_s(1e9, 1, 1e9) == 0.0


def test_step_collectives_bytes() -> None:
    colls = cm.step_collectives(params=10, n=2, local_batch=3, embedding=4)
    ddp = [c for c in colls if c.part == "ddp"]
    assert [c.nbytes for c in ddp] == [40]
    by_name = {c.name: c.nbytes for c in colls}
    assert by_name["embedding all-gather (fp32)"] == 4 * 6 * 4
    assert by_name["embedding-gradient all-reduce (fp32)"] == 4 * 6 * 4
    assert by_name["label all-gather (int64)"] == 8 * 6
    head = sum(c.nbytes for c in colls if c.part == "head")
    assert head == 96 + 48 + 3 * 24 + 24 + 48 + 96 + 4
    # per-rank ring traffic: an all-reduce sends 2 (n-1)/n of its buffer, an all-gather (n-1)/n of the result
    assert cm.wire_bytes(ddp[0], 2) == pytest.approx(40.0)
    assert cm.wire_bytes(cm.Collective("g", "all_gather", 96, "head"), 4) == pytest.approx(72.0)


def test_step_time_bounds() -> None:
    slow, fast = cm.step_time_bounds(1.0, ddp_s=0.5, head_s=0.1, last_bucket_s=0.05, backward_fraction=2 / 3)
    assert slow == pytest.approx(1.6)
    assert fast == pytest.approx(1.15)  # all of DDP hidden under the backward but the last bucket
    slow, fast = cm.step_time_bounds(1.0, ddp_s=1.0, head_s=0.0, last_bucket_s=0.05, backward_fraction=2 / 3)
    assert (slow, fast) == (pytest.approx(2.0), pytest.approx(1 + 1 / 3))


def test_model_rows_known_answer() -> None:
    fabric = cm.Fabric("test", 1e9, 0.0)
    rows = cm.model_rows({"x": 1000}, [4], local_batch=256, embedding=8, img_s={"x": 256.0},
                         backward_fraction=0.5, fabrics=(fabric,))
    (row,) = rows
    ddp_s = 2 * 3 / 4 * 4000 / 1e9
    assert row["t1_ms"] == pytest.approx(1000.0)
    assert row["ddp_ms"] == pytest.approx(1e3 * ddp_s)
    rows_global = 4 * 256
    head_bytes_ar = 4 * rows_global * 8 + 4 * rows_global * 4 + 8 * rows_global + 4  # grad, 4 fp32, int64, flag
    head_s = 2 * 3 / 4 * head_bytes_ar / 1e9 + 3 / 4 * (4 * rows_global * 8 + 8 * rows_global) / 1e9
    assert row["head_ms"] == pytest.approx(1e3 * head_s)
    assert row["eff_no_overlap"] == pytest.approx(1 / (1 + ddp_s + head_s))
    assert row["img_s_overlap"] == pytest.approx(4 * 256 / (1 + head_s + ddp_s))  # DDP all in one bucket


def test_head_rows_known_answer() -> None:
    rows = cm.head_rows([2], classes=10, rates=[1.0, 0.5, 0.1], local_batch=3, embedding=4, flops=1e9,
                        mem_bytes_per_s=1e6)
    full, half, tenth = rows
    assert (full["rows_held"], full["rows_kept"], half["rows_kept"]) == (5, 5, 3)  # ceil(2.5)
    assert tenth["rows_kept"] == 3  # ceil(0.5) = 1, but the ~3 positives of the batch are always kept
    assert half["head_gflop"] == pytest.approx(3 * 2 * 6 * 3 * 4 / 1e9)
    assert half["logits_mb"] == pytest.approx(5 * 6 * 3 / 1e6)
    assert full["weight_state_mb"] == half["weight_state_mb"] == pytest.approx(3 * 4 * 5 * 4 / 1e6)
    assert half["head_ms"] == pytest.approx(1e3 * (3 * 2 * 6 * 3 * 4 / 1e9 + 6 * 5 * 6 * 3 / 1e6))
    # sampling changes what a rank computes and holds, not what it sends
    assert full["head_comm_mb"] == half["head_comm_mb"] == pytest.approx((96 + 48 + 3 * 24 + 24 + 48 + 96 + 4) / 1e6)


def test_parameter_counts_match_the_real_model() -> None:
    real = sum(p.numel() for p in build_backbone("iresnet18_w16", 64).parameters())
    assert cm.parameter_counts(["iresnet18_w16"], 64) == {"iresnet18_w16": real}


def test_main_writes_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "comm.json"
    rows = cm.main(["--gpus", "8", "--json", str(out)])
    assert len(rows) == 2 * len(cm.FABRICS)
    assert "| iresnet100 | 8 | NVLink" in capsys.readouterr().out
    saved = json.loads(out.read_text())["rows"]
    assert saved[0]["params_m"] == pytest.approx(43.590848)
    for row in saved:
        assert 0 < row["eff_no_overlap"] <= row["eff_overlap"] <= 1
    with pytest.raises(ValueError, match="no measured single-GPU speed"):
        cm.main(["--archs", "iresnet18"])
