"""The magnitude -> 0-100 maps: OFIQ's constants on hand-computed values, and the calibration's fit,
side file and command."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import calibrate
from inference.quality_scale import (
    OFIQ,
    Calibration,
    fit_anchored,
    fit_calibration,
    load_calibration,
    logistic_quality,
    resolve_scale,
    round_half_away,
    save_calibration,
    side_file,
)
from models.backbones import build_backbone
from models.checkpoint import save_released


def test_ofiq_mapping_hand_computed():
    # the mapping assess and ort_embed fall back to (resolve_scale's OFIQ, --quality-scale ofiq)
    # q = 100 / (1 + exp((23 - a) / 2.6)): a = 23 -> 50; a = 23 +- 2.6 ln 3 -> 75 / 25;
    # a = 30 -> 100 / (1 + e^-2.6923) = 93.66 -> 94; a = 10 -> 100 / (1 + e^5) = 0.669 -> 1; a = 0 -> 0.0144 -> 0
    a = [23.0, 23 + 2.6 * math.log(3), 23 - 2.6 * math.log(3), 30.0, 10.0, 0.0, 1e6, -1e6]
    np.testing.assert_array_equal(logistic_quality(a, OFIQ), [50, 75, 25, 94, 1, 0, 100, 0])


def test_rounding_is_half_away_from_zero():
    np.testing.assert_array_equal(round_half_away([0.5, 1.5, 2.5, -0.5, -2.5, 2.4999]), [1, 2, 3, -1, -3, 2])
    # the scores use it: x.5 exactly cannot be hit through exp(), so check the clamp and integrality instead
    q = logistic_quality(np.linspace(-50, 80, 1301), OFIQ)
    assert q.min() == 0 and q.max() == 100 and np.all(q == np.floor(q)) and np.all(np.diff(q) >= 0)


def test_fit_rule_on_known_magnitudes():
    a = np.linspace(0.0, 100.0, 1001)
    cal = fit_calibration(a, "uniform")
    assert cal.centre == pytest.approx(50.0)
    assert cal.width == pytest.approx(90.0 / (2 * math.log(19)))
    np.testing.assert_array_equal(logistic_quality([5.0, 50.0, 95.0], cal), [5, 50, 95])
    with pytest.raises(ValueError, match="at least 20"):
        fit_calibration(a[:5], "few")
    with pytest.raises(ValueError, match="no spread"):
        fit_calibration(np.ones(50), "flat")


def test_save_reload_same_scores(tmp_path):
    mags = np.random.default_rng(0).normal(25, 4, 500)
    cal = fit_calibration(mags, "ref.list", "ab" * 32)
    path = tmp_path / "m.pth.quality.json"
    save_calibration(cal, path)
    again = load_calibration(path)
    assert again == cal
    np.testing.assert_array_equal(logistic_quality(mags, again), logistic_quality(mags, cal))
    path.write_text(json.dumps({"format": "magface-quality-calibration", "centre": 1.0}))
    with pytest.raises(ValueError, match="'width'"):
        load_calibration(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_calibration(path)


def test_resolve_scale(tmp_path):
    ckpt = tmp_path / "r50.pth"
    ckpt.write_bytes(b"weights")
    released = {"arch": "iresnet50", "config": None, "input_size": 112}
    ours = {"arch": "iresnet18", "config": {}, "input_size": 112}
    assert resolve_scale("auto", ckpt, released)[:2] == (OFIQ, "ofiq")
    cal, label, warning = resolve_scale("auto", ckpt, ours)
    assert label == "ofiq-uncalibrated" and "UNCALIBRATED" in warning
    assert resolve_scale("raw", ckpt, ours)[:2] == (None, "raw")
    save_calibration(Calibration(20.0, 2.0, source="x", checkpoint_sha256="0" * 64), side_file(ckpt))
    cal, label, warning = resolve_scale("auto", ckpt, ours)
    assert (cal.centre, label) == (20.0, "calibrated") and "another version" in warning


@pytest.mark.parametrize("source", ["list", "features"])
def test_calibrate_command(tmp_path, lfw_dir, source):
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64, input_size=56).eval()
    ckpt = tmp_path / "w16.pth"
    save_released(ckpt, model, None, 0, "iresnet18_w16", config={"input_size": 56})
    lines = (lfw_dir / "img.list").read_text().splitlines()[:40]
    listing = tmp_path / "ref.list"
    listing.write_text("".join(f"{lfw_dir / ln.split()[0]}\n" for ln in lines))
    if source == "list":
        assert calibrate.main(["--resume", str(ckpt), "--inf_list", str(listing), "--device", "cpu"]) == 0
    else:
        mags = calibrate.reference_magnitudes(str(ckpt), str(listing), device="cpu")
        feats = tmp_path / "f.npz"
        np.savez(feats, features=np.eye(len(mags), 64, dtype=np.float32) * mags[:, None].astype(np.float32),
                 magnitudes=mags.astype(np.float32), paths=np.array([str(i) for i in range(len(mags))]))
        assert calibrate.main(["--resume", str(ckpt), "--feat-list", str(feats)]) == 0
    cal = load_calibration(side_file(ckpt))
    mags = calibrate.reference_magnitudes(str(ckpt), str(listing), device="cpu")
    assert cal.count == 40 and cal.centre == pytest.approx(np.median(mags), rel=1e-5)
    assert Path(side_file(ckpt)).name == "w16.pth.quality.json"


def test_anchored_calibration_puts_good_at_80_and_damaged_at_20():
    rng = np.random.default_rng(0)
    good, damaged = rng.normal(20.0, 1.0, 500), rng.normal(12.0, 2.0, 500)
    cal = fit_anchored(good, damaged, "clean + damaged", "cd" * 32)
    assert logistic_quality(np.array([np.median(good)]), cal)[0] == 80
    assert logistic_quality(np.array([np.median(damaged)]), cal)[0] == 20
    assert cal.rule.startswith("anchored") and cal.median == pytest.approx(np.median(good))
    with pytest.raises(ValueError, match="does not rank them"):
        fit_anchored(damaged, good, "swapped")
    with pytest.raises(ValueError, match="at least 20"):
        fit_anchored(good[:5], damaged, "few")
