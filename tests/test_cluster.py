"""Face clustering: metrics on labelings with known answers, the methods on blobs and LFW, inputs and CLI."""
from __future__ import annotations

import json
import math
from itertools import combinations

import cv2
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering

from eval import cluster as C
from eval.cluster_graph import METHODS, cluster, knn_graph
from eval.cluster_labels import read_labels
from eval.cluster_metrics import bcubed_prf, cluster_scores, pairwise_prf
from utils.feature_io import write_features

TRUE = np.array([0, 0, 1, 1, 1])


def test_perfect_clustering_scores_one_under_any_renaming():
    s = cluster_scores(TRUE, np.array([7, 7, 3, 3, 3]))
    for key in ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_precision", "bcubed_recall",
                "bcubed_f", "nmi"):
        assert s[key] == pytest.approx(1.0), key
    assert s["num_clusters"] == 2 and s["num_identities"] == 2 and s["num_faces"] == 5


def test_all_in_one_cluster():
    s = cluster_scores(TRUE, np.zeros(5, int))
    assert s["pairwise_recall"] == 1.0 and s["bcubed_recall"] == 1.0
    assert s["pairwise_precision"] == pytest.approx((1 + 3) / 10)  # 4 same-identity pairs of 10
    assert s["bcubed_precision"] == pytest.approx((2 * 2 / 5 + 3 * 3 / 5) / 5)
    assert s["nmi"] == pytest.approx(0.0, abs=1e-12)


def test_all_singletons():
    s = cluster_scores(TRUE, np.arange(5))
    assert s["pairwise_precision"] == 1.0 and s["pairwise_recall"] == 0.0 and s["pairwise_f"] == 0.0
    assert s["bcubed_precision"] == 1.0 and s["bcubed_recall"] == pytest.approx((2 * 1 / 2 + 3 * 1 / 3) / 5)
    h = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    assert s["nmi"] == pytest.approx(2 * h / (h + math.log(5)))  # I = H(true), arithmetic normalisation


def test_hand_computed_small_case():
    true, pred = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    # pairs: predicted {01, 23}, true {01, 02, 12}; only 01 is right
    pw = pairwise_prf(true, pred)
    assert pw["pairwise_precision"] == pytest.approx(1 / 2) and pw["pairwise_recall"] == pytest.approx(1 / 3)
    assert pw["pairwise_f"] == pytest.approx(0.4)
    # per face (precision, recall): (1, 2/3), (1, 2/3), (1/2, 1/3), (1/2, 1)
    bc = bcubed_prf(true, pred)
    assert bc["bcubed_precision"] == pytest.approx(0.75) and bc["bcubed_recall"] == pytest.approx(2 / 3)
    assert bc["bcubed_f"] == pytest.approx(12 / 17)


def test_contingency_metrics_equal_brute_force_counting():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 6, 60), rng.integers(0, 9, 60)
    pairs = list(combinations(range(60), 2))
    same_t = np.array([true[i] == true[j] for i, j in pairs])
    same_p = np.array([pred[i] == pred[j] for i, j in pairs])
    pw = pairwise_prf(true, pred)
    assert pw["pairwise_precision"] == pytest.approx((same_t & same_p).sum() / same_p.sum())
    assert pw["pairwise_recall"] == pytest.approx((same_t & same_p).sum() / same_t.sum())
    both = [(np.sum((pred == pred[i]) & (true == true[i])), np.sum(pred == pred[i]), np.sum(true == true[i]))
            for i in range(60)]
    bc = bcubed_prf(true, pred)
    assert bc["bcubed_precision"] == pytest.approx(np.mean([b / a for b, a, _ in both]))
    assert bc["bcubed_recall"] == pytest.approx(np.mean([b / t for b, _, t in both]))


def _blobs(n_ids=12, per_id=10, dim=32, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    feats = centres[labels] + noise * rng.standard_normal((len(labels), dim)) * np.sqrt(1 / dim) * 4
    return feats.astype(np.float32) * rng.uniform(5, 30, (len(labels), 1)), labels


def test_knn_graph_is_exact_and_excludes_self():
    feats, _ = _blobs(seed=1)
    idx, sim = knn_graph(feats, 5, tile_mb=0)  # one query row per tile
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    full = unit @ unit.T
    np.fill_diagonal(full, -np.inf)
    assert np.all(idx != np.arange(len(feats))[:, None])
    np.testing.assert_allclose(sim, -np.sort(-full, axis=1)[:, :5], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), sim, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_methods_recover_well_separated_blobs(method):
    feats, labels = _blobs()
    idx, sim = knn_graph(feats, 10)
    s = cluster_scores(labels, cluster(method, feats, idx, sim, threshold=0.5))
    assert s["pairwise_f"] == 1.0 and s["bcubed_f"] == 1.0 and s["num_clusters"] == 12


def test_agglomerative_on_a_full_graph_equals_sklearn_without_connectivity():
    feats, _ = _blobs(n_ids=5, per_id=8, noise=3.0, seed=2)
    idx, sim = knn_graph(feats, len(feats) - 1)
    ours = cluster("agglomerative", feats, idx, sim, threshold=0.3)
    ref = AgglomerativeClustering(n_clusters=None, distance_threshold=0.7, metric="cosine",
                                  linkage="average").fit_predict(feats)
    assert cluster_scores(ref, ours)["pairwise_f"] == 1.0 and len(set(ref)) > 1


def test_dbscan_with_min_samples_2_is_knn_components():
    feats, _ = _blobs(n_ids=8, per_id=6, noise=2.0, seed=3)
    idx, sim = knn_graph(feats, 4)
    a = cluster("knn-cc", feats, idx, sim, 0.5)
    b = cluster("dbscan", feats, idx, sim, 0.5, min_samples=2)
    assert cluster_scores(a, b)["pairwise_f"] == 1.0 and cluster_scores(a, b)["num_clusters"] > 1


def test_quality_reject_removes_low_magnitude_noise_first():
    feats, labels = _blobs(n_ids=10, per_id=12, seed=4)
    rng = np.random.default_rng(5)
    noisy = rng.choice(len(feats), 30, replace=False)  # a quarter of faces: random direction, small norm
    feats[noisy] = rng.standard_normal((30, feats.shape[1])).astype(np.float32)
    mags = np.linalg.norm(feats, axis=1)
    fractions = [0.0, 0.1, 0.25, 0.4]
    args = dict(methods=["knn-cc"], threshold=0.5, k=10)
    mag = C.quality_reject(feats, labels, mags, fractions, "magnitude", **args)
    rnd = C.quality_reject(feats, labels, mags, fractions, "random", **args)
    assert mag["num_faces"] == [120, 108, 90, 72] == rnd["num_faces"]
    f = mag["methods"]["knn-cc"]["bcubed_f"]
    assert f[0] < f[1] < f[2] and f[2] == pytest.approx(1.0) and f[3] == pytest.approx(1.0)
    assert rnd["methods"]["knn-cc"]["bcubed_f"][2] < f[2]
    base, _ = C.run_methods(feats, labels, **args)
    assert f[0] == base["knn-cc"]["bcubed_f"]


def _write_case(tmp_path, n=6):
    feats, labels = _blobs(n_ids=2, per_id=n // 2, dim=8)
    paths = [f"img/{i}.jpg" for i in range(n)]
    write_features(tmp_path / "f.npz", paths, feats)
    return tmp_path / "f.npz", paths, labels


def test_label_list_errors_name_file_and_line(tmp_path):
    fpath, paths, labels = _write_case(tmp_path)
    long = tmp_path / "long.txt"
    long.write_text("".join(f"{p} {l}\n" for p, l in zip(paths + ["img/x.jpg"], list(labels) + [0], strict=True)))
    with pytest.raises(ValueError, match=r"long.txt:7: line for face 7, but .*f.npz has only 6 rows"):
        read_labels(long, 6, paths, str(fpath))
    short = tmp_path / "short.txt"
    short.write_text("".join(f"{p} {l}\n" for p, l in zip(paths[:5], labels[:5], strict=True)))
    with pytest.raises(ValueError, match=r"short.txt: 5 labelled lines but .*6 feature rows; feature row 5"):
        read_labels(short, 6, paths, str(fpath))
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("img/0.jpg 0\n\nimg/9.jpg 0\n")
    with pytest.raises(ValueError, match=r"wrong.txt:3: path img/9.jpg does not match feature row 1"):
        read_labels(wrong, 6, paths, str(fpath))
    fields = tmp_path / "fields.txt"
    fields.write_text("img/0.jpg\n")
    with pytest.raises(ValueError, match=r"fields.txt:1: expected 'path label', got 1 fields"):
        read_labels(fields, 6, paths, str(fpath))
    assert list(read_labels(short, 5, ["/abs/" + p for p in paths[:5]], "F")) == [str(v) for v in labels[:5]]


def test_ijbb_protocol_csv_with_ground_truth(tmp_path):
    meta = tmp_path / "IJBB" / "meta"
    meta.mkdir(parents=True)
    (meta / "ijbb_clustering_32_hint_100.csv").write_text(
        "TEMPLATE_ID,FILENAME,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
        "11,img/1.jpg,1,2,3,4\n12,frames/2.png,1,2,3,4\n13,img/3.jpg,1,2,3,4\n")
    (meta / "ijbb_clustering_test7_ground_truth.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n11,100,img/1.jpg\n12,200,x\n13,100,y\n")
    found = C.find_ijbb_protocol(tmp_path / "IJBB", 32)
    assert list(read_labels(found, 3, None, "F")) == ["100", "200", "100"]
    with pytest.raises(ValueError, match=r"ijbb_clustering_32_hint_100.csv:4: data row 3 has no feature row"):
        read_labels(found, 2, None, "F")
    with pytest.raises(FileNotFoundError, match="no ijbb_clustering_64_"):
        C.find_ijbb_protocol(tmp_path / "IJBB", 64)
    direct = tmp_path / "with_subject.csv"
    direct.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,5,a\n2,6,b\n")
    assert list(read_labels(direct, 2, None, "F")) == ["5", "6"]


def test_cli_table_json_and_errors(tmp_path, capsys):
    feats, labels = _blobs(n_ids=6, per_id=5, dim=32)
    paths = [f"faces/{i}.jpg" for i in range(len(labels))]
    write_features(tmp_path / "f.npz", paths, feats)
    (tmp_path / "l.txt").write_text("".join(f"{p} id{lab}\n" for p, lab in zip(paths, labels, strict=True)))
    out = tmp_path / "out" / "c.json"
    argv = ["--feat-list", str(tmp_path / "f.npz"), "--label-list", str(tmp_path / "l.txt"), "--json", str(out)]
    assert C.main(argv + ["--quality-reject", "0,0.2", "--reject-scores", "magnitude,random"]) == 0
    printed = capsys.readouterr().out
    assert "pair F" in printed and "leaving out the lowest-magnitude faces" in printed
    report = json.loads(out.read_text())
    for m in METHODS:
        r = report["methods"][m]
        assert r["pairwise_f"] == 1.0 and r["bcubed_f"] == 1.0 and r["nmi"] == pytest.approx(1.0)
        assert {"pairwise_precision", "pairwise_recall", "bcubed_precision", "bcubed_recall"} <= set(r)
    assert [c["score"] for c in report["quality_reject"]] == ["magnitude", "random"]
    assert report["quality_reject"][0]["num_faces"] == [30, 24]
    out.unlink()
    (tmp_path / "l.txt").write_text("faces/0.jpg id0\n")
    assert C.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "l.txt: 1 labelled lines" in err and not out.exists()
    assert C.main(argv + ["--methods", "kmeans"]) == 2
    assert "--methods: unknown ['kmeans']" in capsys.readouterr().err
    argv_dirs = ["--feat-list", str(tmp_path / "f.npz"), "--labels-from-dirs", "--json", str(out)]
    assert C.main(argv_dirs) == 0 and json.loads(out.read_text())["num_identities"] == 1  # all in faces/
    assert C.main(argv_dirs + ["--label-list", str(tmp_path / "l.txt")]) == 2
    assert "exactly one of" in capsys.readouterr().err


def _lfw_eigenfaces(lfw_dir, min_images=20, per_id=25, dims=64):
    """A quick weak embedding: whitened PCA of normalised grayscale face centres (eigenfaces)."""
    people = sorted(p for p in (lfw_dir / "images").iterdir() if len(list(p.iterdir())) >= min_images)
    files = [f for p in people for f in sorted(p.iterdir())[:per_id]]
    rows = []
    for f in files:
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)[24:104, 24:88].astype(np.float32)
        g = cv2.resize(g, (24, 30), interpolation=cv2.INTER_AREA)
        rows.append(((g - g.mean()) / (g.std() + 1e-6)).ravel())
    x = np.array(rows, np.float64)
    x -= x.mean(axis=0)
    vals, vecs = np.linalg.eigh(x.T @ x)
    top = np.argsort(vals)[::-1][:dims]
    return (x @ vecs[:, top] / np.sqrt(vals[top])).astype(np.float32), np.array([f.parent.name for f in files])


@pytest.mark.slow
def test_lfw_identities_cluster_better_than_shuffled_labels(lfw_dir, full_data):
    if full_data:
        feats, labels = _lfw_eigenfaces(lfw_dir)
        assert len(set(labels)) == 62 and len(labels) > 1400
    else:  # no one has 20 faces in the shipped 2,400 pairs: the 78 people with at least 6, 6 faces each
        feats, labels = _lfw_eigenfaces(lfw_dir, min_images=6, per_id=6)
        assert len(set(labels)) == 78 and len(labels) == 468
    idx, sim = knn_graph(feats, 10)
    threshold = float(np.median(sim[:, 0]))  # weak features: join the closer half of nearest neighbours
    shuffled = np.random.default_rng(0).permutation(labels)
    for method in METHODS:
        pred = cluster(method, feats, idx, sim, threshold)
        real, base = cluster_scores(labels, pred), cluster_scores(shuffled, pred)
        assert real["num_clusters"] < len(labels) * 0.9, method
        assert real["pairwise_precision"] > 5 * base["pairwise_precision"], method
        for key in ("pairwise_f", "bcubed_f", "nmi"):
            assert real[key] > base[key], (method, key)


def test_bench_cluster_tiny(tmp_path, capsys):
    from bench import bench_cluster

    out = tmp_path / "b.json"
    assert bench_cluster.main(["--sizes", "300", "--graph-only", "500", "--dim", "64", "--noise", "0.5",
                               "--threshold", "0.6", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("machine: ")
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows] == ["k-NN graph", *METHODS, "knn-cc (graph given)", "dbscan (graph given)"]
    assert all(r["seconds"] >= 0 and r["growth_mb"] >= 0 for r in rows)
    assert all(r["pairwise_f"] > 0.9 for r in rows[1:4]), [r["pairwise_f"] for r in rows]
    assert all(0 <= r["pairwise_f"] <= 1 and r["clusters"] > 1 for r in rows[4:])
