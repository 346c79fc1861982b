"""Feature files: text/npz/npy round trips and the errors that name the file and line at fault."""
from __future__ import annotations

import numpy as np
import pytest

from utils.feature_io import load_feature_file, load_features, read_text_features, write_features


def _feats(n=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.01, 50, (n, 1))).astype(np.float32)


def test_text_round_trip_is_exact_for_float32(tmp_path):
    feats = _feats()
    paths = [f"images/p{i}/img_{i:04d}.jpg" for i in range(len(feats))]
    out = tmp_path / "feat.list"
    write_features(out, paths, feats)
    got_paths, got = load_features(out)
    assert got_paths == paths
    assert got.dtype == np.float32 and np.array_equal(got, feats)
    lines = out.read_text().splitlines()
    assert len(lines) == len(feats) and lines[0].split()[0] == paths[0] and len(lines[0].split()) == 6


def test_seed_style_text_with_trailing_spaces_and_blank_lines(tmp_path):
    # The seed writes "path v1 v2 ... \n" (a space after every value); blank lines are ignored.
    f = tmp_path / "seed.list"
    f.write_text("a.jpg 1.5 -2 3e-1 \n\nb.jpg 0.1 0.2 0.3 \n")
    paths, feats = read_text_features(f, dtype=np.float64)
    assert paths == ["a.jpg", "b.jpg"]
    assert feats.dtype == np.float64
    # float64 parse of the decimal text, as the seed's np.asarray(..., dtype=float)
    assert feats[1, 0] == float("0.1") and feats[0].tolist() == [1.5, -2.0, 0.3]


def test_npz_and_npy_round_trip(tmp_path):
    feats = _feats()
    paths = [f"x/{i}.jpg" for i in range(len(feats))]
    write_features(tmp_path / "f.npz", paths, feats)
    ff = load_feature_file(tmp_path / "f.npz")
    assert ff.paths == paths and ff.has_paths and np.array_equal(ff.features, feats)
    np.testing.assert_allclose(ff.magnitudes, np.linalg.norm(feats.astype(np.float64), axis=1), rtol=1e-6)
    with np.load(tmp_path / "f.npz") as z:
        assert z["features"].dtype == np.float32 and z["magnitudes"].dtype == np.float32
        assert z["magnitudes"].shape == (len(feats),) and z["paths"].dtype.kind == "U"
    write_features(tmp_path / "f.npy", None, feats)
    names, got = load_features(tmp_path / "f.npy")
    assert np.array_equal(got, feats) and len(names) == len(feats)
    assert not load_feature_file(tmp_path / "f.npy").has_paths


def test_wrong_value_count_names_file_and_line(tmp_path):
    f = tmp_path / "bad.list"
    f.write_text("a.jpg 1 2 3\nb.jpg 1 2 3\n\nc.jpg 1 2\n")
    with pytest.raises(ValueError, match=r"bad\.list:4: expected a path and 3 values, got 2"):
        load_features(f)
    f.write_text("a.jpg 1 2 3\nb.jpg 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"bad\.list:2: .*got 4 values"):
        load_features(f)
    f.write_text("a.jpg 1 2 3\nb.jpg 1 zz 3\n")
    with pytest.raises(ValueError, match=r"bad\.list:2: not a number"):
        load_features(f)


def test_non_finite_features_name_row_and_path(tmp_path):
    f = tmp_path / "nan.list"
    f.write_text("a.jpg 1 2 3\n\nb.jpg 1 nan 3\nc.jpg inf 0 0\n")
    with pytest.raises(ValueError, match=r"nan\.list:3: features of row 1 \(b\.jpg\) contain NaN or inf"):
        load_features(f)
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0], [np.nan, 0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"row 1"):
        load_features(tmp_path / "nan.npy")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.list").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_features(tmp_path / "empty.list")
    (tmp_path / "nofeat.list").write_text("a.jpg\n")
    with pytest.raises(ValueError, match=r"nofeat\.list:1: a path with no feature values"):
        load_features(tmp_path / "nofeat.list")
    with pytest.raises(FileNotFoundError, match="missing.list"):
        load_features(tmp_path / "missing.list")
    np.savez(tmp_path / "nokey.npz", feats=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no 'features' array"):
        load_features(tmp_path / "nokey.npz")


def test_writer_refuses_bad_input(tmp_path):
    feats = _feats(2, 3)
    with pytest.raises(ValueError, match="whitespace"):
        write_features(tmp_path / "f.list", ["a b.jpg", "c.jpg"], feats)
    with pytest.raises(ValueError, match="one path per feature row"):
        write_features(tmp_path / "f.list", ["a.jpg"], feats)
    feats[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_features(tmp_path / "f.list", ["a.jpg", "b.jpg"], feats)
    assert not (tmp_path / "f.list").exists()


@pytest.mark.slow
def test_text_round_trip_at_lfw_size(tmp_path):
    """12,000 x 512 features, as gen_feat writes for LFW, survive the text format bit for bit (speed is
    bench territory: about 1 s each way on an idle 2-core machine)."""
    feats = _feats(12000, 512)
    paths = [f"images/{i}.jpg" for i in range(len(feats))]
    write_features(tmp_path / "big.list", paths, feats)
    got_paths, got = load_features(tmp_path / "big.list")
    assert list(got_paths) == paths
    assert np.array_equal(got, feats)
