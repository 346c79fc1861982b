"""IJB 1:1: template aggregation modes on a hand-made meta set, pair scores, TAR at FAR and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from eval import ijb
from utils.feature_io import write_features

# Hand-made protocol in 2-D. Rows of face_tid_mid: (image, template, media, feature).
FACES = [
    ("a.jpg", 1, 10, (10.0, 0.0)),  # template 1: a strong media along x ...
    ("b.jpg", 1, 11, (0.0, 1.0)),   # ... and a weak one along y
    ("c.jpg", 2, 20, (3.0, 0.0)),   # template 2: one media of two images
    ("d.jpg", 2, 20, (0.0, 1.0)),
    ("e.jpg", 3, 30, (0.0, 2.0)),   # template 3: along y
    ("f.jpg", 4, 40, (5.0, 0.0)),   # template 4: along x
    ("g.jpg", 5, 10, (0.0, 4.0)),   # template 5 reuses media id 10: must not mix with template 1
]
PAIRS = [(1, 3, 0), (1, 4, 1), (2, 3, 0), (2, 4, 1), (1, 2, 1), (5, 3, 1), (5, 4, 0)]
# Expected template directions (degrees from the x axis), worked out by hand:
#   mean:      T1 = mean((1,0), (0,1)) -> 45;   T2 = normalise(mean((3,0), (0,1))) = (1.5, .5) -> atan(1/3)
#   norm-mean: T1 -> 45;                        T2 = mean((1,0), (0,1)) -> 45
#   magnitude: T1 = mean((10,0), (0,1)) = (5, .5) -> atan(.1);   T2 = (1.5, .5) -> atan(1/3)
#   T3 = 90, T4 = 0, T5 = 90 in every mode.
DEG = 180 / math.pi
EXPECTED_ANGLE = {
    "mean": {1: 45.0, 2: math.atan(1 / 3) * DEG, 3: 90.0, 4: 0.0, 5: 90.0},
    "norm-mean": {1: 45.0, 2: 45.0, 3: 90.0, 4: 0.0, 5: 90.0},
    "magnitude": {1: math.atan(0.1) * DEG, 2: math.atan(1 / 3) * DEG, 3: 90.0, 4: 0.0, 5: 90.0},
}


def _arrays():
    feats = np.array([f[3] for f in FACES], dtype=np.float32)
    templates = np.array([f[1] for f in FACES])
    medias = np.array([f[2] for f in FACES])
    t1, t2, lab = (np.array(c) for c in zip(*PAIRS, strict=True))
    return feats, templates, medias, t1, t2, lab


@pytest.mark.parametrize("mode", ijb.AGGREGATIONS)
def test_template_directions_by_mode(mode):
    feats, templates, medias, *_ = _arrays()
    uniq, tf = ijb.template_features(feats, templates, medias, mode)
    assert uniq.tolist() == [1, 2, 3, 4, 5]
    angles = np.degrees(np.arctan2(tf[:, 1], tf[:, 0]))
    np.testing.assert_allclose(angles, [EXPECTED_ANGLE[mode][t] for t in uniq], atol=1e-4)


def test_mean_and_magnitude_modes_differ_as_expected():
    feats, templates, medias, *_ = _arrays()
    _, mean_tf = ijb.template_features(feats, templates, medias, "mean")
    _, mag_tf = ijb.template_features(feats, templates, medias, "magnitude")
    # mean: each media counts once, T1 = ((1,0) + (0,1)) / 2; magnitude: raw media means, T1 = (5, 0.5)
    np.testing.assert_allclose(mean_tf[0], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(mag_tf[0], [5.0, 0.5], atol=1e-6)
    # the strong x media pulls T1 towards T4 (x) and away from T3 (y) only with magnitude weighting
    s_mean = ijb.pair_scores(mean_tf, np.arange(1, 6), np.array([1, 1]), np.array([4, 3]))
    s_mag = ijb.pair_scores(mag_tf, np.arange(1, 6), np.array([1, 1]), np.array([4, 3]))
    np.testing.assert_allclose(s_mean, [0.75, 0.75], atol=1e-6)
    a = math.atan(0.1) / math.pi
    np.testing.assert_allclose(s_mag, [1 - a, 0.5 + a], atol=1e-6)


@pytest.mark.parametrize("mode", ijb.AGGREGATIONS)
def test_pair_scores_are_one_minus_angle_over_pi(mode):
    feats, templates, medias, t1, t2, _ = _arrays()
    uniq, tf = ijb.template_features(feats, templates, medias, mode)
    scores = ijb.pair_scores(tf, uniq, t1, t2)
    ang = EXPECTED_ANGLE[mode]
    expected = [1 - abs(ang[a] - ang[b]) / 180 for a, b in zip(t1, t2, strict=True)]
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def _loop_templates(feats, templates, medias, mode):
    """Straightforward per-template loops, the recipe spelled out."""
    out = {}
    for t in np.unique(templates):
        rows = np.flatnonzero(templates == t)
        media_feats = []
        for m in np.unique(medias[rows]):
            f = feats[rows[medias[rows] == m]].astype(np.float64)
            if mode == "norm-mean":
                f = f / np.linalg.norm(f, axis=1, keepdims=True)
            mf = f.mean(0)
            media_feats.append(mf if mode == "magnitude" else mf / np.linalg.norm(mf))
        out[t] = np.mean(media_feats, 0)
    return out


@pytest.mark.parametrize("mode", ijb.AGGREGATIONS)
@pytest.mark.parametrize("workers", [1, 3])
def test_vectorised_matches_loops_on_random_protocol(mode, workers):
    rng = np.random.default_rng(7)
    n, d = 600, 16
    templates = rng.integers(100, 160, n)
    medias = rng.integers(0, 5, n) + 1000
    feats = (rng.standard_normal((n, d)) * rng.uniform(1, 30, (n, 1))).astype(np.float32)
    uniq, tf = ijb.template_features(feats, templates, medias, mode)
    ref = _loop_templates(feats, templates, medias, mode)
    assert uniq.tolist() == sorted(ref)
    np.testing.assert_allclose(tf, np.array([ref[t] for t in uniq]), rtol=2e-5, atol=1e-5)
    t1, t2 = rng.choice(uniq, 5000), rng.choice(uniq, 5000)  # unsorted, so the sort path runs
    t1, t2 = t1[t1 != t2], t2[t1 != t2]  # float32 arccos near cos = 1 is only good to ~2e-4
    scores = ijb.pair_scores(tf, uniq, t1, t2, chunk=97, workers=workers)
    r = np.array([ref[t] for t in t1]), np.array([ref[t] for t in t2])
    cos = (r[0] * r[1]).sum(1) / np.linalg.norm(r[0], axis=1) / np.linalg.norm(r[1], axis=1)
    np.testing.assert_allclose(scores, 1 - np.arccos(np.clip(cos, -1, 1)) / np.pi, atol=2e-4)


def test_tar_at_far_nearest_rule_on_toy_scores():
    # 10 genuine, 1000 impostors with distinct scores; the ROC points are known exactly
    imp = np.arange(1000) / 1000
    gen = np.array([2.0] * 4 + [0.9985] * 3 + [0.5] * 3)
    labels = np.r_[np.zeros(1000), np.ones(10)]
    scores = np.r_[imp, gen]
    tars, auc = ijb.ijb_tar_at_far(labels, scores, (1e-3, 1e-2, 1e-1))
    fpr, tpr, _ = roc_curve(labels, scores)
    # brute force of the rule: among ROC points at the minimal |fpr - far|, the one listed last
    for far, key in ((1e-3, "1e-03"), (1e-2, "1e-02"), (1e-1, "1e-01")):
        d = np.abs(fpr - far)
        assert tars[key] == tpr[np.flatnonzero(d == d.min())[-1]]
    # ROC (drop_intermediate keeps only corners): (0,0) (0,.4) (.001,.4) (.001,.7) (.499,.7) (.5,1) ...
    # at FPR .001 two points tie; the reversed search takes the larger TPR. 1e-2 and 1e-1 are nearest
    # to .001 too, because the horizontal run of points up to .499 was dropped.
    assert tars == {"1e-03": 0.7, "1e-02": 0.7, "1e-01": 0.7}
    assert ijb.ijb_tar_at_far(labels, scores, (1e-6,))[0] == {"1e-06": 0.4}
    assert 0.5 < auc <= 1.0


def _write_protocol(tmp_path, kind="c"):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / f"ijb{kind}_face_tid_mid.txt").write_text("".join(f"{f[0]} {f[1]} {f[2]}\n" for f in FACES))
    (meta / f"ijb{kind}_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in PAIRS))
    feats = np.array([f[3] for f in FACES], dtype=np.float32)
    write_features(tmp_path / "feat.list", [f"loose_crop/{f[0]}" for f in FACES], feats)
    return meta


def test_cli_json_and_magface_qlt_equals_magnitude(tmp_path):
    _write_protocol(tmp_path)
    base = ["--feat_list", str(tmp_path / "feat.list"), "--base_dir", str(tmp_path), "--type", "c",
            "--embedding_size", "2"]
    assert ijb.main(base + ["--json", str(tmp_path / "mean.json")]) == 0
    assert ijb.main(base + ["--magface_qlt", "1", "--json", str(tmp_path / "q.json")]) == 0
    assert ijb.main(base + ["--aggregation", "magnitude", "--json", str(tmp_path / "m.json")]) == 0
    mean, q, m = (json.loads((tmp_path / n).read_text()) for n in ("mean.json", "q.json", "m.json"))
    assert mean["aggregation"] == "mean" and q["aggregation"] == m["aggregation"] == "magnitude"
    assert q["tar_at_far"] == m["tar_at_far"]
    assert list(mean["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert mean["num_pairs"] == len(PAIRS)


@pytest.mark.parametrize("case", ["unknown", "count", "dims", "conflict"])
def test_cli_errors_name_file_and_write_no_json(tmp_path, capsys, case):
    meta = _write_protocol(tmp_path)
    args = ["--feat_list", str(tmp_path / "feat.list"), "--base_dir", str(tmp_path), "--embedding_size", "2"]
    if case == "unknown":
        with open(meta / "ijbc_template_pair_label.txt", "a") as f:
            f.write("\n3 99 0\n")
        expect = "ijbc_template_pair_label.txt:9: template 99 is not in"
    elif case == "count":
        with open(meta / "ijbc_face_tid_mid.txt", "a") as f:
            f.write("h.jpg 5 50\n")
        expect = "has 7 feature rows but"
    elif case == "dims":
        args[-1] = "512"
        expect = "features have 2 dimensions, expected --embedding_size 512"
    else:
        args += ["--magface_qlt", "1", "--aggregation", "mean"]
        expect = "contradicts"
    rc = ijb.main(args + ["--json", str(tmp_path / "out.json")])
    assert rc == 2 and expect in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_missing_meta_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt"):
        ijb.load_protocol(tmp_path, "b")
