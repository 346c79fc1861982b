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
