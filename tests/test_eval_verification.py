"""1:1 verification protocols, TAR at FAR, the .bin reader and the verification CLI."""
from __future__ import annotations

import json
import math
import pickle

import cv2
import numpy as np
import pytest

from eval import verification as V
from eval.bin_io import read_bin, read_bin_raw, write_bin
from eval.metrics import tar_at_far_bounded, tar_at_far_nearest
from utils.feature_io import write_features

# ---------------------------------------------------------------- reference (plain loops)


def _reference_kfold(emb0, emb1, issame, protocol):
    """The protocol written out literally: explicit folds, a loop over thresholds, first maximum."""
    n = len(issame)
    thresholds = [i / 100 for i in range(400)]
    sizes = [n // 10 + (1 if k < n % 10 else 0) for k in range(10)]
    starts = np.cumsum([0] + sizes)
    accs, chosen = [], []
    for k in range(10):
        test = list(range(starts[k], starts[k + 1]))
        train = [i for i in range(n) if i not in set(test)]
        if protocol == "magface":
            mean = np.vstack([emb0[train], emb1[train]]).mean(axis=0)
            a, b = emb0 - mean, emb1 - mean
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            dist = np.arccos(np.clip(cos, -1, 1)) / math.pi
        else:
            a = emb0 / np.linalg.norm(emb0, axis=1, keepdims=True)
            b = emb1 / np.linalg.norm(emb1, axis=1, keepdims=True)
            dist = ((a - b) ** 2).sum(1)

        def acc(t, idx, dist=dist):
            return sum((dist[i] < t) == bool(issame[i]) for i in idx) / len(idx)

        best_t, best_acc = None, -1.0
        for t in thresholds:
            a_t = acc(t, train)
            if a_t > best_acc:
                best_t, best_acc = t, a_t
        accs.append(acc(best_t, test))
        chosen.append(best_t)
    return np.array(accs), np.array(chosen)


def _pairs_at_angles(angles, dim=4, seed=0):
    """Unit pairs whose angle is given; each pair followed by its negation so every fold's mean is 0."""
    rng = np.random.default_rng(seed)
    e0, e1 = [], []
    for ang in angles:
        q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
        a, b = q[:, 0], math.cos(ang) * q[:, 0] + math.sin(ang) * q[:, 1]
        e0 += [a, -a]
        e1 += [b, -b]
    return np.array(e0), np.array(e1)


# ---------------------------------------------------------------- protocols


@pytest.mark.parametrize("protocol", ["magface", "insightface"])
def test_perfect_separation_gives_accuracy_one(protocol):
    rng = np.random.default_rng(1)
    n = 200
    base = rng.standard_normal((n, 64))
    other = rng.standard_normal((n, 64))
    issame = np.arange(n) % 2 == 0
    emb1 = np.where(issame[:, None], base + 0.01 * rng.standard_normal((n, 64)), other)
    report = V.evaluate_pairs(base, emb1, issame, protocol)
    assert report["accuracy_mean"] == 1.0 and report["accuracy_std"] == 0.0
    assert report["auc"] == 1.0 and report["tar_at_far"]["1e-03"] == 1.0
    assert report["num_pairs"] == n and report["protocol"] == protocol


def test_magface_protocol_known_threshold():
    # genuine at angular distance 0.305, impostors at 0.7: the first best threshold is 0.31 in every fold
    angles = [0.305 * math.pi if k % 2 == 0 else 0.7 * math.pi for k in range(50)]
    e0, e1 = _pairs_at_angles(angles)
    issame = np.repeat([k % 2 == 0 for k in range(50)], 2)
    folds = V.kfold_accuracy(e0, e1, issame, "magface")
    np.testing.assert_allclose(folds.thresholds, 0.31)
    assert np.all(folds.accuracies == 1.0)


def test_insightface_protocol_known_threshold():
    # squared L2 of unit vectors = 2 - 2 cos: genuine 0.505, impostors 1.5 -> first best threshold 0.51
    angles = [math.acos(1 - 0.505 / 2) if k % 2 == 0 else math.acos(1 - 1.5 / 2) for k in range(50)]
    e0, e1 = _pairs_at_angles(angles)
    e0 *= 7.0  # scale must not matter: embeddings are normalised
    issame = np.repeat([k % 2 == 0 for k in range(50)], 2)
    report = V.evaluate_pairs(e0, e1, issame, "insightface")
    assert report["threshold"] == pytest.approx(0.51)
    assert report["accuracy_mean"] == 1.0


def test_imperfect_case_hand_computed():
    # distances (genuine: 0.1, 0.2, 0.6; impostor: 0.3, 0.5, 0.9): best rule d < t has 5/6 correct
    dist = np.array([0.1, 0.2, 0.6, 0.3, 0.5, 0.9])
    issame = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    acc = V.accuracy_per_threshold(dist, issame, V.THRESHOLDS)
    assert acc.max() == pytest.approx(5 / 6)
    assert V.THRESHOLDS[int(np.argmax(acc))] == pytest.approx(0.21)  # first of the ties (0.21..0.30)
    assert acc[0] == pytest.approx(0.5) and acc[-1] == pytest.approx(0.5)


@pytest.mark.parametrize("protocol", ["magface", "insightface"])
def test_matches_literal_reference_on_noisy_data(protocol):
    rng = np.random.default_rng(3)
    n = 123  # folds of 13 and 12 pairs
    e0 = rng.standard_normal((n, 16)) + 2.0
    issame = rng.random(n) < 0.5
    e1 = np.where(issame[:, None], e0 + 1.2 * rng.standard_normal((n, 16)), rng.standard_normal((n, 16)) + 2.0)
    folds = V.kfold_accuracy(e0, e1, issame, protocol)
    ref_acc, ref_t = _reference_kfold(e0, e1, issame, protocol)
    np.testing.assert_allclose(folds.thresholds, ref_t)
    np.testing.assert_allclose(folds.accuracies, ref_acc)
    assert 0.5 < folds.accuracies.mean() < 1.0


def test_kfold_splits_are_contiguous_like_sklearn():
    splits = V.kfold_splits(23, 10)
    assert [len(t) for _, t in splits] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate([t for _, t in splits]), np.arange(23))
    assert all(len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 23 for tr, te in splits)


def test_tar_at_far_bounded_toy_roc():
    imp = np.arange(1000) / 1000  # 0.000 .. 0.999
    gen = np.array([0.9995, 0.9995, 0.9985, 0.9985, 0.9985, 0.1, 0.1, 0.1, 0.1, 0.1])
    labels = np.r_[np.zeros(1000), np.ones(10)]
    tars = tar_at_far_bounded(labels, np.r_[imp, gen], (1e-3, 1e-4))
    # FAR 1e-3 lets one impostor (0.999) through: 5 genuine above it; FAR 1e-4 none: 2 genuine
    assert tars == {"1e-03": 0.5, "1e-04": 0.2}


def test_tar_at_far_nearest_seed_rule():
    fpr = np.array([0.0, 0.0, 0.1, 0.1, 1.0])
    tpr = np.array([0.0, 0.5, 0.6, 0.8, 1.0])
    got = tar_at_far_nearest(fpr, tpr, (1e-6, 0.1, 0.6))
    # reversed: fpr [1, .1, .1, 0, 0], tpr [1, .8, .6, .5, 0]; first minimum wins
    assert got == {"1e-06": 0.5, "1e-01": 0.8, "6e-01": 1.0}


# ---------------------------------------------------------------- .bin reader


def _jpeg_bytes(lfw_dir, n):
    files = [lfw_dir / line.strip() for line in (lfw_dir / "img.list").read_text().splitlines()[:n]]
    return files, [f.read_bytes() for f in files]


def test_bin_reader_decodes_real_jpegs(tmp_path, lfw_dir):
    files, blobs = _jpeg_bytes(lfw_dir, 6)
    write_bin(tmp_path / "t.bin", blobs, [True, False, True])
    images, issame = read_bin(tmp_path / "t.bin")
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    assert issame.tolist() == [True, False, True]
    for img, f in zip(images, files, strict=True):
        assert np.array_equal(img, cv2.imread(str(f)))  # BGR, as cv2 reads


def test_bin_reader_errors(tmp_path, lfw_dir):
    _, blobs = _jpeg_bytes(lfw_dir, 4)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"bad\.bin: not a readable"):
        read_bin(bad)
    with open(bad, "wb") as f:
        pickle.dump((blobs[:3], [True]), f)
    with pytest.raises(ValueError, match="odd number of images"):
        read_bin_raw(bad)
    with open(bad, "wb") as f:
        pickle.dump((blobs, [True, False, True]), f)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        read_bin_raw(bad)
    write_bin(bad, [blobs[0], blobs[1], blobs[2], b"garbage-bytes"], [True, False])
    with pytest.raises(ValueError, match=r"bad\.bin: bin 3 does not decode"):
        read_bin(bad)
    with open(bad, "wb") as f:  # a pickle that would call a function is refused, not run
        pickle.dump((blobs, [True, False], math.sqrt), f)
    with pytest.raises(ValueError, match="refusing to load global math.sqrt"):
        read_bin_raw(bad)


def test_bin_reader_accepts_numpy_labels(tmp_path, lfw_dir):
    _, blobs = _jpeg_bytes(lfw_dir, 2)
    with open(tmp_path / "np.bin", "wb") as f:
        pickle.dump((blobs, np.array([True])), f, protocol=2)
    assert read_bin_raw(tmp_path / "np.bin")[1].tolist() == [True]


# ---------------------------------------------------------------- CLI


def _write_toy_files(tmp_path, n_pairs=40, dim=8):
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((2 * n_pairs, dim)).astype(np.float32)
    issame = np.arange(n_pairs) % 2 == 0
    feats[1::2][issame] = feats[0::2][issame] + 0.05
    write_features(tmp_path / "feat.list", [f"img{i}.jpg" for i in range(len(feats))], feats)
    (tmp_path / "pair.list").write_text("".join(f"{2 * i} {2 * i + 1} {int(s)}\n" for i, s in enumerate(issame)))
    return feats, issame


def test_cli_feature_list_writes_json(tmp_path, capsys):
    _write_toy_files(tmp_path)
    out = tmp_path / "out" / "m.json"
    rc = V.main(["--feat-list", str(tmp_path / "feat.list"), "--pair-list", str(tmp_path / "pair.list"),
                 "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["accuracy_mean"] == 1.0 and report["num_pairs"] == 40 and report["protocol"] == "magface"
    assert set(report["tar_at_far"]) == {"1e-03", "1e-04"} and report["auc"] == 1.0
    assert {"accuracy_std", "threshold"} <= set(report)
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["index", "dims", "nan", "label"])
def test_cli_errors_write_no_json(tmp_path, capsys, case):
    _write_toy_files(tmp_path)
    feat, pairs, extra = tmp_path / "feat.list", tmp_path / "pair.list", []
    if case == "index":
        pairs.write_text(pairs.read_text() + "3 80 0\n")
        expect = r"pair\.list:41: pair index out of range \(3 80\); the feature file has 80 rows"
    elif case == "label":
        pairs.write_text("0 1 2\n" + pairs.read_text())
        expect = r"pair\.list:1: label must be 0 or 1"
    elif case == "dims":
        extra = ["--embedding-size", "512"]
        expect = r"feat\.list: features have 8 dimensions, expected 512"
    else:
        lines = feat.read_text().splitlines()
        lines[5] = "img5.jpg " + " ".join(["nan"] * 8)
        feat.write_text("\n".join(lines) + "\n")
        expect = r"feat\.list:6: features of row 5 \(img5\.jpg\) contain NaN"
    out = tmp_path / "m.json"
    rc = V.main(["--feat-list", str(feat), "--pair-list", str(pairs), "--json", str(out)] + extra)
    assert rc == 2
    assert __import__("re").search(expect, capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob(".m.json*"))


@pytest.mark.slow
def test_bin_path_equals_feature_path(tmp_path, lfw_dir):
    """Embedding a .bin through the CLI = embedding the same JPEG files and scoring the feature file."""
    import torch

    from inference.extract import embed_array
    from models import build_backbone
    from models.checkpoint import save_released

    torch.manual_seed(0)
    model = build_backbone("iresnet18").eval()
    save_released(tmp_path / "r18.pth", model, None, epoch=0, arch="iresnet18")
    lines = (lfw_dir / "img.list").read_text().splitlines()
    labels = [int(x.split()[2]) for x in (lfw_dir / "pair.list").read_text().splitlines()]
    same, different = [p for p, y in enumerate(labels) if y], [p for p, y in enumerate(labels) if not y]
    pairs = sorted(same[:: len(same) // 25][:25] + different[:: len(different) // 25][:25])  # spread over the set
    files = [lfw_dir / lines[2 * p + k] for p in pairs for k in (0, 1)]
    issame = [bool(labels[p]) for p in pairs]
    write_bin(tmp_path / "small.bin", [f.read_bytes() for f in files], issame)

    assert V.main(["--bin", str(tmp_path / "small.bin"), "--resume", str(tmp_path / "r18.pth"),
                   "--batch-size", "50", "--dtype", "fp32", "--json", str(tmp_path / "bin.json")]) == 0
    feats = embed_array(model, np.stack([cv2.imread(str(f)) for f in files]), batch_size=50)
    write_features(tmp_path / "feat.list", [str(f) for f in files], feats)
    (tmp_path / "pair.list").write_text("".join(f"{2 * i} {2 * i + 1} {int(s)}\n" for i, s in enumerate(issame)))
    assert V.main(["--feat-list", str(tmp_path / "feat.list"), "--pair-list", str(tmp_path / "pair.list"),
                   "--json", str(tmp_path / "feat.json")]) == 0
    a = json.loads((tmp_path / "bin.json").read_text())
    b = json.loads((tmp_path / "feat.json").read_text())
    assert a["num_pairs"] == b["num_pairs"] == 50
    assert a["fold_accuracies"] == b["fold_accuracies"] and a["accuracy_mean"] == b["accuracy_mean"]
    assert a["fold_thresholds"] == b["fold_thresholds"]
    assert a["auc"] == pytest.approx(b["auc"], abs=1e-9)


def test_embed_array_prepared_matches_plain_model_and_reports_progress(lfw_dir, capsys):
    """The fast path used by --bin (BN folded, channels-last, bf16 weights) = the plain model."""
    import torch

    from inference.extract import embed_array
    from models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=64).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    lines = (lfw_dir / "img.list").read_text().splitlines()[:10]
    images = np.stack([cv2.imread(str(lfw_dir / line.split()[0])) for line in lines])
    plain = embed_array(model, images, batch_size=4, prepare=False)
    fast = embed_array(model, images, batch_size=4, progress="lfw-10", progress_every_s=0.0)
    assert np.abs(fast - plain).max() <= 1e-5 * np.abs(plain).max()
    bf16 = embed_array(model, images, batch_size=4, dtype=torch.bfloat16)
    cos = np.sum(bf16 * plain, 1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(plain, axis=1)
    assert cos.min() >= 0.999
    err = capsys.readouterr().err
    assert "lfw-10: 4/10 images" in err and "lfw-10: 10/10 images" in err


def test_pack_bin_from_lists_round_trips(tmp_path, lfw_dir, capsys):
    from eval.bin_io import main as pack_main

    lines = (lfw_dir / "img.list").read_text().splitlines()[:8]
    (tmp_path / "img.list").write_text("".join(str(lfw_dir / line.split()[0]) + "\n" for line in lines))
    (tmp_path / "pair.list").write_text("0 1 1\n2 5 0\n7 3 1\n")
    assert pack_main(["--img-list", str(tmp_path / "img.list"), "--pair-list", str(tmp_path / "pair.list"),
                      "--out", str(tmp_path / "t.bin")]) == 0
    images, issame = read_bin(tmp_path / "t.bin")
    assert issame.tolist() == [True, False, True]
    for k, row in enumerate([0, 1, 2, 5, 7, 3]):
        assert np.array_equal(images[k], cv2.imread(str(lfw_dir / lines[row].split()[0])))
    (tmp_path / "pair.list").write_text("0 8 1\n")
    assert pack_main(["--img-list", str(tmp_path / "img.list"), "--pair-list", str(tmp_path / "pair.list"),
                      "--out", str(tmp_path / "u.bin")]) == 2
    assert "pair.list:1: pair index out of range (0 8)" in capsys.readouterr().err
    assert not (tmp_path / "u.bin").exists()
