"""eval/damage*.py: the known-damage quality benchmark (metrics on toy arrays, make -> score on real LFW)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval import damage
from eval.damage_report import BANDS, erc, median_by_band, quality_report, spearman, spearman_by_kind
from eval.damage_set import DamageTable, make_damaged_set, read_damage_table
from faces.degrade import KINDS, degrade
from utils.feature_io import write_features

N_PAIRS = 40


def _table(kind, severity) -> DamageTable:
    n = len(kind)
    return DamageTable([f"f{i}.png" for i in range(n)], np.arange(n) // 2, np.array(kind), np.array(severity, float))


def test_spearman_known_answers():
    sev = np.linspace(0.05, 1, 20)
    assert spearman(1 - sev ** 2, sev) == pytest.approx(-1.0)
    assert spearman(np.exp(sev), sev) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones(20), sev))
    table = _table(["none", "blur"] * 10, np.where(np.arange(20) % 2, sev, 0))
    score = np.where(table.kind == "blur", -table.severity, 99.0)
    assert spearman_by_kind(score, table) == {"overall": pytest.approx(-1.0), "blur": pytest.approx(-1.0)}


def test_band_medians_on_a_hand_made_table():
    severity = [0, 0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.8, 1.0, 1.0]
    score = [10, 12, 1, 3, 5, 7, 20, 30, 2, 4, 9]
    med = median_by_band(np.array(score, float), np.array(severity))
    assert list(med) == list(BANDS)
    assert med == {"clean": 11.0, "(0,0.25]": 2.0, "(0.25,0.5]": 6.0, "(0.5,0.75]": 25.0, "(0.75,1]": 4.0}
    assert np.isnan(median_by_band(np.ones(2), np.array([0.0, 0.1]))["(0.75,1]"])


def _unit(angle_pi: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(np.pi * angle_pi), np.sin(np.pi * angle_pi)], axis=1)


def test_erc_rejecting_the_only_false_non_matches_drops_fnmr_to_zero():
    rng = np.random.default_rng(0)
    n = 220  # pairs 0..19 genuine, 20..219 impostor; genuine pairs 3 and 11 are the false non-matches
    gap = np.concatenate([np.full(20, 0.05), rng.uniform(0.4, 0.6, n - 20)])
    gap[[3, 11]] = 0.9
    feats = np.empty((2 * n, 2))
    feats[0::2], feats[1::2] = _unit(np.zeros(n)), _unit(gap)
    i0, i1, issame = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), np.arange(n) < 20
    score = rng.uniform(0.1, 1.0, 2 * n)
    score[[2 * 3 + 1, 2 * 11 + 1]] = 0.0
    fnmr, _ = erc(feats, i0, i1, issame, score, fmr=0.1)
    assert fnmr[0] == pytest.approx(2 / 20)
    assert fnmr[1] == 0.0  # int(0.05 * 220) = 11 lowest pairs rejected, the two false non-matches among them
    defined = np.isfinite(fnmr)
    assert defined[:10].all() and np.all(fnmr[defined][1:] == 0.0)
    reverse = erc(feats, i0, i1, issame, 1 - score, fmr=0.1)[0]
    assert reverse[1] >= 2 / 20  # ranked the other way, both are kept


def test_quality_report_rejects_bad_scores():
    table = _table(["none", "jpeg"] * 3, [0, 0.2, 0, 0.5, 0, 0.9])
    feats = np.random.default_rng(0).standard_normal((6, 4))
    i0, i1, issame = np.array([0, 2, 4]), np.array([1, 3, 5]), np.array([True, False, True])
    with pytest.raises(ValueError, match="'q'"):
        quality_report(feats, table, i0, i1, issame, {"q": np.ones(5)})
    with pytest.raises(ValueError, match="'q'"):
        quality_report(feats, table, i0, i1, issame, {"q": np.array([1, 2, np.nan, 4, 5, 6.0])})
    with pytest.raises(ValueError, match="5 feature rows"):
        quality_report(feats[:5], table, i0, i1, issame, {"q": np.ones(6)})


@pytest.fixture(scope="module")
def subset(tmp_path_factory, lfw_dir):
    """LFW View 2's image list with absolute paths, and N_PAIRS of its pairs (half same, half different)."""
    root = tmp_path_factory.mktemp("lfw_subset")
    paths = (lfw_dir / "img.list").read_text().split()
    (root / "img.list").write_text("".join(f"{lfw_dir / p}\n" for p in paths))
    pairs = (lfw_dir / "pair.list").read_text().splitlines()
    pairs = [[line for line in pairs if line.split()[2] == label][: N_PAIRS // 2] for label in ("1", "0")]
    pairs = pairs[0] + pairs[1]  # the first same and the first different pairs of the list
    assert sorted({line.split()[2] for line in pairs}) == ["0", "1"]
    (root / "pair.list").write_text("".join(f"{line}\n" for line in pairs))
    return root


@pytest.fixture(scope="module")
def made(subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "set"
    assert make_damaged_set(subset / "img.list", subset / "pair.list", out, KINDS, seed=3) == out
    return out


def test_make_writes_the_documented_set(made, subset):
    src_paths = (subset / "img.list").read_text().split()
    src_pairs = [line.split() for line in (subset / "pair.list").read_text().splitlines()]
    listed = (made / "img.list").read_text().split()
    assert len(listed) == 2 * N_PAIRS and not list(made.parent.glob(".*"))
    with open(made / "damage.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == listed and [int(r["row"]) for r in rows] == list(range(2 * N_PAIRS))
    for p, (a, b, label) in enumerate(src_pairs):
        assert (made / "pair.list").read_text().splitlines()[p] == f"{2 * p} {2 * p + 1} {label}"
        clean, dmg = rows[2 * p], rows[2 * p + 1]
        assert (clean["kind"], float(clean["severity"]), clean["source"]) == ("none", 0.0, src_paths[int(a)])
        assert (made / clean["path"]).read_bytes() == Path(src_paths[int(a)]).read_bytes()
        sev = float(dmg["severity"])
        assert dmg["kind"] in KINDS and 0 < sev < 1 and dmg["source"] == src_paths[int(b)]
        expect = degrade(cv2.imread(src_paths[int(b)]), dmg["kind"], sev, np.random.default_rng([3, p]))
        assert np.array_equal(cv2.imread(str(made / dmg["path"])), expect)
    counts = [sum(r["kind"] == k for r in rows) for k in KINDS]
    assert max(counts) - min(counts) <= 1  # kinds balanced over the pairs
    table = read_damage_table(made / "damage.csv")
    assert table.paths == listed and int(table.damaged.sum()) == N_PAIRS


def test_make_keeps_the_same_set_and_refuses_a_different_one(made, subset):
    stamp = (made / "manifest.json").stat().st_mtime_ns
    make_damaged_set(subset / "img.list", subset / "pair.list", made, KINDS, seed=3)
    assert (made / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="--force"):
        make_damaged_set(subset / "img.list", subset / "pair.list", made, ["blur"], seed=3)


def test_make_force_replaces_and_cli_make(subset, tmp_path, capsys):
    out = tmp_path / "set"
    args = ["make", "--img-list", str(subset / "img.list"), "--pair-list", str(subset / "pair.list"),
            "--out", str(out), "--kinds", "noise,dark"]
    assert damage.main(args) == 0
    assert damage.main(args[:-1] + ["jpeg", "--seed", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert damage.main(args[:-1] + ["jpeg", "--seed", "1", "--force"]) == 0
    assert set(read_damage_table(out / "damage.csv").kind.tolist()) == {"none", "jpeg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folders left


def test_make_errors_name_the_problem(subset, tmp_path, capsys):
    base = ["make", "--img-list", str(subset / "img.list"), "--pair-list", str(subset / "pair.list")]
    assert damage.main(base + ["--out", str(tmp_path / "a"), "--kinds", "blur,smear"]) == 2
    assert "'smear'" in capsys.readouterr().err
    bad = tmp_path / "img.list"
    lines = (subset / "img.list").read_text().splitlines()
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    lines[3] = str(garbage)
    bad.write_text("\n".join(lines) + "\n")
    assert damage.main(["make", "--img-list", str(bad), "--pair-list", str(subset / "pair.list"),
                        "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.jpg", "img.list"]


@pytest.fixture(scope="module")
def scored(made, tmp_path_factory):
    """Random features of the made set, and an oracle quality file (1 - severity)."""
    root = tmp_path_factory.mktemp("scored")
    table = read_damage_table(made / "damage.csv")
    feats = np.random.default_rng(0).standard_normal((len(table.paths), 16)).astype(np.float32)
    write_features(root / "feats.npz", table.paths, feats)
    (root / "oracle.txt").write_text("".join(f"{p} {float(1 - s)!r}\n" for p, s in zip(table.paths, table.severity,
                                                                                 strict=True)))
    return root


def test_score_end_to_end(made, scored, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert damage.main(["score", "--set", str(made), "--feat-list", str(scored / "feats.npz"),
                        "--score-file", str(scored / "oracle.txt"), "--json", str(out_json),
                        "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "oracle" in printed and "rho all" in printed
    report = json.loads(out_json.read_text())
    assert report["scores"] == ["magnitude", "random", "sharpness", "oracle"]
    assert report["spearman"]["oracle"]["overall"] == pytest.approx(-1.0)
    assert set(report["spearman"]["oracle"]) == {"overall", *KINDS}
    assert report["band_counts"]["clean"] == N_PAIRS and sum(report["band_counts"].values()) == 2 * N_PAIRS
    oracle_med = list(report["median_by_band"]["oracle"].values())
    assert oracle_med[0] == 1.0 and all(np.diff(oracle_med) < 0)
    assert set(report["erc"]) == {"1e-02", "1e-03"}
    curve = report["erc"]["1e-02"]["magnitude"]
    assert len(curve["fnmr"]) == len(report["reject_ratio"]) and curve["fnmr"][0] is not None
    assert cv2.imread(str(out_png)) is not None
    assert damage.main(["eval", "--set", str(made), "--feat-list", str(scored / "feats.npz"),
                        "--scores", "sharpness"]) == 0  # the alias, and sharpness on the set's own images


def _fails(args: list[str], capsys, tmp_path, expect: str) -> None:
    outs = [tmp_path / "x.json", tmp_path / "x.png"]
    assert damage.main(args + ["--json", str(outs[0]), "--plot", str(outs[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not any(p.exists() for p in outs)


def test_score_bad_input_is_one_line_and_writes_nothing(made, scored, tmp_path, capsys):
    feats = str(scored / "feats.npz")
    table = read_damage_table(made / "damage.csv")
    short = tmp_path / "short.npz"
    write_features(short, table.paths[:-1], np.ones((len(table.paths) - 1, 4), np.float32))
    _fails(["score", "--set", str(made), "--feat-list", str(short)], capsys, tmp_path, "79 feature rows")
    _fails(["score", "--set", str(tmp_path), "--feat-list", feats], capsys, tmp_path, "damage table not found")
    bad = tmp_path / "bad.txt"
    bad.write_text((scored / "oracle.txt").read_text().replace(" 1.0\n", " high\n", 1))
    _fails(["score", "--set", str(made), "--feat-list", feats, "--score-file", str(bad)], capsys, tmp_path,
           f"{bad}:1: score 'high'")
    bad.write_text("".join((scored / "oracle.txt").read_text().splitlines(keepends=True)[1:]))
    _fails(["score", "--set", str(made), "--feat-list", feats, "--score-file", str(bad)], capsys, tmp_path,
           f"{bad}: no score for 1 images, e.g. {table.paths[0]}")
    bad.write_text("elsewhere.png 0.5\n")
    _fails(["score", "--set", str(made), "--feat-list", feats, "--score-file", str(bad)], capsys, tmp_path,
           f"{bad}:1: elsewhere.png is not an image")
    _fails(["score", "--set", str(made), "--feat-list", feats, "--fmr", "2"], capsys, tmp_path, "FMR")


def test_damage_table_errors_name_the_line(made, tmp_path):
    lines = (made / "damage.csv").read_text().splitlines()

    def edit(line: str, field: int, value: str) -> str:
        cells = line.split(",")
        cells[field] = value
        return ",".join(cells)

    cases = [(2, edit(lines[2], 3, "smear"), ":3: unknown kind 'smear'"),
             (4, edit(lines[4], 4, "1.5"), ":5: severity 1.5"),
             (3, edit(lines[3], 4, "0.5"), ":4: severity 0.5 .*'none'"),
             (5, edit(lines[5], 2, "five"), ":6: row, pair or severity is not a number"),
             (6, lines[7], ":7: row 6 out of order"),
             (0, "row,path,kind", ":1: expected the header")]
    for i, line, expect in cases:
        bad = tmp_path / f"t{i}.csv"
        bad.write_text("\n".join(lines[:i] + [line] + lines[i + 1:]) + "\n")
        with pytest.raises(ValueError, match=expect):
            read_damage_table(bad)
