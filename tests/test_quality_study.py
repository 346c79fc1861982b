"""bench/quality_study.py's bookkeeping: rows survive as JSON lines, the table shows them, timing from the log."""
from __future__ import annotations

from bench.quality_study import log_seconds, markdown_table, read_rows, write_rows


def _row(name: str, rho: float) -> dict:
    return {"name": name, "what": "test", "epochs": 6, "accuracy": 0.8125, "machine": "machine: test",
            "spearman": {"overall": rho, "blur": rho - 0.1},
            "erc_area": {"0.01": {"magnitude": 0.5, "random": 0.6}, "0.001": {"magnitude": 0.7, "random": 0.8}},
            "train_s": 390.0}


def test_rows_round_trip_and_table(tmp_path):
    rows = [_row("a", -0.25)]
    write_rows(tmp_path, rows)
    rows.append(_row("b", 0.5))
    write_rows(tmp_path, rows)
    assert [r["name"] for r in read_rows(tmp_path / "rows.jsonl")] == ["a", "b"]
    table = (tmp_path / "table.md").read_text()
    assert "| a (test) | 6 | 81.25 % | -0.250 | blur -0.35 | 0.500 / 0.600 | 0.700 / 0.800 | 390 |" in table
    assert "+0.500" in markdown_table(rows)
    assert not list(tmp_path.glob("*.tmp*"))


def test_log_seconds(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("2026-12-03 07:28:01 [rank 0] INFO a\nno stamp\n2026-12-03 07:34:31 [rank 0] INFO b\n")
    assert log_seconds(log) == 390.0


def test_export_keeps_the_backbone_only_and_names_no_local_folder(tmp_path):
    import torch

    from bench.quality_study import REPO, export_reference
    from models import build_backbone
    from models.checkpoint import load_backbone, save_released

    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", 32, input_size=56).eval()
    runs = tmp_path / "runs"
    src = runs / "x" / "00001.pth"
    src.parent.mkdir(parents=True)
    config = {"input_size": 56, "train_list": str(REPO / "raw" / "demo_data" / "celeba" / "train.list"),
              "pretrained": str(runs / "arc6" / "00006.pth"), "lr": 0.02}
    save_released(src, model, torch.randn(32, 7), 1, "iresnet18_w16", config=config)
    out = tmp_path / "ref.pth"
    export_reference(src, out, runs)
    obj = torch.load(out, map_location="cpu", weights_only=False)
    assert not any(k.endswith("fc.weight") and "features" not in k for k in obj["state_dict"])
    assert obj["config"]["train_list"] == "raw/demo_data/celeba/train.list"
    assert obj["config"]["pretrained"] == "{runs}/arc6/00006.pth" and obj["config"]["lr"] == 0.02
    loaded, _, info = load_backbone(out)
    x = torch.rand(2, 3, 56, 56)
    assert info["input_size"] == 56 and torch.equal(loaded(x), model(x))
