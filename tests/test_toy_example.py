"""Toy example: sorted grid (checked by colour positions), cosine matrix, the CLI end to end."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inference.toy_example import (
    cosine_matrix,
    list_images,
    load_images,
    main,
    render_magnitude_grid,
    render_similarity,
)
from models import build_backbone
from models.checkpoint import save_released
from utils.convention import INSIGHTFACE, MAGFACE, to_model_input

REPO = Path(__file__).resolve().parents[1]
BGR_COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "yellow": (0, 255, 255)}


def colour_centres(png: Path) -> dict[str, tuple[float, float]]:
    """Mean (x, y) of the pixels of each pure colour in a rendered PNG (read back as BGR)."""
    image = cv2.imread(str(png)).astype(int)
    centres = {}
    for name, colour in BGR_COLOURS.items():
        mask = (np.abs(image - np.array(colour)) < 30).all(axis=2)
        if mask.sum() > 100:
            ys, xs = np.nonzero(mask)
            centres[name] = (xs.mean(), ys.mean())
    return centres


def solid(colour: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.array(colour, dtype=np.uint8), (112, 112, 1))


def test_grid_sorts_ascending_and_shows_true_colours(tmp_path):
    names = ["red", "green", "blue"]
    images = np.stack([solid(BGR_COLOURS[n]) for n in names])
    png = render_magnitude_grid(images, np.array([30.0, 10.0, 20.0]), tmp_path / "grid.png")
    centres = colour_centres(png)
    assert set(centres) == set(names)  # a BGR/RGB mix-up would turn red into blue and lose one colour
    assert centres["green"][0] < centres["blue"][0] < centres["red"][0]

    names = ["red", "green", "blue", "yellow"]
    images = np.stack([solid(BGR_COLOURS[n]) for n in names])
    png = render_magnitude_grid(images, np.array([4.0, 3.0, 2.0, 1.0]), tmp_path / "rows.png", cols=2)
    c = colour_centres(png)
    # ascending, row by row: yellow blue / green red
    assert c["yellow"][0] < c["blue"][0] and c["green"][0] < c["red"][0]
    assert max(c["yellow"][1], c["blue"][1]) < min(c["green"][1], c["red"][1])
    with pytest.raises(ValueError):
        render_magnitude_grid(images, np.array([1.0]), tmp_path / "bad.png")


def test_cosine_matrix_and_heat_map(tmp_path):
    sim = cosine_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(sim, [[1, 0, r], [0, 1, r], [r, r, 1]], atol=1e-12)
    png = render_similarity(np.random.default_rng(0).normal(size=(5, 8)), list("abcde"), tmp_path / "s.png")
    assert cv2.imread(str(png)).shape[2] == 3
    with pytest.raises(ValueError):
        render_similarity(np.ones((2, 3)), ["a"], tmp_path / "t.png")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_backbone("iresnet18_w16", embedding_size=128).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_released(path, model, None, epoch=1, arch="iresnet18_w16", convention=INSIGHTFACE)
    return path, model


def test_cli_embeds_with_stored_convention_and_writes_two_pngs(lfw_dir, tiny_checkpoint, tmp_path, capsys):
    ckpt, model = tiny_checkpoint
    out = tmp_path / "out"
    assert main(["--resume", str(ckpt), "--images", str(lfw_dir / "img.list"), "--out", str(out),
                 "--max", "6"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [str(out / "magnitude_grid.png"), str(out / "similarity.png")]
    assert all(cv2.imread(line) is not None for line in printed[-2:])

    paths = list_images(lfw_dir / "img.list", 6)
    assert paths[0] == lfw_dir / (lfw_dir / "img.list").read_text().split()[0]  # list lines are relative to the list
    pixels = torch.from_numpy(load_images(paths).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        mags = model(to_model_input(pixels, INSIGHTFACE)).norm(dim=1).numpy()
        wrong = model(to_model_input(pixels, MAGFACE)).norm(dim=1).numpy()
    rows = [line.split() for line in printed[:-2]]
    assert [r[1] for r in rows] == [str(paths[i]) for i in np.argsort(mags, kind="stable")]
    np.testing.assert_allclose([float(r[0]) for r in rows], np.sort(mags), rtol=1e-4)
    assert np.abs(np.sort(wrong) - np.sort(mags)).max() > 1e-2  # the convention matters here


def test_cli_as_file_on_a_folder_and_rejects_unaligned(lfw_dir, tiny_checkpoint, tmp_path):
    ckpt, _ = tiny_checkpoint
    folder = tmp_path / "faces"
    folder.mkdir()
    for rel in (lfw_dir / "img.list").read_text().split()[:3]:  # three aligned faces
        shutil.copy(lfw_dir / rel, folder / Path(rel).name)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "inference" / "toy_example.py"), "--resume", str(ckpt),
         "--images", str(folder), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["magnitude_grid.png", "similarity.png"]

    cv2.imwrite(str(folder / "big.jpg"), np.zeros((250, 250, 3), np.uint8))
    with pytest.raises(ValueError, match="big.jpg"):
        load_images(list_images(folder, 10))
