"""Every way training data can be wrong fails early with a message naming the file and line,
or, with skip_bad, is dropped, logged and counted against a budget."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from dataloader import (
    BadSample,
    BadSampleCounter,
    BadSampleError,
    ImageListDataset,
    build_train_loader,
    collate_faces,
    decode_face,
    read_train_list,
)
from utils.logger import setup_logger


def _faces(celeba_dir: Path, n: int) -> list[Path]:
    lines = (celeba_dir / "train.list").read_text().splitlines()
    return [celeba_dir / ln.split()[0] for ln in lines[: n * 40 : 40]]


def _write_list(path: Path, entries: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{p} 0 {label} 0\n" for p, label in entries))
    return path


@pytest.fixture
def bad_files(tmp_path: Path, celeba_dir: Path) -> dict[str, Path]:
    """One file per kind of bad sample, made from a real face."""
    real = _faces(celeba_dir, 1)[0]
    data = real.read_bytes()
    img = cv2.imread(str(real))
    files = {"truncated": tmp_path / "truncated.jpg", "half": tmp_path / "half.jpg",
             "text": tmp_path / "text.jpg", "gray": tmp_path / "gray.jpg", "small": tmp_path / "small.jpg"}
    files["truncated"].write_bytes(data[:100])
    files["half"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is not an image\n")
    cv2.imwrite(str(files["gray"]), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(files["small"]), cv2.resize(img, (100, 100)))
    return files


# ---- list parsing -------------------------------------------------------------------------------

def test_missing_files_named_with_line_and_count(tmp_path, celeba_dir):
    real = _faces(celeba_dir, 1)[0]
    lst = _write_list(tmp_path / "l.txt", [(str(real), 0), ("nope/a.jpg", 0), (str(real), 1), ("nope/b.jpg", 1)])
    with pytest.raises(FileNotFoundError) as e:
        read_train_list(lst)
    msg = str(e.value)
    assert f"{lst}:2" in msg and str(tmp_path / "nope" / "a.jpg") in msg and "2 of 4" in msg
    assert len(read_train_list(lst, check_files=False)) == 4


@pytest.mark.parametrize("text, what", [
    ("a.jpg 0\n", "expected 'path 0 identity 0'"),
    ("a.jpg 0 seven 0\n", "'seven' is not an integer"),
    ("a.jpg 0 1.5 0\n", "'1.5' is not an integer"),
    ("a.jpg 0 -3 0\n", "negative identity -3"),
])
def test_malformed_line_named(tmp_path, text, what):
    lst = tmp_path / "l.txt"
    lst.write_text("ok.jpg 0 0 0\n\n" + text)
    with pytest.raises(ValueError) as e:
        read_train_list(lst, check_files=False)
    assert f"{lst}:3" in str(e.value) and what in str(e.value) and text.strip() in str(e.value)


def test_label_beyond_fc_size(tmp_path):
    lst = _write_list(tmp_path / "l.txt", [("a.jpg", 0), ("b.jpg", 4), ("c.jpg", 9)])
    with pytest.raises(ValueError) as e:
        read_train_list(lst, num_classes=5, check_files=False)
    assert f"{lst}:3" in str(e.value) and "--last-fc-size" in str(e.value) and "at least 10" in str(e.value)
    assert read_train_list(lst, num_classes=10, check_files=False).num_classes == 10


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_list(tmp_path, content):
    lst = tmp_path / "l.txt"
    lst.write_text(content)
    with pytest.raises(ValueError, match="holds no images") as e:
        read_train_list(lst)
    assert str(lst) in str(e.value)


def test_list_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_train_list(tmp_path / "absent.txt")


# ---- bad images ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, what", [
    ("truncated", "truncated JPEG"),
    ("half", "truncated JPEG"),
    ("text", "not a decodable image"),
    ("gray", "grayscale"),
    ("small", "size 100x100, expected 112x112"),
])
def test_bad_image_named(tmp_path, bad_files, celeba_dir, kind, what):
    real = _faces(celeba_dir, 1)[0]
    lst = _write_list(tmp_path / "l.txt", [(str(real), 0), (bad_files[kind].name, 1)])
    ds = ImageListDataset(read_train_list(lst))
    assert ds[0][0].shape == (3, 112, 112)
    with pytest.raises(ValueError) as e:
        ds[1]
    msg = str(e.value)
    assert str(bad_files[kind]) in msg and f"line 2 of {lst}" in msg and what in msg


def test_jpeg_without_end_marker_is_truncated(bad_files, celeba_dir):
    """OpenCV 4.x decodes a cut JPEG into a grey-filled face (5.x refuses it): check the end marker."""
    data = _faces(celeba_dir, 1)[0].read_bytes()
    assert decode_face(data + b"\x00\x00").shape == (112, 112, 3)  # zero padding after EOI is fine
    with pytest.raises(BadSampleError, match="truncated JPEG"):
        decode_face(data[:-2])


def test_file_deleted_after_listing(tmp_path, celeba_dir):
    real = tmp_path / "a.jpg"
    real.write_bytes(_faces(celeba_dir, 1)[0].read_bytes())
    ds = ImageListDataset(read_train_list(_write_list(tmp_path / "l.txt", [("a.jpg", 0)])))
    real.unlink()
    with pytest.raises(FileNotFoundError, match="line 1 of"):
        ds[0]
    assert isinstance(ImageListDataset(ds.train_list, skip_bad=True)[0], BadSample)


# ---- skip_bad and the budget ----------------------------------------------------------------------

def _mixed_list(tmp_path, celeba_dir, bad_files) -> Path:
    good = [(str(p), i % 3) for i, p in enumerate(_faces(celeba_dir, 8))]
    bad = [(str(bad_files["truncated"]), 0), (str(bad_files["gray"]), 1)]
    return _write_list(tmp_path / "mixed.txt", good[:3] + bad[:1] + good[3:] + bad[1:])


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_counts_and_logs(tmp_path, celeba_dir, bad_files, workers):
    """Each skipped sample reaches the run's train.log with its file, list line and reason; the epoch sums them."""
    ds = ImageListDataset(read_train_list(_mixed_list(tmp_path, celeba_dir, bad_files)), skip_bad=True)
    loader = build_train_loader(ds, batch_size=4, workers=workers, sampler=None, pin_memory=False,
                                drop_last=False, persistent_workers=False)
    counter = BadSampleCounter(max_fraction=0.25, min_samples=5)
    kept = 0
    setup_logger(tmp_path / "train.log")
    try:
        for images, labels, n_bad in loader:
            assert images.dtype == torch.uint8 and labels.dtype == torch.int64
            assert images.shape[0] == labels.shape[0] <= 4
            counter.update(len(labels), n_bad)
            kept += len(labels)
        assert (kept, counter.seen, counter.bad) == (8, 10, 2)
        assert counter.end_epoch(0) == "epoch 0: skipped 2 bad samples (2 of 10 so far, --skip-bad-images)"
        assert counter.end_epoch(1) is None  # the next epoch starts its own count
        counter.update(4, 2)  # a plain int: counted, logged without names
    finally:
        setup_logger(None)
    text = (tmp_path / "train.log").read_text()
    assert str(bad_files["truncated"]) in text and "line 4 of" in text
    assert str(bad_files["gray"]) in text and "grayscale" in text
    assert "skipped 2 bad samples (their names were lost on the way)" in text and counter.bad == 4


def test_bad_fraction_limit(tmp_path, celeba_dir, bad_files):
    ds = ImageListDataset(read_train_list(_mixed_list(tmp_path, celeba_dir, bad_files)), skip_bad=True)
    batch = collate_faces([ds[i] for i in range(len(ds))])
    assert batch[0].shape == (8, 3, 112, 112) and batch[2] == 2
    counter = BadSampleCounter(max_fraction=0.1, min_samples=5)
    with pytest.raises(RuntimeError, match=r"2 of 10 training samples \(20\.00%\).*10\.00%"):
        counter.update(8, batch[2])


def test_fraction_judged_only_after_min_samples():
    counter = BadSampleCounter(max_fraction=0.01, min_samples=100)
    counter.update(0, 2)  # 100% bad, but only two samples seen
    counter.update(97, 0)
    with pytest.raises(RuntimeError, match="2 of 100"):
        counter.update(1, 0)


def test_all_bad_batch_is_empty():
    images, labels, n_bad = collate_faces([BadSample("x", "why"), BadSample("y", "why")])
    assert images.shape == (0, 3, 112, 112) and labels.shape == (0,) and n_bad == 2
