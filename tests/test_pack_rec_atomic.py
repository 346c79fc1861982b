"""pack_rec is all or nothing: a killed pack leaves no final-named file and the reader names it as interrupted."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloader import pack_rec
from dataloader.image_list import read_train_list
from dataloader.rec_dataset import RecordIODataset
from dataloader.recordio import RecordIOWriter, pack_payload

REPO = Path(__file__).resolve().parents[1]
FINAL = ("train.rec", "train.idx", "property")
PARTIAL = (".train.rec.partial", ".train.idx.partial")


def _faces(folder: Path, n: int, classes: int, name: str = "train.list", seed: int = 0) -> Path:
    """``n`` random 112x112 JPEGs (identities sorted, ``classes`` of them) and their train list."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{name}_{i}.jpg"), img)
        lines.append(f"{name}_{i}.jpg 0 {i * classes // n} 0\n")
    (folder / name).write_text("".join(lines))
    return folder / name


def _stalled_list(folder: Path, n: int) -> Path:
    """A list whose last image is a FIFO nobody writes to: the packer blocks on it after ``n`` images,
    with its partial files open, for as long as the test wants (no timing guesswork)."""
    path = _faces(folder, n, 3, name="stall.list")
    os.mkfifo(folder / "never.jpg")
    with open(path, "a") as f:
        f.write("never.jpg 0 2 0\n")
    return path


def _kill_mid_pack(train_list: Path, out: Path) -> None:
    """Run pack_rec as a process and SIGKILL it once its partial .rec holds data on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "dataloader.pack_rec", "--train_list", str(train_list),
                             "--out", str(out), "--workers", "0"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    partial, deadline = out / PARTIAL[0], time.monotonic() + 120
    try:
        while not (partial.exists() and partial.stat().st_size > 8192):
            assert proc.poll() is None, f"pack_rec ended before it was killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "pack_rec wrote nothing in 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_pack_leaves_no_final_file_and_rerun_completes(tmp_path, caplog):
    out = tmp_path / "set"
    _kill_mid_pack(_stalled_list(tmp_path / "stall", 20), out)
    assert not [n for n in FINAL if (out / n).exists()]
    assert (out / PARTIAL[0]).exists() and (out / PARTIAL[1]).exists()
    for where in (out, out / "train.rec"):
        with pytest.raises(ValueError) as e:
            RecordIODataset(where)
        assert str(out) in str(e.value) and "interrupted" in str(e.value) and ".train.rec.partial" in str(e.value)
        assert "re-run python -m dataloader.pack_rec" in str(e.value)

    good = _faces(tmp_path / "good", 12, 4)
    with caplog.at_level(logging.INFO, logger="dataloader.pack_rec"):
        assert pack_rec.main(["--train_list", str(good), "--out", str(out), "--workers", "0"]) is None
    stale = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(stale) == 1 and ".train.rec.partial" in stale[0] and str(out) in stale[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL)
    ds = RecordIODataset(out)
    assert len(ds) == 12 and ds.num_classes == 4
    assert [ds[i][1] for i in range(12)] == read_train_list(good).labels.tolist()
    assert np.array_equal(ds[5][0].numpy(), cv2.imread(str(tmp_path / "good" / "train.list_5.jpg")).transpose(2, 0, 1))


def test_killed_repack_keeps_the_previous_set(tmp_path):
    out = tmp_path / "set"
    pack_rec.main(["--train_list", str(_faces(tmp_path / "old", 10, 2)), "--out", str(out), "--workers", "0"])
    before = {n: (out / n).read_bytes() for n in FINAL}
    _kill_mid_pack(_stalled_list(tmp_path / "stall", 20), out)
    assert {n: (out / n).read_bytes() for n in FINAL} == before
    ds = RecordIODataset(out)  # the complete set is read; the new pack's partial files are not
    assert len(ds) == 10 and ds.num_classes == 2 and ds[9][1] == 1


def test_pack_failing_part_way_leaves_nothing_of_itself(tmp_path):
    out = tmp_path / "set"
    bad = _faces(tmp_path / "bad", 6, 2)
    (tmp_path / "bad" / "bad_0.jpg").write_bytes(b"not a jpeg")
    with open(bad, "a") as f:
        f.write("bad_0.jpg 0 1 0\n")
    with pytest.raises(ValueError, match="bad training image"):
        pack_rec.pack_train_list(read_train_list(bad), out)
    assert list(out.iterdir()) == []
    pack_rec.pack_train_list(read_train_list(_faces(tmp_path / "ok", 5, 1)), out)
    before = {n: (out / n).read_bytes() for n in FINAL}
    with pytest.raises(ValueError, match="bad training image"):
        pack_rec.pack_train_list(read_train_list(bad), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL)
    assert {n: (out / n).read_bytes() for n in FINAL} == before


def test_rename_failing_part_way_takes_back_what_it_renamed(tmp_path, monkeypatch):
    out = tmp_path / "set"
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):  # the second rename (property) fails: train.rec was already renamed
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError(5, "injected rename failure", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(pack_rec.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="injected"):
        pack_rec.pack_train_list(read_train_list(_faces(tmp_path / "f", 4, 2)), out)
    assert calls == ["train.rec", "property"] and list(out.iterdir()) == []


def _old_style_interrupted(folder: Path, images: int, cut_idx: int) -> Path:
    """What a pack killed before atomic writes left: final names, meta still the [0, 0] placeholder,
    the .idx cut mid-line (it was flushed in blocks)."""
    jpeg = cv2.imencode(".jpg", np.full((112, 112, 3), 90, np.uint8))[1].tobytes()
    folder.mkdir()
    with RecordIOWriter(folder / "train.rec", folder / "train.idx") as w:
        w.write(0, pack_payload([0.0, 0.0], b""))
        for k in range(1, images + 1):
            w.write(k, pack_payload(0.0, jpeg, id=k))
    idx = (folder / "train.idx").read_bytes()
    (folder / "train.idx").write_bytes(idx[: len(idx) - cut_idx])
    return folder


@pytest.mark.parametrize("images, cut_idx", [(3, 0), (3, 2), (0, 0)])
def test_placeholder_meta_is_named_as_an_interrupted_pack(tmp_path, images, cut_idx):
    folder = _old_style_interrupted(tmp_path / "old", images, cut_idx)
    with pytest.raises(ValueError) as e:
        RecordIODataset(folder)
    text = str(e.value)
    assert text.startswith(f"{folder}: ") and "interrupted" in text and "placeholder" in text
    assert "re-run python -m dataloader.pack_rec" in text and "claims" not in text


def test_empty_rec_is_named_as_an_interrupted_pack(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_text("")
    with pytest.raises(ValueError, match=r"interrupted \(train\.rec is empty\)"):
        RecordIODataset(tmp_path)


def test_set_whose_first_record_is_an_image_is_not_a_placeholder(tmp_path):
    """Labels [0, 0] with image bytes (a plain set without meta record) is a real sample."""
    jpeg = cv2.imencode(".jpg", np.full((112, 112, 3), 30, np.uint8))[1].tobytes()
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write(1, pack_payload([0.0, 0.0], jpeg))
        w.write(2, pack_payload([1.0, 0.0], jpeg))
    ds = RecordIODataset(tmp_path)
    assert len(ds) == 2 and [ds[0][1], ds[1][1]] == [0, 1]
