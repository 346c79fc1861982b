"""Text tables for reports: fixed-width for terminals and logs, markdown for READMEs.

Evaluation (left-aligned text cells) and the benchmarks (right-aligned numbers) share one layout: a
header, a rule of dashes, the rows, columns two spaces apart and as wide as their widest cell. Cells are
formatted by the caller; ``str()`` is applied to whatever is left.
"""
from __future__ import annotations

from collections.abc import Sequence

ALIGNS = ("left", "right")


def format_table(header: Sequence[object], rows: Sequence[Sequence[object]], align: str = "left") -> str:
    """A plain fixed-width text table; every row has one cell per header entry."""
    if align not in ALIGNS:
        raise ValueError(f"format_table: align must be one of {ALIGNS}, got {align!r}")
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    pad = str.ljust if align == "left" else str.rjust
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A markdown (GitHub) table, no trailing newline; cells are written as given, not padded."""
    lines = [_markdown_row(header), "|---" * len(header) + "|"]
    lines += [_markdown_row(r) for r in rows]
    return "\n".join(lines)


def _markdown_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
