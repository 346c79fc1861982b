"""Error-versus-reject curves: the seed's FMR index rule, a hand-computed ERC, sharpness and the CLI."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from eval import quality as Q
from utils.feature_io import FeatureFile, write_features


def _seed_walk_index(n_imp: int, k: int):
    """The seed's loop: start at index N-1 with FMR 1, divide both by 10 until FMR = 10^-k."""
    idx, fmr_exp = n_imp - 1, 0
    while idx >= 0:
        if fmr_exp == k:
            return idx
        if idx == 0:
            return None
        idx = int(idx / 10)
        fmr_exp += 1
    return None


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_fmr_index_matches_the_seed_walk(k):
    for n in list(range(1, 2500)) + [2999, 3000, 3001, 10**6 + 1, 15_638_932]:
        assert Q.fmr_index(n, 10.0 ** -k) == _seed_walk_index(n, k), (n, k)
    assert Q.fmr_index(3000, 1e-3) == 2 and Q.fmr_index(101, 1e-3) == 0 and Q.fmr_index(100, 1e-3) is None


def test_fmr_index_other_fmrs_and_bad_input():
    assert Q.fmr_index(1001, 2e-3) == 2  # floor(1000 * 0.002)
    assert Q.fmr_index(0, 1e-3) is None
    with pytest.raises(ValueError, match="FMR must lie in"):
        Q.fmr_index(10, 1.0)


def test_fnmr_counts_ties_at_the_threshold_as_non_matches():
    # 11 impostors, FMR 0.1 -> index 1 of the sorted impostors -> threshold 0.2
    imp = np.array([0.9, 0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.55, 0.65, 0.75, 0.85])
    gen = np.array([0.05, 0.19, 0.2, 0.3])
    dist = np.r_[imp, gen]
    issame = np.r_[np.zeros(11, bool), np.ones(4, bool)]
    assert Q.fnmr_at_fmr(dist, issame, 0.1) == 0.5  # 0.2 and 0.3 are >= 0.2


def _toy_erc_set():
    """20 pairs in 2-D: 5 bad genuine (d=0.6, lowest quality), 10 impostors (d 0.40..0.49), 5 good genuine."""
    dists = [0.6] * 5 + [0.40 + 0.01 * i for i in range(10)] + [0.1] * 5
    same = [True] * 5 + [False] * 10 + [True] * 5
    feats, pairs = [], []
    for q, d in enumerate(dists):
        mag = 1.0 + q  # quality = magnitude of both images: increasing with the pair's position
        feats += [[mag, 0.0], [mag * math.cos(math.pi * d), mag * math.sin(math.pi * d)]]
        pairs.append((2 * q, 2 * q + 1))
    i0, i1 = np.array(pairs).T
    return np.array(feats), i0, i1, np.array(same)


def test_hand_computed_erc_at_fmr_1e_1():
    feats, i0, i1, issame = _toy_erc_set()
    ff = FeatureFile([f"{i}.jpg" for i in range(len(feats))], feats, np.linalg.norm(feats, axis=1), True)
    report = Q.evaluate_quality(ff, i0, i1, issame, ["magnitude"], 0.1)
    # k pairs dropped at step k. k <= 4: bad genuine go first, FNMR = (5-k)/(10-k). k = 5..13: only
    # good genuine remain (0.1 < every impostor): 0. k = 14: one impostor left, the seed's walk stops:
    # NaN; k >= 15: no impostor: NaN.
    expected = [(5 - k) / (10 - k) for k in range(5)] + [0.0] * 9 + [math.nan] * 6
    np.testing.assert_allclose(report["fnmr"]["magnitude"], expected, atol=1e-12)
    assert report["reject_ratio"][:3] == [0.0, 0.05, 0.1] and len(report["reject_ratio"]) == 20
    assert math.isnan(report["auc"]["magnitude"])
    # the same on the first 14 ratios, by hand: trapezoid of the finite part
    fn = np.array(expected[:14])
    assert Q.curve_area(fn, Q.REJECT_RATIOS[:14]) == pytest.approx(0.05 * (fn.sum() - (fn[0] + fn[-1]) / 2))


def test_curve_area_constant():
    assert Q.curve_area(np.full(20, 0.5)) == pytest.approx(0.5 * 0.95)


def test_erc_drops_lowest_quality_pairs_first():
    dist = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.95, 0.05])
    issame = np.array([True] + [False] * 10 + [True])
    qual = np.array([0.0] + list(range(1, 11)) + [50.0])
    fnmr = Q.error_versus_reject(dist, issame, qual, fmr=0.1, reject_ratios=np.array([0.0, 0.05, 0.1]))
    # int(0.05*12) = 0 pairs dropped, int(0.1*12) = 1 -> the bad genuine pair (quality 0) goes
    assert fnmr.tolist() == [0.5, 0.5, 0.0]


def test_sharpness_is_laplacian_variance(lfw_dir):
    img = cv2.imread(str(lfw_dir / (lfw_dir / "img.list").read_text().split()[0]))
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)
    lap = ndimage.convolve(gray, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float), mode="mirror")
    assert Q.laplacian_sharpness(img) == pytest.approx(lap.var(), rel=1e-9)
    blurred = cv2.GaussianBlur(img, (7, 7), 3)
    assert Q.laplacian_sharpness(blurred) < 0.5 * Q.laplacian_sharpness(img)


def _lfw_subset(tmp_path, lfw_dir, n_pairs=300):
    """Random-ish features for real LFW images (relative paths): the list's first genuine and first impostor
    pairs, half each (genuine pairs alone define no ERC entry)."""
    images = (lfw_dir / "img.list").read_text().split()
    pair_lines = (lfw_dir / "pair.list").read_text().splitlines()
    genuine = [k for k, line in enumerate(pair_lines) if line.split()[2] == "1"]
    impostor = [k for k, line in enumerate(pair_lines) if line.split()[2] == "0"]
    picked = genuine[: n_pairs // 2] + impostor[: n_pairs - n_pairs // 2]
    lines = [images[2 * k + j] for k in picked for j in (0, 1)]
    labels = [int(pair_lines[k].split()[2]) for k in picked]
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2 * n_pairs, 16)).astype(np.float32)
    same = np.array(labels, bool)
    feats[1::2][same] = feats[0::2][same] + rng.standard_normal((same.sum(), 16)).astype(np.float32)
    feats *= rng.uniform(5, 30, (2 * n_pairs, 1)).astype(np.float32)
    write_features(tmp_path / "feat.list", lines, feats)
    (tmp_path / "pair.list").write_text("".join(f"{2 * i} {2 * i + 1} {x}\n" for i, x in enumerate(labels)))


def test_cli_writes_json_and_plot(tmp_path, lfw_dir, capsys):
    _lfw_subset(tmp_path, lfw_dir)
    args = ["--feat-list", str(tmp_path / "feat.list"), "--pair-list", str(tmp_path / "pair.list"),
            "--image-root", str(lfw_dir), "--fmr", "1e-2", "--scores", "magnitude,random,sharpness",
            "--plot", str(tmp_path / "erc.png"), "--json", str(tmp_path / "erc.json")]
    assert Q.main(args) == 0
    report = json.loads((tmp_path / "erc.json").read_text())
    assert set(report["fnmr"]) == set(report["auc"]) == {"magnitude", "random", "sharpness"}
    assert report["fmr"] == 0.01 and len(report["reject_ratio"]) == 20 and report["num_pairs"] == 300
    assert all(len(v) == 20 for v in report["fnmr"].values())
    png = (tmp_path / "erc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "AUC" in capsys.readouterr().out
    # the random score is seeded: a second run gives the same curve
    assert Q.main(args[:-2] + ["--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["fnmr"]["random"] == report["fnmr"]["random"]


def test_cli_missing_images_fail_clearly(tmp_path, lfw_dir, capsys):
    _lfw_subset(tmp_path, lfw_dir, n_pairs=20)
    rc = Q.main(["--feat-list", str(tmp_path / "feat.list"), "--pair-list", str(tmp_path / "pair.list"),
                 "--scores", "sharpness", "--fmr", "0.1", "--json", str(tmp_path / "erc.json")])
    assert rc == 2 and "image of feature row 0 not found" in capsys.readouterr().err
    assert not (tmp_path / "erc.json").exists()
    rc = Q.main(["--feat-list", str(tmp_path / "feat.list"), "--pair-list", str(tmp_path / "pair.list"),
                 "--scores", "magnitude,sparkle"])
    assert rc == 2 and "sparkle" in capsys.readouterr().err
