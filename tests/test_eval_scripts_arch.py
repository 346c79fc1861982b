"""The seed's eval scripts take the backbone from the checkpoint, refuse a disagreeing NL in one line, find the
features eval.sh wrote, and leave no empty features folder behind a failed run.

A tiny untrained iresnet18_w16 with a 64-d embedding (not the seed's iresnet100 / 512) over 20 real LFW pairs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.checkpoint_arch import main as arch_main
from eval.checkpoint_arch import nl_arch, resolve_arch
from models import build_backbone
from models.checkpoint import save_released

REPO = Path(__file__).resolve().parents[1]
EVAL_SH = REPO / "eval" / "eval_recognition" / "eval.sh"
QUALITY_SH = REPO / "eval" / "eval_quality" / "eval_quality.sh"
ARCH = "iresnet18_w16"
ENV = {**{k: v for k, v in os.environ.items() if k != "MAGFACE_DEBUG"}, "PYTHON": sys.executable,
       "GEN_FEAT_ARGS": "--cpu-mode", "QUALITY_ARGS": "--fmr 0.1"}


def sh(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "demo.pth"
    save_released(path, build_backbone(ARCH, 64), None, 3, ARCH)
    return path


def _lfw_set(top: Path, lfw_dir: Path, missing_image: bool = False) -> Path:
    """<top>/eval_recognition/data/lfw: ten genuine and ten impostor pairs, alternating (one of each per fold), and
    an empty <top>/eval_quality beside it; ``missing_image`` points the last list line at a file that is not there."""
    rec = top / "eval_recognition"
    folder = rec / "data" / "lfw"
    (folder / "images").mkdir(parents=True)
    images = (lfw_dir / "img.list").read_text().split()
    labels = [line.split()[2] for line in (lfw_dir / "pair.list").read_text().splitlines()]
    same, diff = ([i for i, lab in enumerate(labels) if lab == want][:10] for want in ("1", "0"))
    lines, pairs = [], []
    for k, i in enumerate(i for both in zip(same, diff, strict=True) for i in both):
        for j in (0, 1):
            dst = folder / "images" / f"{2 * k + j:03d}.jpg"
            shutil.copy(lfw_dir / images[2 * i + j], dst)
            lines.append(str(dst.relative_to(folder)))
        pairs.append(f"{2 * k} {2 * k + 1} {labels[i]}")
    if missing_image:
        lines[-1] = "images/gone.jpg"
    (folder / "img.list").write_text("".join(f"{p}\n" for p in lines))
    (folder / "pair.list").write_text("".join(f"{p}\n" for p in pairs))
    (top / "eval_quality").mkdir()
    return rec


def test_nl_and_the_recorded_arch(ckpt, tmp_path, capsys):
    assert nl_arch("100") == "iresnet100" and nl_arch("18_w32") == "iresnet18_w32"
    assert nl_arch("mobilefacenet") == "mobilefacenet" and nl_arch("r50") == "iresnet50"
    assert resolve_arch(ckpt) == resolve_arch(ckpt, "18_w16") == (ARCH, 64)
    bare = tmp_path / "bare.pth"  # an insightface-style state dict records nothing: its weights say what it is
    torch.save(build_backbone(ARCH, 64).state_dict(), bare)
    assert resolve_arch(bare) == (ARCH, 64)
    assert arch_main(["--prog", "eval.sh", str(ckpt), "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"eval.sh: error: NL 100 means iresnet100, but checkpoint {ckpt} records arch {ARCH}: pass 18_w16, "
                   "or leave NL out to use the checkpoint's")


@pytest.fixture(scope="module")
def evaluated(ckpt, lfw_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """eval.sh CKPT official, without NL, in a seed-style folder holding data/lfw only."""
    rec = _lfw_set(tmp_path_factory.mktemp("seed"), lfw_dir)
    return rec, sh(EVAL_SH, [str(ckpt), "official"], rec)


def test_eval_sh_takes_the_arch_from_the_checkpoint(evaluated):
    rec, res = evaluated
    assert res.returncode == 0, res.stdout + res.stderr
    feats = rec / "features" / f"magface_{ARCH}" / "lfw_official.list"
    assert len(feats.read_text().splitlines()[0].split()) == 1 + 64
    assert "    Accuracy: " in res.stdout and "data/cfp/img.list not found" in res.stderr


def test_a_disagreeing_nl_is_one_line_and_writes_nothing(ckpt, lfw_dir, tmp_path):
    rec = _lfw_set(tmp_path, lfw_dir)
    res = sh(EVAL_SH, [str(ckpt), "official", "100"], rec)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [f"eval.sh: error: NL 100 means iresnet100, but checkpoint {ckpt} records arch "
                                       f"{ARCH}: pass 18_w16, or leave NL out to use the checkpoint's"]
    assert not (rec / "features").exists()


def test_a_failed_gen_feat_leaves_no_empty_features_folder(ckpt, lfw_dir, tmp_path):
    rec = _lfw_set(tmp_path, lfw_dir, missing_image=True)
    res = sh(EVAL_SH, [str(ckpt), "official", "18_w16"], rec)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "eval.sh: gen_feat failed on lfw" in res.stderr and "gone.jpg" in res.stderr
    assert not (rec / "features").exists()


def test_eval_quality_sh_follows_the_folder_eval_sh_wrote(evaluated):
    rec, first = evaluated
    assert first.returncode == 0
    res = sh(QUALITY_SH, ["lfw"], rec.parent / "eval_quality")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("evaluate lfw\n")
    header = next(line for line in res.stdout.splitlines() if line.startswith("reject"))
    assert header.split() == ["reject", "magnitude", "random", "sharpness"]
    table = [line for line in res.stdout.splitlines() if line.split()[:1] and line.split()[0].endswith("%")]
    if any("nan" in line for line in table):  # 10 impostor pairs at FMR 0.1: a row left undefined is explained
        assert any(line.startswith("note: nan where too few pairs remain") for line in res.stdout.splitlines())


def test_eval_quality_sh_without_or_with_ambiguous_features(evaluated, tmp_path):
    rec, first = evaluated
    assert first.returncode == 0
    (tmp_path / "eval_quality").mkdir()
    none = sh(QUALITY_SH, ["lfw"], tmp_path / "eval_quality")
    assert none.returncode == 2 and none.stdout == ""
    assert none.stderr.startswith("eval_quality.sh: no ../eval_recognition/features/magface_*/lfw_official.list in ")
    other = rec / "features" / "magface_iresnet100"
    other.mkdir()
    try:
        (other / "lfw_official.list").write_text("")
        two = sh(QUALITY_SH, ["lfw"], rec.parent / "eval_quality")
    finally:
        shutil.rmtree(other)
    assert two.returncode == 2 and len(two.stderr.splitlines()) == 1
    assert "pass NL, one of 100 18_w16" in two.stderr
