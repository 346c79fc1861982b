"""Error-versus-reject pictures that say what they show: whose curves, on which pairs, and why an area is missing.

- An ERC's area is NaN when some reject ratio leaves too few pairs for the FMR's threshold (``eval.quality``
  ``nan_rows``); a legend then reads "area n/a" with the pairs left and the pairs needed, never "nan".
- The random score is one seeded order. In expectation, rejecting at random leaves the FNMR where it is;
  one order wanders, most at high reject ratios where few pairs remain, and may end below the magnitude
  there. The caption says so and gives the pairs left at the last ratio.
- The title names the model and the data; a picture without them was read as the wrong model's.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state; matplotlib is imported only to draw),
returned after ``utils.atomic.save_png`` so callers and tests can read their texts.
"""
from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from utils.atomic import save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def nan_reason(row: Mapping, fmr: float, min_impostor: int) -> str:
    """Why an ERC row is undefined, from the pairs left there (``eval.quality.nan_rows``)."""
    why = []
    left = row["impostor_pairs_left"]
    if left < min_impostor:
        why.append(f"{left} impostor pair{'s' * (left != 1)} left, FMR = {fmr:g} needs {min_impostor}")
    if row["genuine_pairs_left"] == 0:
        why.append("no genuine pair left")
    return "; ".join(why) or "too few pairs left"


def score_label(name: str) -> str:
    return "random (one seeded order)" if name == "random" else name


def short_reason(row: Mapping, min_impostor: int) -> str:
    """``nan_reason`` in a few words, for a legend (the counts go to the printed note)."""
    few_impostors, no_genuine = row["impostor_pairs_left"] < min_impostor, row["genuine_pairs_left"] == 0
    if few_impostors and no_genuine:
        return "too few impostor and no genuine pairs"
    return "no genuine pair" if no_genuine else "too few impostor pairs"


def area_label(name: str, area: float | None, row: Mapping | None, min_impostor: int) -> str:
    """Legend text of one curve: its area, or "area n/a" and why (an undefined area is never printed as nan)."""
    if area is not None and math.isfinite(area):
        return f"{score_label(name)}: area {area:.4f}"
    if row:
        return (f"{score_label(name)}: area n/a ({short_reason(row, min_impostor)} from "
                f"{100 * row['from_reject_ratio']:.0f}% rejected)")
    return f"{score_label(name)}: area n/a (FNMR undefined at some reject ratio)"


def undefined_text(rows: list[Mapping], fmr: float, min_impostor: int) -> str | None:
    """What an axes whose every curve is undefined from 0% rejected shows instead of curves; else None."""
    if not rows or any(r is None or r["from_reject_ratio"] > 0 for r in rows):
        return None
    return f"no FNMR at FMR = {fmr:g} at any reject ratio:\n{nan_reason(rows[0], fmr, min_impostor)}"


def random_caption(num_pairs: int, reject_ratios: np.ndarray) -> str:
    """What the random curve is, and how few pairs its last points rest on."""
    last = float(reject_ratios[-1])
    left = num_pairs - int(last * num_pairs)
    return (f"random: one seeded random order. In expectation rejecting at random leaves FNMR unchanged; a single "
            f"order wanders, most at high reject ratios where few pairs remain ({left} of {num_pairs} at "
            f"{100 * last:.0f}% rejected), so it can end above or below the other curves there.")


def title_text(model: str, data: str) -> str:
    return f"model: {model}\ndata: {data}"


def add_caption(fig: Figure, text: str) -> None:
    """A caption under the axes, wrapped to the figure's width (laid out by the constrained layout)."""
    width_chars = int(fig.get_figwidth() * 15)
    fig.supxlabel(textwrap.fill(text, width_chars), fontsize=8, ha="left", x=0.01)


def erc_figure(report: Mapping, *, model: str, data: str) -> Figure:
    """The curves of an ``eval.quality`` report: FNMR at its FMR against the ratio of rejected pairs."""
    from matplotlib.figure import Figure  # the text paths (nan_reason, nan_note) run without matplotlib

    ratios = np.asarray(report["reject_ratio"], dtype=float)
    fmr, need = float(report["fmr"]), int(report["min_impostor_pairs"])
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for name, fnmr in report["fnmr"].items():
        label = area_label(name, report["auc"].get(name), report.get("nan_rows", {}).get(name), need)
        ax.plot(100 * ratios, np.array(fnmr, dtype=float), marker="o", markersize=3, label=label)
    ax.set_xlim(-5, 100)  # every reject ratio, also where a curve is undefined
    ax.set_xlabel("Ratio of unconsidered pairs [%]")
    ax.set_ylabel("FNMR")
    ax.set_title(f"FNMR at FMR = {fmr:g}, {report['num_pairs']} pairs (lowest-quality pairs rejected first)",
                 fontsize=9)
    ax.grid(linestyle="--", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.suptitle(title_text(model, data), fontsize=9)
    if "random" in report["fnmr"]:
        add_caption(fig, random_caption(int(report["num_pairs"]), ratios))
    return fig


def plot_erc(path: str | os.PathLike, report: Mapping, *, model: str, data: str) -> Figure:
    """``erc_figure`` saved as a PNG at ``path``; the figure is returned."""
    fig = erc_figure(report, model=model, data=data)
    save_png(fig, path)
    return fig
