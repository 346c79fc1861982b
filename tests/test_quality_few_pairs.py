"""eval.quality with too few pairs: an error when no ERC entry is defined, a note naming the NaN rows otherwise."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eval import quality as Q
from utils.feature_io import write_features


def _pairs(folder: Path, dists: list[float], same: list[bool]) -> list[str]:
    """2-D features: pair q is two images of magnitude q + 1 at angular distance dists[q], so the pairs'
    magnitude quality rises with their position; returns the CLI's file arguments."""
    feats = []
    for q, d in enumerate(dists):
        mag = 1.0 + q
        feats += [[mag, 0.0], [mag * math.cos(math.pi * d), mag * math.sin(math.pi * d)]]
    write_features(folder / "feat.list", [f"{i}.jpg" for i in range(len(feats))], np.array(feats))
    (folder / "pair.list").write_text("".join(f"{2 * q} {2 * q + 1} {int(s)}\n" for q, s in enumerate(same)))
    return ["--feat-list", str(folder / "feat.list"), "--pair-list", str(folder / "pair.list")]


@pytest.mark.parametrize("fmr, need", [(1e-3, 101), (1e-2, 11), (0.1, 2), (2e-3, 51), (0.5, 2)])
def test_min_impostor_pairs_is_where_the_seed_rule_starts(fmr, need):
    assert Q.min_impostor_pairs(fmr) == need
    assert Q.fmr_index(need, fmr) is not None and Q.fmr_index(need - 1, fmr) is None


@pytest.mark.parametrize("genuine, impostor, args, said", [
    (5, 50, [], "55 pairs (5 genuine, 50 impostor); FNMR at FMR = 0.001 needs at least 1 genuine and 101 impostor"),
    (0, 30, ["--fmr", "0.1"], "30 pairs (0 genuine, 30 impostor); FNMR at FMR = 0.1 needs at least 1 genuine"),
    (3, 10, ["--fmr", "1e-2"], "13 pairs (3 genuine, 10 impostor); FNMR at FMR = 0.01 needs at least 1 genuine and 11"),
])
def test_no_computable_entry_is_a_one_line_error(tmp_path, capsys, genuine, impostor, args, said):
    same = [True] * genuine + [False] * impostor
    files = _pairs(tmp_path, [0.1] * genuine + [0.5] * impostor, same)
    assert Q.main(files + args + ["--scores", "magnitude,random", "--json", str(tmp_path / "erc.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    where = f"pair list {tmp_path / 'pair.list'} (features {tmp_path / 'feat.list'})"
    assert err.startswith(f"eval.quality: error: {where}: ")
    assert said in err and "nan" not in err.lower()
    assert not (tmp_path / "erc.json").exists()


def test_some_nan_rows_keep_the_numbers_and_say_why(tmp_path, capsys):
    """5 bad genuine (lowest quality), 10 impostors, 5 good genuine at FMR 0.1: rejecting 14 pairs (70%)
    leaves one impostor, fewer than the 2 the seed's rule needs."""
    files = _pairs(tmp_path, [0.6] * 5 + [0.40 + 0.01 * i for i in range(10)] + [0.1] * 5,
                   [True] * 5 + [False] * 10 + [True] * 5)
    assert Q.main(files + ["--fmr", "0.1", "--scores", "magnitude", "--json", str(tmp_path / "erc.json")]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: nan where too few pairs remain after rejection: magnitude from 70% rejected "
                     "(1 impostor pair left, FMR = 0.1 needs 2); such a curve's AUC is nan"]
    report = json.loads((tmp_path / "erc.json").read_text())
    fnmr = report["fnmr"]["magnitude"]
    assert fnmr[:14] == pytest.approx([(5 - k) / (10 - k) for k in range(5)] + [0.0] * 9)
    assert fnmr[14:] == [None] * 6 and report["auc"]["magnitude"] is None
    assert report["nan_rows"] == {"magnitude": {"from_reject_ratio": 0.7, "genuine_pairs_left": 5,
                                                "impostor_pairs_left": 1}}


def test_nan_rows_for_want_of_genuine_pairs(tmp_path, capsys):
    """Two genuine pairs of the lowest quality: rejecting 10% (3 of 32 pairs) leaves none."""
    files = _pairs(tmp_path, [0.2, 0.3] + [0.5] * 30, [True] * 2 + [False] * 30)
    assert Q.main(files + ["--fmr", "0.1", "--scores", "magnitude"]) == 0
    out = capsys.readouterr().out
    assert "magnitude from 10% rejected (no genuine pair left)" in out
    table = [line for line in out.splitlines() if line.split()[:1] in (["0%"], ["5%"], ["10%"])]
    assert [line.split()[1] for line in table] == ["0.0000", "0.0000", "nan"]


def test_a_complete_curve_has_no_note(tmp_path, capsys):
    """Every 10th pair genuine: the best 5% kept at the last row still hold 1 genuine and 9 impostor pairs."""
    same = [q % 10 == 0 for q in range(200)]
    files = _pairs(tmp_path, [0.1 if s else 0.5 for s in same], same)
    assert Q.main(files + ["--fmr", "0.1", "--scores", "magnitude"]) == 0
    assert "note:" not in capsys.readouterr().out
