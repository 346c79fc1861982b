"""faces/degrade.py: known damage on real aligned faces."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faces.degrade import ALL_KINDS, EXTRA_KINDS, KINDS, damage_parameter, degrade, random_degrade

GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@pytest.fixture(scope="module")
def faces(lfw_dir):
    paths = (lfw_dir / "img.list").read_text().split()[:40:8]
    imgs = [cv2.imread(str(lfw_dir / p)) for p in paths]
    assert all(img is not None and img.shape == (112, 112, 3) for img in imgs)
    return imgs


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_severity_zero_is_bit_identical_and_a_copy(faces, kind):
    img = faces[0]
    rng = np.random.default_rng(0)
    out = degrade(img, kind, 0.0, rng)
    assert out is not img and np.array_equal(out, img)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state


@pytest.mark.parametrize("kind", KINDS)
def test_damage_grows_with_severity(faces, kind):
    for i, img in enumerate(faces):
        mads = [_mad(degrade(img, kind, s, np.random.default_rng(i)), img) for s in GRID]
        assert mads[0] == 0.0
        assert np.all(np.diff(mads) > 0), (kind, i, mads)


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_input_untouched_and_deterministic(faces, kind):
    img = faces[1]
    before = img.copy()
    a = degrade(img, kind, 0.7, np.random.default_rng(5))
    b = degrade(img, kind, 0.7, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(img, before)
    assert not np.array_equal(a, img)


def test_random_kinds_depend_on_the_rng(faces):
    img = faces[2]
    for kind in ("noise", "occlusion"):
        a = degrade(img, kind, 0.5, np.random.default_rng(1))
        b = degrade(img, kind, 0.5, np.random.default_rng(2))
        assert not np.array_equal(a, b), kind


def test_parameters_at_the_ends():
    assert damage_parameter("blur", 1.0) == 4.0
    assert damage_parameter("downscale", 1.0) == pytest.approx(1 / 8)
    assert damage_parameter("jpeg", 0.0) == 95 and damage_parameter("jpeg", 1.0) == 5
    assert damage_parameter("occlusion", 1.0) == pytest.approx(0.4)


def test_occlusion_area_matches_the_parameter(faces):
    img = np.zeros((112, 112, 3), np.uint8)
    out = degrade(img, "occlusion", 1.0, np.random.default_rng(3))
    covered = np.any(out != 0, axis=2).mean()  # a random colour of exactly (0,0,0) is 1 in 2**24
    assert covered == pytest.approx(0.4, abs=0.03)


def test_random_degrade_is_deterministic_and_bounded(faces):
    img = faces[3]
    seen = set()
    for seed in range(30):
        out, kind, sev = random_degrade(img, np.random.default_rng(seed), kinds=("blur", "jpeg"),
                                        max_severity=0.5)
        again, kind2, sev2 = random_degrade(img, np.random.default_rng(seed), kinds=("blur", "jpeg"),
                                            max_severity=0.5)
        assert (kind, sev) == (kind2, sev2) and np.array_equal(out, again)
        assert kind in ("blur", "jpeg") and 0.0 <= sev <= 0.5
        seen.add(kind)
    assert seen == {"blur", "jpeg"}
    out, _, sev = random_degrade(img, np.random.default_rng(0), max_severity=0.0)
    assert sev == 0.0 and np.array_equal(out, img)


@pytest.mark.parametrize("severity", [-0.1, 1.5, float("nan"), "high"])
def test_bad_severity_is_named(faces, severity):
    with pytest.raises(ValueError, match="severity"):
        degrade(faces[0], "blur", severity, np.random.default_rng(0))


def test_bad_kind_and_image_are_named(faces):
    with pytest.raises(ValueError, match="'smear'"):
        degrade(faces[0], "smear", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'smear'"):
        random_degrade(faces[0], np.random.default_rng(0), kinds=("blur", "smear"))
    with pytest.raises(ValueError, match="max_severity"):
        random_degrade(faces[0], np.random.default_rng(0), max_severity=2.0)
    with pytest.raises(ValueError, match="empty"):
        random_degrade(faces[0], np.random.default_rng(0), kinds=())
    with pytest.raises(ValueError, match="uint8"):
        degrade(faces[0].astype(np.float32), "blur", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        degrade(faces[0][:, :, 0], "blur", 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("kind", EXTRA_KINDS)
def test_extra_kinds_grow_with_severity_and_repeat(kind):
    """The augmentation-only kinds: 0 is the identity, the change grows with severity, the rng state decides."""
    img = np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)  # some structure for the blur to remove
    assert np.array_equal(degrade(img, kind, 0.0, np.random.default_rng(0)), img)
    change = [np.abs(degrade(img, kind, s, np.random.default_rng(0)).astype(int) - img).mean()
              for s in (0.25, 0.5, 1.0)]
    assert 0 < change[0] < change[1] < change[2], (kind, change)
    a = degrade(img, kind, 0.7, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, degrade(img, kind, 0.7, np.random.default_rng(5)))
    assert kind not in KINDS and kind in ALL_KINDS


def test_wide_kinds_parse_for_training_only():
    from dataloader.augment import parse_kinds

    assert parse_kinds("wide") == ALL_KINDS and parse_kinds("all") == KINDS
    assert parse_kinds("motion_blur,jpeg") == ("motion_blur", "jpeg")
    with pytest.raises(ValueError, match="'wide'"):
        parse_kinds("smear")
