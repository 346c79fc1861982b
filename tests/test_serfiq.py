"""SER-FIQ-style stability baseline: its arithmetic, its determinism, its file, and that it ranks a blurred face
below the clean one on real faces with the shipped pretrained recognizer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inference.serfiq import serfiq_scores, stability_scores
from models import build_backbone
from models.checkpoint import load_backbone
from utils.convention import MAGFACE

REPO = Path(__file__).resolve().parents[1]
DEMO_LFW = REPO / "raw" / "demo_data" / "lfw"


def test_stability_of_identical_and_opposite_embeddings():
    same = torch.ones(1, 5, 8)
    assert stability_scores(same).item() == pytest.approx(1.0)
    opposite = torch.cat([torch.ones(1, 1, 8), -torch.ones(1, 1, 8)], dim=1)  # distance 2 between the two
    assert stability_scores(opposite).item() == pytest.approx(2.0 / (1.0 + np.exp(2.0)))


def test_scores_repeat_with_the_seed_and_leave_the_model_as_it_was():
    model = build_backbone("iresnet18_w16", 32, input_size=56).eval()
    original = model.dropout
    images = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    a = serfiq_scores(model, images, MAGFACE, passes=6, seed=1)
    assert torch.equal(a, serfiq_scores(model, images, MAGFACE, passes=6, seed=1))
    assert not torch.equal(a, serfiq_scores(model, images, MAGFACE, passes=6, seed=2))
    assert model.dropout is original and a.shape == (3,) and bool(((a > 0) & (a <= 1)).all())
    with pytest.raises(ValueError, match="passes >= 2"):
        serfiq_scores(model, images, MAGFACE, passes=1)


def test_cli_writes_scores_and_blur_scores_lower(tmp_path):
    faces = [line.split()[0] for line in (DEMO_LFW / "img.list").read_text().splitlines()[:6]]
    listed = []
    for i, rel in enumerate(faces):
        img = cv2.imread(str(DEMO_LFW / rel))
        for tag, out in (("clean", img), ("blur", cv2.GaussianBlur(img, (0, 0), 4.0))):
            path = tmp_path / f"{i}_{tag}.jpg"
            cv2.imwrite(str(path), out)
            listed.append(path)
    img_list = tmp_path / "img.list"
    img_list.write_text("".join(f"{p}\n" for p in listed))
    out = tmp_path / "serfiq.txt"
    done = subprocess.run([sys.executable, "-m", "inference.serfiq", "--resume",
                           str(REPO / "raw" / "pretrained" / "mobilefacenet.pth"), "--inf_list", str(img_list),
                           "--out", str(out), "--passes", "10"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in listed]
    scores = np.array([float(r[1]) for r in rows]).reshape(-1, 2)
    assert (scores[:, 0] > scores[:, 1]).all(), f"clean vs blurred SER-FIQ scores: {scores.tolist()}"
    model, _, _ = load_backbone(REPO / "raw" / "pretrained" / "mobilefacenet.pth")
    assert model.dropout.p == 0.0  # the shipped model is unchanged by scoring
