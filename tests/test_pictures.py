"""The pictures say what they show: titles name the model and the data, a legend never prints "nan" (an undefined
area is "n/a" with the reason), and the random curve is captioned as one seeded, noisy order."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from eval import quality as Q
from eval.damage import plot_report, print_report
from eval.damage_report import quality_report
from eval.damage_set import DamageTable
from eval.erc_plot import area_label, plot_erc
from inference.quality_report import contact_sheet
from models import build_backbone
from models.checkpoint import save_released
from run.demo_quality import model_label, render_ladder
from run.vis_mag import run_label, scatter_figure
from utils.feature_io import FeatureFile

MODEL, DATA = "trained: iresnet18_w16 (toy.pth)", "toy pairs (synthetic)"


def _texts(fig) -> tuple[list[str], str, str]:
    """(every legend entry, the suptitle, the caption) of a figure."""
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    caption = fig._supxlabel.get_text() if fig._supxlabel is not None else ""
    return legends, fig.get_suptitle(), caption


def _pairs(n_bad: int = 5, n_imp: int = 10, n_good: int = 5) -> tuple[np.ndarray, ...]:
    """2-D features of pairs whose magnitude rises with position: low-quality failing genuine pairs, impostors,
    then good genuine pairs. At FMR 0.1 rejecting 70% leaves one impostor pair: the tail of the curve is NaN."""
    dists = [0.6] * n_bad + [0.40 + 0.01 * i for i in range(n_imp)] + [0.1] * n_good
    feats = []
    for q, d in enumerate(dists):
        mag = 1.0 + q
        feats += [[mag, 0.0], [mag * math.cos(math.pi * d), mag * math.sin(math.pi * d)]]
    n = len(dists)
    same = np.array([True] * n_bad + [False] * n_imp + [True] * n_good)
    return np.array(feats), np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), same


def test_area_label_never_says_nan():
    row = {"from_reject_ratio": 0.85, "genuine_pairs_left": 90, "impostor_pairs_left": 60}
    assert area_label("magnitude", 0.02094, None, 11) == "magnitude: area 0.0209"
    assert area_label("magnitude", float("nan"), row, 101) == \
        "magnitude: area n/a (too few impostor pairs from 85% rejected)"
    no_genuine = {**row, "genuine_pairs_left": 0, "impostor_pairs_left": 200}
    assert area_label("magnitude", float("nan"), no_genuine, 101) == \
        "magnitude: area n/a (no genuine pair from 85% rejected)"
    for area in (float("nan"), None):
        assert "nan" not in area_label("random", area, None, 101).lower()


def test_erc_png_names_model_and_data_and_explains_the_gaps(tmp_path):
    feats, i0, i1, same = _pairs()
    ff = FeatureFile([f"{i}.jpg" for i in range(len(feats))], feats, np.linalg.norm(feats, axis=1), True)
    report = Q.evaluate_quality(ff, i0, i1, same, ["magnitude", "random"], fmr=0.1)
    assert math.isnan(report["auc"]["magnitude"])  # the case the picture must explain
    fig = plot_erc(tmp_path / "erc.png", report, model=MODEL, data=DATA)
    legends, title, caption = _texts(fig)
    assert (tmp_path / "erc.png").read_bytes()[:4] == b"\x89PNG"
    assert all("nan" not in t.lower() for t in legends), legends
    assert legends[0] == "magnitude: area n/a (too few impostor pairs from 70% rejected)"
    assert legends[1].startswith("random (one seeded order): area ")
    assert MODEL in title and DATA in title
    assert "one seeded random order" in caption and "1 of 20 at 95% rejected" in caption


def test_damage_erc_png_names_model_and_data_and_has_no_nan_legend(tmp_path, capsys):
    feats, i0, i1, same = _pairs()
    n = len(feats)
    severity = np.where(np.arange(n) % 2 == 1, np.linspace(0.05, 1.0, n), 0.0)
    kind = np.where(severity > 0, "blur", "none")
    table = DamageTable([f"f{i}.png" for i in range(n)], np.arange(n) // 2, kind, severity)
    rng = np.random.default_rng(0)
    scores = {"magnitude": np.linalg.norm(feats, axis=1), "random": rng.random(n)}
    report = quality_report(feats, table, i0, i1, same, scores, fmrs=(0.1, 1e-3))
    assert all(math.isnan(c["area"]) for c in report["erc"]["1e-03"].values())  # 10 impostor pairs: none at 1e-3
    fig = plot_report(tmp_path / "damage_erc.png", report, scores, table, model=MODEL, data=DATA)
    legends, title, caption = _texts(fig)
    assert all("nan" not in t.lower() for t in legends), legends
    assert "magnitude: area n/a (too few impostor pairs from 0% rejected)" in legends
    panel = [t.get_text() for t in fig.axes[1].texts]  # FMR 1e-3: no curve at all, a line says why
    assert panel == ["no FNMR at FMR = 0.001 at any reject ratio:\n10 impostor pairs left, FMR = 0.001 needs 101"]
    assert MODEL in title and DATA in title and "one seeded random order" in caption
    print_report(report)
    out = capsys.readouterr().out
    assert "n/a" in out and "note: area n/a where too few pairs remain" in out


def test_ladder_names_model_and_faces(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 112, 112, 3), dtype=np.uint8)
    mags = np.array([[20.0, 18.0, 15.0], [21.0, 17.0, 12.0]])
    fig = render_ladder(images, mags, ["blur", "noise"], (0.0, 0.5, 1.0), tmp_path / "ladder.png", model=MODEL,
                        data=DATA)
    title = fig.get_suptitle()
    assert MODEL in title and DATA in title and (tmp_path / "ladder.png").is_file()
    assert "nan" not in " ".join(ax.get_title() for ax in fig.axes)


def test_demo_model_label_reads_the_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    path = tmp_path / "toy.pth"
    save_released(path, build_backbone("iresnet18_w16", 16, input_size=56), None, 0, "iresnet18_w16",
                  config={"input_size": 56})
    assert model_label("shipped", path) == "shipped: iresnet18_w16 (toy.pth)"


def test_vis_mag_scatter_names_the_run_and_never_says_nan(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"arch": "iresnet18_w16", "train_list": "/data/celeba/train.list"}')
    label = run_label(tmp_path)
    assert label == f"iresnet18_w16 in {tmp_path.name}, training batch of train.list"
    flat = np.ones(4)  # a constant magnitude: no correlation to report
    fig = scatter_figure(flat, np.full(4, 0.5), np.linspace(0.1, 0.9, 4), f"{label}\nepoch 0 iter 10", 10.0, 110.0)
    title = fig.axes[0].get_title()
    assert label in title and "nan" not in title.lower() and "Pearson r n/a" in title
    assert run_label(tmp_path / "elsewhere") == "run elsewhere"


def test_contact_sheet_title_band(tmp_path: Path):
    faces = [np.full((112, 112, 3), v, np.uint8) for v in (40, 120, 200)]
    plain = contact_sheet(faces, ["q=10", "q=50", "q=90"], tmp_path / "plain.png")
    titled = contact_sheet(faces, ["q=10", "q=50", "q=90"], tmp_path / "titled.png",
                           title="iresnet18_w16 (w16.pth), quality scale calibrated, 3 photos of lfw")
    a, b = cv2.imread(str(plain)), cv2.imread(str(titled))
    assert a.shape[1] == b.shape[1] == 3 * 96 and b.shape[0] > a.shape[0]  # a heading band, wrapped to the width
    assert (b[: b.shape[0] - a.shape[0]] < 128).any()  # text drawn in it
    np.testing.assert_array_equal(b[b.shape[0] - a.shape[0]:], a)  # the faces below are unchanged
