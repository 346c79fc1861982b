"""utils.text_lines: row -> line numbers past blank lines, and fixed-width records with PATH:LINE errors."""
from __future__ import annotations

import pytest

from utils.text_lines import field_lines, line_of_row


def test_line_of_row_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("0 1 1\n\n  \n2 3 0\n4 5 1\n")
    assert [line_of_row(path, r) for r in range(3)] == [1, 4, 5]


def test_field_lines_yields_numbered_records_and_names_a_bad_line(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("a.jpg 0.5\n\nb.jpg 1\n")
    assert list(field_lines(path, ("path", "score"))) == [(1, ["a.jpg", "0.5"]), (3, ["b.jpg", "1"])]
    path.write_text("a.jpg 0.5\nb.jpg\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: expected 'path score', got 1 fields$"):
        list(field_lines(path, ("path", "score")))
