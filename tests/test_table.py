"""utils.table: the fixed-width and markdown layouts the reports and the READMEs rely on."""
from __future__ import annotations

import pytest

from bench.common import format_rows
from utils.table import format_markdown, format_table


def test_format_table_left_and_right():
    rows = [["lfw", 0.5], ["cfp_fp", None]]
    assert format_table(["set", "acc"], rows) == "set     acc \n------  ----\nlfw     0.5 \ncfp_fp  None"
    assert format_table(["set", "acc"], rows, align="right") == "   set   acc\n------  ----\n   lfw   0.5\ncfp_fp  None"
    with pytest.raises(ValueError, match="align must be one of"):
        format_table(["a"], [[1]], align="centre")


def test_bench_rows_format_numbers_and_missing_cells():
    rows = [{"name": "a", "ms": 12.345, "ratio": 0.123456}, {"name": "bb", "ratio": 3}]
    assert format_rows(rows, ("name", "ms", "ratio")) == (
        "name    ms   ratio\n----  ----  ------\n   a  12.3  0.1235\n  bb     -       3")


def test_format_markdown():
    assert format_markdown(["a", "b"], [[1, "x y"], ["", 2.5]]) == "| a | b |\n|---|---|\n| 1 | x y |\n|  | 2.5 |"
