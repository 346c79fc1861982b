"""The demo's quality half (run/demo_quality.py) and the demo end to end on a tiny slice of the real data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faces.degrade import KINDS
from models import build_backbone
from models.checkpoint import save_released
from run import demo
from run.demo_quality import damage_ladder, ladder_faces, quality_stage

REPO = Path(__file__).resolve().parents[1]
DEMO_LFW = REPO / "raw" / "demo_data" / "lfw"
ARCH, SIZE, EMB = "iresnet18_w16", 56, 32


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_backbone(ARCH, EMB, input_size=SIZE).eval()
    save_released(path, model, None, 0, ARCH, config={"input_size": SIZE})
    return path


def _tiny_data(root: Path, pairs: int = 28, train_rows: int = 0) -> Path:
    """A --data folder: the first ``pairs`` demo LFW pairs (images linked), optionally a CelebA slice."""
    lfw = root / "lfw"
    lfw.mkdir(parents=True)
    names = (DEMO_LFW / "img.list").read_text().split()[:2 * pairs]
    (lfw / "img.list").write_text("".join(f"{n}\n" for n in names))
    (lfw / "images").symlink_to(DEMO_LFW / "images", target_is_directory=True)
    (lfw / "pair.list").write_text("".join(
        line + "\n" for line in (DEMO_LFW / "pair.list").read_text().splitlines()[:pairs]))
    if train_rows:
        src = REPO / "raw" / "demo_data" / "celeba"
        lines = (src / "train.list").read_text().splitlines()
        by_id: dict[str, list[str]] = {}
        for line in lines:
            by_id.setdefault(line.split()[2], []).append(line)
        picked = [ln for rows in list(by_id.values())[:train_rows // 4] for ln in rows[:4]]
        remap = {ident: k for k, ident in enumerate(dict.fromkeys(ln.split()[2] for ln in picked))}
        (root / "celeba").mkdir()
        (root / "celeba" / "train.list").write_text("".join(
            f"{src / p} {a} {remap[i]} {b}\n" for p, a, i, b in (ln.split() for ln in picked)))
    return root


@pytest.mark.slow
def test_quality_stage_scores_both_candidates_and_keeps_the_lower_spearman(tmp_path):
    data = _tiny_data(tmp_path / "data")
    cands = {"trained": _checkpoint(tmp_path / "a.pth", 0), "shipped": _checkpoint(tmp_path / "b.pth", 1)}
    out = tmp_path / "out"
    out.mkdir()
    q = quality_stage(cands, data, out, "cpu")
    rhos = {n: c["spearman"]["overall"] for n, c in q["quality_candidates"].items()}
    assert set(rhos) == {"trained", "shipped"} and rhos["trained"] != rhos["shipped"]
    best = min(rhos, key=rhos.get)
    assert q["quality_model"] == best and q["quality_checkpoint"] == str(cands[best])
    assert q["quality_spearman"] == rhos[best] and -1 <= q["quality_spearman"] <= 1
    assert set(q["quality_spearman_by_kind"]) == {*KINDS, "overall"}
    for areas in q["quality_erc_auc"].values():
        assert set(areas) == {"magnitude", "random", "sharpness"}
    for key in ("damage_ladder", "damage_erc_plot", "face_grid"):
        assert Path(q[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / f"quality_{best}.json").read_text())
    assert saved["spearman"]["overall"] == rhos[best]
    assert all(np.isfinite(v) for v in q["quality_spearman_by_kind"].values())  # 4 damaged faces per kind
    assert sorted(q["damage_ladder_magnitudes"]) == sorted(KINDS)


@pytest.mark.slow
def test_ladder_at_severity_zero_matches_the_feature_file_of_the_clean_face(tmp_path):
    """The ladder embeds in memory; its undamaged column must equal gen_feat's magnitude of that face."""
    data = _tiny_data(tmp_path / "data")
    ckpt = _checkpoint(tmp_path / "a.pth", 0)
    out = tmp_path / "out"
    out.mkdir()
    q = quality_stage({"trained": ckpt}, data, out, "cpu")
    z = np.load(out / "damaged_trained.npz")
    by_path = {str(p): m for p, m in zip(z["paths"], z["magnitudes"], strict=True)}
    faces = ladder_faces(Path(q["damaged_set"]), KINDS)
    assert [k for k, _ in faces] == list(KINDS)
    for kind, face in faces:
        clean_mag = by_path[str(face.relative_to(q["damaged_set"]))]
        assert q["damage_ladder_magnitudes"][kind][0] == pytest.approx(clean_mag, rel=1e-4)
    # damage changes the input, so the magnitudes along a ladder are not all equal
    mags = damage_ladder(ckpt, faces[:1], tmp_path / "l.png", "cpu")
    assert len(set(mags[KINDS[0]])) > 1


def test_demo_rejects_a_missing_reference_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="--reference .*nope.pth.*--reference none"):
        demo.main(["--out", str(tmp_path / "o"), "--reference", str(tmp_path / "nope.pth")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_slice_writes_the_quality_summary(tmp_path):
    data = _tiny_data(tmp_path / "data", train_rows=64)
    ref = _checkpoint(tmp_path / "ref.pth", 3)
    out = tmp_path / "out"
    s = demo.main(["--out", str(out), "--data", str(data), "--arch", ARCH, "--embedding-size", str(EMB),
                   "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
                   "--reference", str(ref), "--finetune-steps", "1", "--lfw-full", str(data / "lfw")])
    written = json.loads((out / "demo_summary.json").read_text())
    cands = written["quality_candidates"]
    assert set(cands) == {"trained", "finetuned", "shipped"}
    assert written["quality_checkpoint"] == cands[written["quality_model"]]["checkpoint"]
    ft_config = json.loads((out / "finetune" / "config.json").read_text())
    assert ft_config["arch"] == "mobilefacenet" and ft_config["head_init"] == "class-means"
    assert ft_config["input_convention"] == "imagenet" and ft_config["max_steps"] == 1
    assert written["lfw_accuracy_full"] is not None and 0 <= written["lfw_accuracy_full"] <= 1
    assert all(0 <= c["accuracy"] <= 1 for c in cands.values())
    assert written["quality_spearman"] == cands[written["quality_model"]]["spearman"]["overall"]
    assert "1e-02" in written["quality_erc_auc"]
    reports = {f"verification_{tag}.json" for tag in ("untrained", "trained", "finetuned", "shipped")} | \
        {"erc.json", "erc.png", "lfw_full.npz"}
    assert reports <= {p.name for p in out.iterdir()}
    assert json.loads((out / "verification_trained.json").read_text())["accuracy_mean"] == s["trained_accuracy"]
    assert json.loads((out / "erc.json").read_text())["auc"] == s["erc_auc"]
