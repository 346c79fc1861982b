"""Five-point alignment: the estimate, the warp (measured on rendered dots), the list formats, the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from faces.align import (
    ARCFACE_TEMPLATE,
    align_face,
    estimate_similarity,
    read_landmarks,
    similarity_scale,
)

REPO = Path(__file__).resolve().parents[1]


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_estimate_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    for params in [(1.7, 20.0, 30.0, -12.0), (0.25, -150.0, 5.0, 80.0), (1.0, 0.0, 0.0, 0.0)]:
        known = similarity(*params)
        np.testing.assert_allclose(estimate_similarity(src, apply(known, src)), known, atol=1e-9)
        assert similarity_scale(known) == pytest.approx(params[0])


def test_estimate_matches_linear_least_squares_on_noisy_points():
    # dst ~ [[a, -b], [b, a]] src + t is linear in (a, b, tx, ty): an independent solver of the same problem
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 250, size=(5, 2))
    dst = apply(similarity(0.6, 35.0, 10.0, 4.0), src) + rng.normal(0, 3.0, size=(5, 2))
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append(([x, -y, 1, 0], u))
        rows.append(([y, x, 0, 1], v))
    design = np.array([r[0] for r in rows], dtype=float)
    target = np.array([r[1] for r in rows], dtype=float)
    a, b, tx, ty = np.linalg.lstsq(design, target, rcond=None)[0]
    expected = np.array([[a, -b, tx], [b, a, ty]])
    np.testing.assert_allclose(estimate_similarity(src, dst), expected, atol=1e-8)


def test_estimate_never_reflects_and_rejects_degenerate_points():
    src = ARCFACE_TEMPLATE.copy()
    mirrored = src * np.array([-1.0, 1.0])
    matrix = estimate_similarity(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.zeros((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 3)), ARCFACE_TEMPLATE)


def render_dots(points: np.ndarray, sigma: float, shape: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    canvas = np.zeros(shape)
    for px, py in points:
        canvas += np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
    gray = np.clip(np.round(255 * canvas), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def dot_centroids(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroids of the bright blobs, in template order (nearest template point)."""
    gray = image[:, :, 0].astype(np.float64)
    count, labels = cv2.connectedComponents((gray > 10).astype(np.uint8))
    assert count - 1 == 5, f"expected 5 dots after alignment, found {count - 1}"
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    centroids = []
    for k in range(1, count):
        w = gray * (labels == k)
        centroids.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    centroids = np.array(centroids)
    order = [int(np.argmin(np.linalg.norm(centroids - t, axis=1))) for t in ARCFACE_TEMPLATE]
    assert sorted(order) == list(range(5))
    return centroids[order]


@pytest.mark.parametrize(
    "scale, degrees, shape",
    [(1.7, 18.0, (300, 400)), (0.8, -25.0, (160, 200)), (3.2, 8.0, (520, 640))],  # 3.2: area-reduce path
)
def test_align_puts_rendered_dots_on_template(scale, degrees, shape):
    place = similarity(scale, degrees, 0.0, 0.0)
    centre = apply(place, ARCFACE_TEMPLATE).mean(axis=0)
    place[:, 2] = np.array([shape[1] / 2, shape[0] / 2]) - centre + np.array([7.3, -4.6])
    landmarks = apply(place, ARCFACE_TEMPLATE)
    image = render_dots(landmarks, sigma=2.0 * scale, shape=shape)
    aligned = align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    error = np.linalg.norm(dot_centroids(aligned) - ARCFACE_TEMPLATE, axis=1)
    assert error.max() < 0.15, error  # an off-by-half-pixel resize would give ~0.5


def test_align_output_size_scales_template():
    landmarks = apply(similarity(1.3, 5.0, 20.0, 10.0), ARCFACE_TEMPLATE)
    image = render_dots(landmarks, sigma=2.6, shape=(220, 220))
    aligned = align_face(image, landmarks, size=224)
    assert aligned.shape == (224, 224, 3)
    with pytest.raises(ValueError):
        align_face(image.astype(np.float32), landmarks)


POINTS = np.array([[102.5, 114.82], [145.83, 114.24], [117.06, 137.45], [105.27, 161.04], [142.77, 160.4]])


def write_lists(folder: Path) -> dict[str, Path]:
    coords = " ".join(f"{v:.2f}" for v in POINTS.ravel())
    lines = {
        "path5": [f"a/img{i}.jpg {coords}" for i in range(3)],
        "ijb": [f"img{i}.jpg {coords} 0.{9 - i}" for i in range(3)],
        "scored": [f"a/img{i}.jpg 0.{9 - i} {coords}" for i in range(3)],
    }
    files = {}
    for fmt, text in lines.items():
        files[fmt] = folder / f"{fmt}.txt"
        files[fmt].write_text("\n".join(text[:2]) + "\n\n" + text[2] + "\n")
    return files


@pytest.mark.parametrize("fmt", ["path5", "ijb", "scored"])
def test_landmark_formats_parse_and_autodetect(tmp_path, fmt):
    path = write_lists(tmp_path)[fmt]
    for asked in ("auto", fmt):
        entries, used, _ = read_landmarks(path, asked)
        assert used == fmt
        assert [e.line for e in entries] == [1, 2, 4]
        for i, entry in enumerate(entries):
            np.testing.assert_allclose(entry.points, POINTS)
            assert entry.score == (None if fmt == "path5" else pytest.approx(0.9 - i / 10))
        assert entries[0].path == ("img0.jpg" if fmt == "ijb" else "a/img0.jpg")


def test_shared_landmarks_file_is_detected_as_scored(shared_data):
    entries, used, _ = read_landmarks(shared_data / "lfw112" / "landmarks.txt")
    assert used == "scored" and len(entries) == 13233
    assert entries[0].path == "images/AJ_Cook/AJ_Cook_0001.jpg" and entries[0].score == pytest.approx(0.9998)
    np.testing.assert_allclose(entries[0].points[4], [142.77, 160.40])


def test_malformed_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    coords = " ".join(f"{v:.2f}" for v in POINTS.ravel())
    bad.write_text(f"x.jpg 0.9 {coords}\ny.jpg 0.9 {coords[:-7]}\n")
    with pytest.raises(ValueError, match=rf"{bad}:2"):
        read_landmarks(bad)
    with pytest.raises(ValueError, match=rf"{bad}:2"):
        read_landmarks(bad, "scored")
    bad.write_text(f"x.jpg 0.9 {coords}\ny.jpg 0.9 {coords.replace('145.83', 'eye')}\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: expected numbers"):
        read_landmarks(bad, "scored")
    with pytest.raises(FileNotFoundError):
        read_landmarks(tmp_path / "missing.txt")


def detections_of_aligned_faces(lfw_dir: Path, photos_dir: Path, count: int) -> list[list[str]]:
    """The first ``count`` reference lines of the LFW photographs whose aligned faces ``lfw_dir`` holds, as
    ``images/<Name>/<file> score x1 y1 ... x5 y5`` (points in the 250x250 original)."""
    rows = []
    for line in (photos_dir / "landmarks.txt").read_text().splitlines():
        tokens = line.split()
        if tokens[0].startswith("lfw/") and (lfw_dir / "images" / tokens[0][len("lfw/"):]).is_file():
            rows.append(["images/" + tokens[0][len("lfw/"):], *tokens[1:]])
    assert len(rows) >= count
    return rows[:count]


def make_synthetic_originals(lfw_dir: Path, photos_dir: Path, src: Path, count: int = 3) -> tuple[list[str], dict]:
    """Warp aligned LFW faces back onto 250x250 canvases with known similarities; return list lines."""
    lines, aligned = [], {}
    for i, tokens in enumerate(detections_of_aligned_faces(lfw_dir, photos_dir, count)):
        face = cv2.imread(str(lfw_dir / tokens[0]))
        detected = np.array([float(v) for v in tokens[2:]]).reshape(5, 2)
        # where the detected landmarks sit in the aligned face (not exactly on the template)
        in_aligned = apply(estimate_similarity(detected, ARCFACE_TEMPLATE), detected)
        place = similarity(1.15 + 0.2 * i, 12.0 - 10.0 * i, 0.0, 0.0)
        place[:, 2] = 125.0 - apply(place, np.array([[56.0, 56.0]]))[0] + np.array([3.0 * i, -2.0])
        original = cv2.warpAffine(face, place, (250, 250), flags=cv2.INTER_LINEAR)
        name = tokens[0] if i < 2 else tokens[0].replace(".jpg", ".png")
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / name), original, [cv2.IMWRITE_JPEG_QUALITY, 100] if i < 2 else [])
        coords = " ".join(f"{v:.3f}" for v in apply(place, in_aligned).ravel())
        lines.append(f"{name} {tokens[1]} {coords}")
        aligned[name.replace(".png", ".jpg")] = face
    return lines, aligned


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faces.align", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_realigns_synthetic_originals(lfw_dir, photos_dir, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    lines, aligned = make_synthetic_originals(lfw_dir, photos_dir, src)
    (src / "images" / "broken.jpg").write_bytes(b"not an image")
    lines.append("images/broken.jpg 0.99 " + " ".join(["100.0"] * 5 + ["120.0"] * 5))
    lines.append("images/fallback.jpg -1 " + " ".join(["0"] * 10))  # a centre-crop fallback: no landmarks
    list_file = tmp_path / "landmarks.txt"
    list_file.write_text("\n".join(lines) + "\n")

    result = run_cli(["--landmarks", str(list_file), "--src-root", str(src), "--out", str(out)])
    assert result.returncode == 1, result.stderr
    assert "format scored" in result.stdout and "aligned 3, failed 1, skipped 1 of 5" in result.stdout
    assert f"{list_file}:4: failed images/broken.jpg" in result.stderr
    assert f"{list_file}:5: skipped images/fallback.jpg" in result.stderr

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(aligned)  # mirrored paths, .png -> .jpg, no temp files left
    faces = list(aligned.values())
    for k, (name, face) in enumerate(aligned.items()):
        realigned = cv2.imread(str(out / name))
        inner = (slice(8, -8), slice(8, -8))
        diff = np.abs(realigned[inner].astype(float) - face[inner].astype(float)).mean()
        other = np.abs(realigned[inner].astype(float) - faces[(k + 1) % 3][inner].astype(float)).mean()
        assert diff < 2.5, (name, diff)  # measured 0.6-1.1
        assert other > 5 * diff, (name, diff, other)


def test_cli_succeeds_without_failures(lfw_dir, photos_dir, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    lines, aligned = make_synthetic_originals(lfw_dir, photos_dir, src, count=2)
    list_file = tmp_path / "list.txt"
    list_file.write_text("\n".join(" ".join(t.split()[:1] + t.split()[2:]) for t in lines) + "\n")
    result = run_cli(["--landmarks", str(list_file), "--src-root", str(src), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "format path5" in result.stdout and "aligned 2, failed 0" in result.stdout
    assert all((out / name).is_file() for name in aligned)
