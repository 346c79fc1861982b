"""The shipped quality model (raw/quality): its files, its default use by inference.assess, and the property users
come for on real photographs: a face damaged in ways the model never saw in training scores below its original."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.quality_scale import file_sha256, load_calibration, side_file
from models.checkpoint import load_backbone
from models.mobilefacenet import MobileFaceNet
from models.quality_model import QUALITY_MODEL
from utils.convention import IMAGENET

REPO = Path(__file__).resolve().parents[1]
# every 12th of the shared set's 200 LFW photographs (sorted), all of them shipped in raw/demo_data/photos
QUALITY_PHOTOS = ("AJ_Cook/AJ_Cook_0001", "Aparna_Pillai/Aparna_Pillai_0001", "Bruna_Colosio/Bruna_Colosio_0001",
                  "Colin_Powell/Colin_Powell_0183", "Doug_Duncan/Doug_Duncan_0002", "George_W_Bush/George_W_Bush_0013",
                  "Gonzalo_Sanchez_de_Lozada/Gonzalo_Sanchez_de_Lozada_0012", "Jack_Goodman/Jack_Goodman_0001",
                  "Jiang_Zemin/Jiang_Zemin_0005", "Juan_Pablo_Montoya/Juan_Pablo_Montoya_0008",
                  "Lenny_Kravitz/Lenny_Kravitz_0001", "Mary_Sue_Coleman/Mary_Sue_Coleman_0001")


def test_shipped_files_agree():
    model, conv, info = load_backbone(QUALITY_MODEL)
    assert isinstance(model, MobileFaceNet) and conv == IMAGENET and info["embedding_size"] == 128
    readme = (QUALITY_MODEL.parent / "README.md").read_text()
    assert hashlib.sha256(QUALITY_MODEL.read_bytes()).hexdigest() in readme
    assert QUALITY_MODEL.stat().st_size <= 5 * 1024 * 1024
    calibration = load_calibration(side_file(QUALITY_MODEL))
    assert calibration.checkpoint_sha256 == file_sha256(QUALITY_MODEL)
    assert calibration.rule.startswith("anchored")
    config = info["config"]
    assert config["pretrained"] == "raw/pretrained/mobilefacenet.pth" and config["head_init"] == "class-means"
    assert not any("/tmp" in str(v) or "/work" in str(v) for v in config.values()), "a local folder in the config"


# Damage applied to the whole photograph before detection, at a strength a person calls clearly worse. The
# fine-tune's augmentation (faces.degrade.ALL_KINDS, on aligned faces) had Gaussian blur, down-scaling, JPEG,
# dark, bright, noise, occlusion, motion blur, low contrast and colour cast; TRAINED_FAMILY repeats three of
# those at other strengths on whole photographs, UNSEEN are kinds no training step ever showed the model.
def _motion_blur(img: np.ndarray) -> np.ndarray:
    kernel = np.zeros((21, 21), np.float32)
    kernel[10, :] = 1.0 / 21
    return cv2.filter2D(img, -1, kernel)


def _low_contrast(img: np.ndarray) -> np.ndarray:
    return np.clip((img.astype(np.float32) - 128.0) * 0.35 + 128.0, 0, 255).astype(np.uint8)


def _pixelate(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // 8, h // 8), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _salt_pepper(img: np.ndarray) -> np.ndarray:
    u = np.random.default_rng(0).random(img.shape[:2])
    out = img.copy()
    out[u < 0.06], out[u > 0.94] = 0, 255
    return out


def _colour_cast(img: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    out[..., 0] *= 0.4
    out[..., 2] += 60.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _defocus(img: np.ndarray) -> np.ndarray:
    kernel = np.zeros((13, 13), np.float32)
    cv2.circle(kernel, (6, 6), 6, 1.0, -1)
    return cv2.filter2D(img, -1, kernel / kernel.sum())


def _posterize(img: np.ndarray) -> np.ndarray:
    return (img // 64 * 64 + 32).astype(np.uint8)


TRAINED_FAMILY = {"motion_blur": _motion_blur, "low_contrast": _low_contrast, "colour_cast": _colour_cast}
UNSEEN = {"pixelate": _pixelate, "salt_pepper": _salt_pepper, "defocus": _defocus, "posterize": _posterize}
DAMAGE = TRAINED_FAMILY | UNSEEN


@pytest.fixture(scope="module")
def assessed(photos_dir, tmp_path_factory) -> dict[str, dict[str, float]]:
    """The 12 LFW photographs of QUALITY_PHOTOS and their damaged copies through
    ``python -m inference.assess DIR --out Q`` with no --resume: {photo: {kind: quality}}."""
    root = tmp_path_factory.mktemp("photos")
    photos = [photos_dir / "lfw" / f"{name}.jpg" for name in QUALITY_PHOTOS]
    for i, path in enumerate(photos):
        img = cv2.imread(str(path))
        cv2.imwrite(str(root / f"{i:02d}_clean.png"), img)
        for kind, damage in DAMAGE.items():
            cv2.imwrite(str(root / f"{i:02d}_{kind}.png"), damage(img))
    out = tmp_path_factory.mktemp("q")
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "inference.assess", str(root), "--out", str(out), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "quality.json").read_text())["summary"]
    assert summary["checkpoint"] == str(QUALITY_MODEL) and summary["quality_scale"] == "calibrated"
    # the start-up it reports is the process's own (imports included), within what the process took in all
    assert 0 < summary["startup_s"] and summary["startup_s"] + summary["seconds"] <= wall + 0.05, (summary, wall)
    assert f"start-up {summary['startup_s']:.1f}s before the first photograph" in done.stdout
    scores: dict[str, dict[str, float]] = {}
    with open(out / "quality.csv", newline="") as f:
        for row in csv.DictReader(f):
            assert row["status"] == "ok", row
            photo, kind = Path(row["path"]).stem.split("_", 1)
            scores.setdefault(photo, {})[kind] = float(row["quality"])
    return scores


def test_clean_photos_score_as_good_faces(assessed):
    clean = np.array([s["clean"] for s in assessed.values()])
    assert np.median(clean) >= 60, f"clean LFW photographs score {sorted(clean)}"


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_photo_scores_below_its_original(assessed, kind):
    """At most 2 of the 12 photographs may score at or above their original (2026-12-07, AMD EPYC: motion blur
    11/12 below, colour cast 10/12, every other kind 12/12; before the wide augmentation motion blur was 8/12)."""
    lower = [s[kind] < s["clean"] for s in assessed.values()]
    assert sum(lower) >= len(lower) - 2, (
        f"{kind}: only {sum(lower)} of {len(lower)} damaged photos score below their original: "
        f"{[(s['clean'], s[kind]) for s in assessed.values()]}")
