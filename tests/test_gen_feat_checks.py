"""gen_feat's up-front checks (output folder writable and roomy, no empty image, stale temporary files swept)
and bad images: a face that fails to decode names its list line, ``--skip-bad-images`` leaves such faces out
and lists them in ``FEAT_LIST.skipped.txt``."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inference import gen_feat
from inference.onnx_model import embed_files
from models.backbones import build_backbone
from models.checkpoint import save_released
from utils.atomic import OutputWriteError
from utils.feature_io import (
    BINARY_BYTES_PER_VALUE,
    TEXT_BYTES_PER_VALUE,
    check_room,
    estimate_feature_bytes,
    write_features,
)

FAST = ["--cpu-mode", "--batch-size", "2", "--print-freq", "1000"]


def write_face(path: Path, seed: int) -> Path:
    """A random 112x112 'face' as PNG, written as bytes (the name may hold any byte)."""
    image = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r18w16.pth"
    save_released(path, build_backbone("iresnet18_w16").eval(), None, 0, "iresnet18_w16")
    return path


@pytest.fixture
def faces(tmp_path) -> Path:
    """good0, empty, garbage, good1 (lines 1, 2, 4, 5; line 3 blank) in a list beside them."""
    root = tmp_path / "faces"
    root.mkdir()
    write_face(root / "good0.png", 0)
    (root / "empty.jpg").write_bytes(b"")
    (root / "garbage.jpg").write_bytes(b"\xff\xd8 this is not an image " * 8)
    write_face(root / "good1.png", 1)
    (root / "img.list").write_text("good0.png 0\nempty.jpg 0\n\ngarbage.jpg 0\ngood1.png 0\n")
    return root / "img.list"


def _list(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def test_read_only_output_folder_fails_before_anything_is_read(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:  # neither the list nor the checkpoint exists: the folder is checked first
        with pytest.raises(OutputWriteError, match=rf"^cannot write in the output folder {locked} \(Permission"):
            gen_feat.main(["--resume", str(tmp_path / "no.pth"), "--inf_list", str(tmp_path / "no.list"),
                           "--feat_list", str(locked / "feats.npz"), *FAST])
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_read_only_mount_fails_before_anything_is_read(tmp_path, capsys):
    """A real read-only file system (EROFS), where the test may mount one (root or CAP_SYS_ADMIN)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        argv = ["--resume", str(tmp_path / "no.pth"), "--inf_list", str(tmp_path / "no.list"), "--feat_list",
                str(ro / "feats.npz"), *FAST]
        assert gen_feat.cli(argv) == 5
        err = capsys.readouterr().err
        assert err.startswith(f"gen_feat.py: error: cannot write in the output folder {ro} (") and err.count("\n") == 1
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_refused_output_folder_is_one_line_exit_5(tmp_path, monkeypatch, capsys):
    """The same refusal where the test runs as root: the folder's file creation fails from outside."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    argv = ["--resume", str(tmp_path / "no.pth"), "--inf_list", str(tmp_path / "no.list"), "--feat_list",
            str(tmp_path / "feats.npz"), *FAST]
    assert gen_feat.cli(argv) == 5
    assert capsys.readouterr().err == (f"gen_feat.py: error: cannot write in the output folder {tmp_path} "
                                       "(Permission denied); make it writable or write elsewhere\n")


def test_output_folder_is_created_or_its_failure_named(tmp_path, faces, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["--resume", str(tmp_path / "no.pth"), "--inf_list", str(faces), "--feat_list",
            str(blocker / "sub" / "feats.npz"), *FAST]
    assert gen_feat.cli(argv) == 5
    err = capsys.readouterr().err
    assert err.startswith(f"gen_feat.py: error: cannot create the output folder {blocker / 'sub'} (")
    assert err.count("\n") == 1
    made = tmp_path / "new" / "deeper"
    with pytest.raises(FileNotFoundError, match="checkpoint"):  # the folder is made; the checkpoint is missing
        gen_feat.main(["--resume", str(tmp_path / "no.pth"), "--inf_list", str(faces), "--feat_list",
                       str(made / "feats.npz"), "--skip-bad-images", *FAST])
    assert made.is_dir() and list(made.iterdir()) == []


def test_empty_image_fails_up_front_naming_its_line(tmp_path, faces):
    """The 0-byte file is found before the (missing) checkpoint is opened."""
    with pytest.raises(ValueError, match=rf"^{faces}:2: image {faces.parent / 'empty.jpg'} is empty \(0 bytes\) "
                                         r"\(1 of 4 listed images are empty; --skip-bad-images leaves them out\)$"):
        gen_feat.main(["--resume", str(tmp_path / "no.pth"), "--inf_list", str(faces), "--feat_list",
                       str(tmp_path / "feats.npz"), *FAST])


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image_names_its_list_line(ckpt, faces, tmp_path, capsys, workers):
    bad = _list(tmp_path / "bad.list", [str(faces.parent / n) for n in ("good0.png", "garbage.jpg", "good1.png")])
    argv = ["--resume", str(ckpt), "--inf_list", str(bad), "--feat_list", str(tmp_path / "f.txt"), *FAST,
            "--workers", str(workers)]
    assert gen_feat.cli(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"gen_feat.py: error: {bad}:2: {faces.parent / 'garbage.jpg'}: not a readable image "
                   "(truncated, or not an image file)\n")
    assert not (tmp_path / "f.txt").exists()


def test_onnx_path_names_the_line_or_skips(tmp_path, faces):
    """embed_files (gen_feat's onnxruntime path) with a stand-in model: the same rule."""
    class Model:
        def embed(self, images: np.ndarray, batch_size: int) -> np.ndarray:
            return images.reshape(len(images), -1)[:, :4].astype(np.float32) + 1

    paths = [str(faces.parent / n) for n in ("good0.png", "garbage.jpg")]
    with pytest.raises(ValueError, match=r"^L:7: .*garbage\.jpg: not a readable image"):
        embed_files(Model(), paths, 2, where=["L:6", "L:7"])
    feats = embed_files(Model(), paths, 1, where=["L:6", "L:7"], skip_bad=True)
    assert np.isfinite(feats[0]).all() and np.isnan(feats[1]).all()


@pytest.mark.parametrize("suffix,workers", [(".npz", 0), (".txt", 1)])
def test_skip_bad_images_writes_the_good_rows_and_the_skipped_lines(ckpt, faces, tmp_path, capsys, suffix, workers):
    out = tmp_path / "out" / f"feats{suffix}"
    res = gen_feat.main(["--resume", str(ckpt), "--inf_list", str(faces), "--feat_list", str(out),
                         "--skip-bad-images", *FAST, "--workers", str(workers)])
    assert res["num_images"] == 2 and res["num_skipped"] == 2
    root = faces.parent
    side = Path(f"{out}.skipped.txt")
    assert side.read_text() == (f"{faces}:2\t{root / 'empty.jpg'}\tempty file (0 bytes)\n"
                                f"{faces}:4\t{root / 'garbage.jpg'}\tnot a readable image (truncated, or not an "
                                "image file)\n")
    assert f"skipped 2 of 4 images; see {side}" in capsys.readouterr().out
    good = tmp_path / "good.npz"
    gen_feat.main(["--resume", str(ckpt), "--inf_list", str(_list(tmp_path / "good.list", [
        str(root / "good0.png"), str(root / "good1.png")])), "--feat_list", str(good), *FAST])
    with np.load(good) as z:
        expected = z["features"]
    if suffix == ".npz":
        with np.load(out) as z:
            assert [str(p) for p in z["paths"]] == ["good0.png", "good1.png"]
            # other batches than the run on the good list: equal to float rounding
            np.testing.assert_allclose(z["features"], expected, rtol=1e-4, atol=1e-4)
    else:
        rows = [line.split() for line in out.read_text().splitlines()]
        assert [r[0] for r in rows] == ["good0.png", "good1.png"]
        np.testing.assert_allclose(np.array([r[1:] for r in rows], float), expected, rtol=1e-4, atol=1e-4)
    # a later run with nothing to skip removes the old side file: it never describes another run
    _list(faces, ["good0.png", "good1.png"])
    gen_feat.main(["--resume", str(ckpt), "--inf_list", str(faces), "--feat_list", str(out), "--skip-bad-images",
                   *FAST])
    assert not side.exists()


def test_all_images_bad_is_an_error_after_listing_them(tmp_path, faces):
    only_bad = _list(tmp_path / "bad.list", [str(faces.parent / "empty.jpg")])
    out = tmp_path / "feats.npz"
    with pytest.raises(ValueError, match=rf"^no usable image in {only_bad}: all 1 were skipped"):
        gen_feat.main(["--resume", str(tmp_path / "no.pth"), "--inf_list", str(only_bad), "--feat_list", str(out),
                       "--skip-bad-images", *FAST])
    assert Path(f"{out}.skipped.txt").read_text().startswith(f"{only_bad}:1\t")
    assert not out.exists()


def test_stale_temporary_files_are_swept(tmp_path, faces, capsys):
    out = tmp_path / "feats.npz"
    stale = [tmp_path / ".feats.npz.k3j2h1ab.tmp", tmp_path / ".feats.npz.skipped.txt.x9y8z7w6.tmp"]
    kept = [tmp_path / ".other.npz.abcdefgh.tmp", tmp_path / "feats.npz.tmp", tmp_path / ".feats.npz.abc.old"]
    for p in stale + kept:
        p.write_bytes(b"half a file")
    with pytest.raises(FileNotFoundError, match="no.pth"):  # swept first, whatever fails later
        gen_feat.main(["--resume", str(tmp_path / "no.pth"), "--inf_list", str(faces), "--feat_list", str(out),
                       "--skip-bad-images", *FAST])
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("removed")]
    assert line == [f"removed 2 temporary file(s) that an interrupted write of {out} left: "
                    f"{stale[0].name}, {stale[1].name}"]


def test_output_size_estimate_by_format(tmp_path):
    paths = ["a/b.jpg", "c.jpg"]
    assert estimate_feature_bytes("f.npy", paths, 512) == 128 + 2 * 512 * BINARY_BYTES_PER_VALUE
    assert estimate_feature_bytes("f.npz", paths, 512) == 1024 + 2 * (512 * 4 + 4 + 4 * len("a/b.jpg"))
    assert estimate_feature_bytes("f.txt", paths, 512) == len("a/b.jpg c.jpg ") + 2 * 512 * TEXT_BYTES_PER_VALUE
    # not below what the writers write for typical raw features
    feats = np.random.default_rng(0).normal(0, 1.1, (2, 512)).astype(np.float32)
    for name in ("f.txt", "f.npz", "f.npy"):
        write_features(tmp_path / name, paths, feats)
        assert estimate_feature_bytes(name, paths, 512) >= (tmp_path / name).stat().st_size, name


def test_not_enough_space_is_found_before_the_model_loads(tmp_path, faces, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 3000, 3000))
    _list(faces, ["good0.png", "good1.png"])
    need = estimate_feature_bytes("feats.npy", ["good0.png", "good1.png"], 512)
    assert need > 3000
    with pytest.raises(OutputWriteError, match=rf"^not enough space in {tmp_path} for feats\.npy: 2 features of 512 "
                                               r"values need about 0\.0 MiB, 0\.0 MiB are free; free space or"):
        check_room(tmp_path / "feats.npy", ["good0.png", "good1.png"], 512)
    argv = ["--resume", str(tmp_path / "no.pth"), "--inf_list", str(faces), "--feat_list",
            str(tmp_path / "feats.npy"), *FAST]
    assert gen_feat.cli(argv) == 5  # not the missing checkpoint: space comes first
    assert capsys.readouterr().err.startswith(f"gen_feat.py: error: not enough space in {tmp_path} for feats.npy")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 0, need))
    assert check_room(tmp_path / "feats.npy", ["good0.png", "good1.png"], 512) == need
