"""The official MagFace repository's command lines, typed as its users type them (paths aside).

A tiny untrained iresnet18_w16 (512-d, as the seed's scripts assume) stands in for the released model;
real LFW faces (``lfw_dir``) are laid out as the seed's data/ folders under tmp_path.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import ijb, verification
from eval.metrics import read_pair_list
from models import build_backbone
from models.checkpoint import save_released
from utils.feature_io import load_feature_file

REPO = Path(__file__).resolve().parents[1]
NL = "18_w16"  # ./eval.sh CKPT SUFFIX NL -> --arch iresnet18_w16
ENV = {**{k: v for k, v in os.environ.items() if k != "MAGFACE_DEBUG"}, "PYTHON": sys.executable,
       "GEN_FEAT_ARGS": "--cpu-mode", "QUALITY_ARGS": "--fmr 0.1"}  # 10 impostor pairs: too few for FMR 1e-3


def sh(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=1800)  # three gen_feat runs: minutes on a heavily shared 2-core machine


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "magface_epoch_00025.pth"
    save_released(path, build_backbone(f"iresnet{NL}", 512), None, 25, f"iresnet{NL}")
    return path


def _lfw_pairs(lfw_dir: Path, offset: int) -> list[tuple[str, str, int]]:
    """Two pairs per tenth of the list, the seed's 10 folds (the ``offset``-th same and different pair of each):
    20 pairs. In lfw112 a tenth is a standard fold of 300 same then 300 different pairs."""
    images = (lfw_dir / "img.list").read_text().split()
    labels = [int(line.split()[2]) for line in (lfw_dir / "pair.list").read_text().splitlines()]
    tenth = len(labels) // 10
    out = []
    for fold in range(10):
        block = range(fold * tenth, (fold + 1) * tenth)
        same, different = [i for i in block if labels[i]], [i for i in block if not labels[i]]
        for i in (same[offset], different[offset]):
            out.append((images[2 * i], images[2 * i + 1], labels[i]))
    return out


def _write_set(root: Path, name: str, pairs, lfw_dir: Path, style: str) -> None:
    """data/<name>/{img.list,pair.list}; image paths relative to the list ('list'), to the folder the
    seed's scripts run in ('cwd', as the seed's own lists are) or absolute."""
    folder = root / "data" / name
    lines = []
    for k, (a, b, _) in enumerate(pairs):
        for j, rel in enumerate((a, b)):
            dst = folder / "images" / f"{2 * k + j:03d}_{Path(rel).name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lfw_dir / rel, dst)
            lines.append({"list": dst.relative_to(folder), "cwd": dst.relative_to(root), "abs": dst}[style])
    (folder / "img.list").write_text("".join(f"{p}\n" for p in lines))
    (folder / "pair.list").write_text("".join(f"{2 * k} {2 * k + 1} {lab}\n" for k, (*_, lab) in enumerate(pairs)))


@pytest.fixture(scope="module")
def seed_tree(tmp_path_factory, lfw_dir) -> Path:
    """<tmp>/eval_recognition/data/{lfw,cfp,agedb} and an empty <tmp>/eval_quality beside it."""
    top = tmp_path_factory.mktemp("seed")
    rec = top / "eval_recognition"
    for name, offset, style in (("lfw", 0, "list"), ("cfp", 1, "cwd"), ("agedb", 2, "abs")):
        _write_set(rec, name, _lfw_pairs(lfw_dir, offset), lfw_dir, style)
    (top / "eval_quality").mkdir()
    return top


@pytest.fixture(scope="module")
def eval_sh_run(seed_tree, ckpt) -> subprocess.CompletedProcess:
    script = REPO / "eval" / "eval_recognition" / "eval.sh"
    return sh(script, [str(ckpt), "official", NL], seed_tree / "eval_recognition")


@pytest.mark.slow
def test_eval_sh_writes_seed_features_and_prints_accuracy(eval_sh_run, seed_tree):
    res = eval_sh_run
    assert res.returncode == 0, res.stdout + res.stderr
    accuracies = re.findall(r"^    Accuracy: (\d\.\d{5})\+-(\d\.\d{5})$", res.stdout, re.M)
    assert [line for line in res.stdout.splitlines() if line.startswith("evaluate ")] == \
        ["evaluate lfw", "evaluate cfp", "evaluate agedb"]
    assert len(accuracies) == 3
    rec = seed_tree / "eval_recognition"
    for (mean, std), name in zip(accuracies, ("lfw", "cfp", "agedb"), strict=True):
        feats = rec / "features" / f"magface_iresnet{NL}" / f"{name}_official.list"
        first = feats.read_text().splitlines()[0].split()
        assert len(first) == 1 + 512  # the seed's text format: path f1 ... f512
        ff = load_feature_file(feats, dtype=np.float64)
        i0, i1, same = read_pair_list(rec / "data" / name / "pair.list", len(ff.features))
        report = verification.evaluate_pairs(ff.features[i0], ff.features[i1], same, "magface", 10)
        assert (mean, std) == (f"{report['accuracy_mean']:.5f}", f"{report['accuracy_std']:.5f}")


@pytest.mark.slow
def test_eval_1v1_py_in_its_folder_takes_the_seed_flags(eval_sh_run, seed_tree):
    rec = seed_tree / "eval_recognition"
    feats = f"features/magface_iresnet{NL}/lfw_official.list"
    res = subprocess.run([sys.executable, str(REPO / "eval" / "eval_recognition" / "eval_1v1.py"), "--feat-list",
                          feats, "--pair-list", "data/lfw/pair.list", "--distance-metric", "1", "--test-folds", "10"],
                         cwd=rec, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lfw_line = re.findall(r"^    Accuracy: .*$", eval_sh_run.stdout, re.M)[0]
    assert res.stdout.splitlines()[-1] == lfw_line


@pytest.mark.slow
def test_eval_quality_sh_on_the_features_eval_sh_wrote(eval_sh_run, seed_tree):
    assert eval_sh_run.returncode == 0
    script = REPO / "eval" / "eval_quality" / "eval_quality.sh"
    found = sh(script, ["lfw", "official", NL], seed_tree / "eval_quality")  # images beside lfw's img.list
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("evaluate lfw\n")
    header = next(line for line in found.stdout.splitlines() if line.startswith("reject"))
    assert header.split() == ["reject", "magnitude", "random", "sharpness"]
    # cfp's list is relative to eval_recognition/: not findable from eval_quality/, so sharpness is left out
    lost = sh(script, ["cfp", "official", NL], seed_tree / "eval_quality")
    assert lost.returncode == 0, lost.stderr
    left_out = [line for line in lost.stdout.splitlines() if "left out" in line]
    assert len(left_out) == 1 and left_out[0].startswith("sharpness left out: ") and "not found" in left_out[0]
    header = next(line for line in lost.stdout.splitlines() if line.startswith("reject"))
    assert header.split() == ["reject", "magnitude", "random"]
    # the seed's own python call, in that folder, with its extra flags
    res = subprocess.run([sys.executable, str(REPO / "eval" / "eval_quality" / "eval_quality.py"), "--feat-list",
                          f"../eval_recognition/features/magface_iresnet{NL}/lfw_official.list", "--pair-list",
                          "../eval_recognition/data/lfw/pair.list", "--eval-type", "1v1", "--fmr", "0.1"],
                         cwd=seed_tree / "eval_quality", env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == found.stdout[len("evaluate lfw\n"):]


def _ijb_meta(base: Path, kind: str, lfw_dir: Path) -> None:
    """A tiny synthetic IJB protocol over real faces: 6 identities x 2 images, one template per image,
    two media ids; every template pair labelled by identity."""
    meta = base / "meta"
    (base / "loose_crop").mkdir(parents=True)
    meta.mkdir()
    listed = (lfw_dir / "img.list").read_text().split()
    same = [i for i, line in enumerate((lfw_dir / "pair.list").read_text().splitlines()) if line.split()[2] == "1"]
    images = [listed[2 * i + k] for i in same[:6] for k in (0, 1)]  # the first 6 same pairs: 2 faces per identity
    rows, names = [], []
    for k, rel in enumerate(images):
        name = f"{k + 1}.jpg"
        shutil.copy(lfw_dir / rel, base / "loose_crop" / name)
        names.append(f"../loose_crop/{name}")
        rows.append(f"{name} {k + 1} {100 + k % 2}")
    (meta / "img.list").write_text("".join(f"{n}\n" for n in names))
    (meta / f"ijb{kind}_face_tid_mid.txt").write_text("".join(f"{r}\n" for r in rows))
    pairs = [f"{a + 1} {b + 1} {int(a // 2 == b // 2)}" for a in range(12) for b in range(a + 1, 12)]
    (meta / f"ijb{kind}_template_pair_label.txt").write_text("".join(f"{p}\n" for p in pairs))


@pytest.mark.slow
def test_eval_ijb_sh_over_ijbb_and_ijbc(seed_tree, ckpt, lfw_dir):
    rec = seed_tree / "eval_recognition"
    for kind in ("b", "c"):
        _ijb_meta(rec / "data" / f"IJB{kind.upper()}", kind, lfw_dir)
    res = sh(REPO / "eval" / "eval_recognition" / "eval_ijb.sh", [str(ckpt), "official", NL], rec)
    assert res.returncode == 0, res.stdout + res.stderr
    for kind in ("b", "c"):
        feats = rec / "features" / f"magface_iresnet{NL}" / f"ijb{kind}_official.list"
        base = rec / "data" / f"IJB{kind.upper()}"
        report = ijb.evaluate_ijb(ijb.load_features(feats)[1], *ijb.load_protocol(base, kind), "mean")
        row = next(line for line in res.stdout.splitlines() if line.startswith(f"IJB-{kind.upper()} "))
        assert row.split()[3:] == [f"{v:.4f}" for v in report["tar_at_far"].values()]
        assert row.split()[1:3] == ["mean", "66"]


@pytest.mark.slow
def test_gen_feat_seed_flags_as_script_and_module(seed_tree, ckpt, tmp_path):
    lst = seed_tree / "eval_recognition" / "data" / "lfw" / "img.list"
    common = ["--arch", f"iresnet{NL}", "--inf_list", str(lst), "--resume", str(ckpt), "-b", "256",
              "--embedding_size", "512", "-p", "100", "--cpu-mode", "--dist", "1"]
    outs = []
    for how, extra in ((["-m", "inference.gen_feat"], ["-j", "0"]),
                       ([str(REPO / "inference" / "gen_feat.py")], ["-j", "4"])):
        out = tmp_path / f"{len(outs)}.list"
        res = subprocess.run([sys.executable, *how, *common, *extra, "--feat_list", str(out)], cwd=REPO,
                             env=ENV, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        outs.append(load_feature_file(out, dtype=np.float64))
    assert outs[0].paths == outs[1].paths and len(outs[0].paths) == 40
    np.testing.assert_allclose(outs[0].features, outs[1].features, rtol=1e-5, atol=1e-5)


def test_eval_sh_unusable_checkpoint_is_one_line_and_exit_2(seed_tree, tmp_path):
    """The checkpoint is read once, for its arch, before any set: a missing one is one line and no features folder
    (a failing gen_feat is tests/test_eval_scripts_arch.py's)."""
    shutil.copytree(seed_tree / "eval_recognition" / "data" / "lfw", tmp_path / "data" / "lfw")
    res = sh(REPO / "eval" / "eval_recognition" / "eval.sh", [str(tmp_path / "gone.pth"), "official", NL], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stdout == ""
    assert res.stderr.splitlines() == [f"eval.sh: error: checkpoint not found: {tmp_path / 'gone.pth'}"]
    assert not (tmp_path / "features").exists()
