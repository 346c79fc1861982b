"""Lists are read bytes-safe: a Linux path holding a byte that is not UTF-8 (here 0xff) opens its file from a
training list, an image list and gen_feat; errors print such a path as ``\\xff`` and name the file and line;
a binary file given as a list is refused naming its line."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloader.image_list import ImageListDataset, PathTable, read_train_list
from eval.metrics import read_pair_list
from faces.face_list import read_image_list
from inference import gen_feat
from models.backbones import build_backbone
from models.checkpoint import save_released
from utils.convention import read_aligned_face
from utils.feature_io import load_features, write_features
from utils.text_lines import field_lines, printable

RAW = b"face\xff.jpg"
NAME = os.fsdecode(RAW)  # 'face\udcff.jpg': the byte kept as a surrogate escape


@pytest.fixture
def odd_face(tmp_path) -> Path:
    """A real 112x112 JPEG whose file name holds the byte 0xff."""
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    path = tmp_path / NAME
    path.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    assert RAW in os.listdir(os.fsencode(tmp_path))
    return path


def test_printable_shows_the_bytes():
    assert printable(NAME) == "face\\xff.jpg"
    assert printable(b"a\xfeb") == "a\\xfeb"
    assert printable(Path("plain/é.jpg")) == "plain/é.jpg"
    assert printable("lone \ud800") == "lone \\ud800"  # a surrogate no byte stands for: still printable
    printable(NAME).encode("utf-8")  # no surrogate left: any stream or log takes it


def test_training_list_opens_and_loads_the_file(tmp_path, odd_face):
    listing = tmp_path / "train.list"
    listing.write_bytes(RAW + b" 0 3 0\n")
    train = read_train_list(listing)
    assert train.paths[0] == str(odd_face)
    assert os.fsencode(train.paths[0]).endswith(b"/" + RAW)
    image, label = ImageListDataset(train)[0]
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8 and label == 3
    assert PathTable([NAME, "b.jpg"])[0] == NAME
    gone = tmp_path / "gone.list"
    gone.write_bytes(b"gone\xfe.jpg 0 0 0\n")
    with pytest.raises(FileNotFoundError, match=rf"{gone}:1: image .*gone\\xfe\.jpg does not exist") as err:
        read_train_list(gone)
    str(err.value).encode("utf-8")


def test_image_list_resolves_and_gen_feat_embeds(tmp_path, odd_face, capsys):
    listing = tmp_path / "img.list"
    listing.write_bytes(RAW + b" 0\n")
    listed, resolved = read_image_list(listing)
    assert listed == [NAME] and resolved == [str(odd_face)]
    assert read_aligned_face(resolved[0]).shape == (112, 112, 3)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pth"
    save_released(ckpt, build_backbone("iresnet18_w16").eval(), None, 0, "iresnet18_w16")
    for name in ("feats.txt", "feats.npz"):
        out = tmp_path / name
        gen_feat.main(["--resume", str(ckpt), "--inf_list", str(listing), "--feat_list", str(out), "--cpu-mode"])
        paths, feats = load_features(out)
        assert paths == [NAME] and feats.shape == (1, 512) and np.isfinite(feats).all()
    assert (tmp_path / "feats.txt").read_bytes().startswith(RAW + b" ")
    capsys.readouterr().out.encode("utf-8")  # what gen_feat printed holds no surrogate


def test_missing_image_with_odd_bytes_is_named_printably(tmp_path):
    listing = tmp_path / "img.list"
    listing.write_bytes(b"ok.jpg\n" + b"gone\xfe.jpg\n")
    (tmp_path / "ok.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=rf"^{listing}:2: image .*gone\\xfe\.jpg not found"):
        read_image_list(listing)


def test_text_features_keep_the_path_bytes(tmp_path):
    out = tmp_path / "f.txt"
    write_features(out, [NAME, "b.jpg"], np.ones((2, 3), np.float32))
    assert out.read_bytes().splitlines()[0] == RAW + b" 1 1 1"
    assert load_features(out)[0] == [NAME, "b.jpg"]


def test_pair_list_junk_byte_names_file_and_line(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(b"0 1 1\n\n2 \xff 0\n")
    with pytest.raises(ValueError, match=rf"^{pairs}:3: expected 3 integers, got '2 \\xff 0'$"):
        read_pair_list(pairs, 4)


def test_field_lines_keep_odd_paths(tmp_path):
    scores = tmp_path / "scores.txt"
    scores.write_bytes(RAW + b" 0.5\n")
    assert list(field_lines(scores, ("path", "score"))) == [(1, [NAME, "0.5"])]


@pytest.mark.parametrize("reader", [read_image_list, read_train_list, lambda p: read_pair_list(p, 4)])
def test_binary_file_as_a_list_names_file_and_line(tmp_path, reader):
    """A gzipped list has a NUL byte on line 1; a PNG's first line fails the format first: both name a line."""
    packed = tmp_path / "train.list.gz"
    packed.write_bytes(gzip.compress(b"a.jpg 0 0 0\n" * 50))
    with pytest.raises(ValueError, match=rf"^{packed}:1: a NUL byte: not a text list \(is this the right file\?\)$"):
        reader(packed)
    photo = tmp_path / "photo.list"
    photo.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    with pytest.raises(ValueError, match=rf"^{photo}:\d+: ") as err:
        reader(photo)
    str(err.value).encode("utf-8")
