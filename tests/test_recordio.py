"""Native insightface RecordIO: byte layout, pack -> read round trip on real faces, corrupt sets."""
from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloader import (
    BadSample,
    EpochShuffleSampler,
    RecordIODataset,
    RecordIOWriter,
    build_train_dataset,
    build_train_loader,
    pack_payload,
    read_train_list,
    unpack_payload,
)
from dataloader.pack_rec import main as pack_main
from dataloader.pack_rec import write_rec_set
from dataloader.recordio import read_record

REPO = Path(__file__).resolve().parents[1]
MAGIC = bytes.fromhex("0a23d7ce")  # 0xced7230a little-endian


@pytest.fixture(scope="module")
def faces(tmp_path_factory, celeba_dir) -> Path:
    """50 real faces, every 6th of the first 300 lines, sorted by identity as insightface sets are: 15 identities in
    celeba112, 16 in the shipped subset (at most 20 faces each)."""
    lines = (celeba_dir / "train.list").read_text().splitlines()
    picked = [ln.split() for ln in lines[:300:6]]
    path = tmp_path_factory.mktemp("faces") / "train.list"
    path.write_text("".join(f"{celeba_dir / p[0]} 0 {p[2]} 0\n" for p in picked))
    return path


@pytest.fixture(scope="module")
def packed(tmp_path_factory, faces) -> Path:
    out = tmp_path_factory.mktemp("rec") / "set"
    pack_main(["--train_list", str(faces), "--out", str(out), "--workers", "2"])
    return out


def _read_raw(path: Path, offset: int) -> tuple[tuple, np.ndarray | None]:
    """Independent header reader: magic, lrec, then the <IfQQ header and its labels."""
    data = path.read_bytes()
    magic, lrec = struct.unpack_from("<II", data, offset)
    assert magic == 0xCED7230A and lrec >> 29 == 0
    flag, label, id_, id2 = struct.unpack_from("<IfQQ", data, offset + 8)
    labels = np.frombuffer(data, np.float32, flag, offset + 32) if flag else None
    return (flag, label, id_, id2), labels


def test_pack_layout_is_insightface(packed, faces, full_data):
    tl = read_train_list(faces)
    n, classes = len(tl), tl.num_classes
    assert (n, classes) == (50, 15 if full_data else 16)
    assert (packed / "property").read_text().strip() == f"{classes},112,112"
    idx = [tuple(map(int, ln.split("\t"))) for ln in (packed / "train.idx").read_text().splitlines()]
    assert [k for k, _ in idx] == list(range(n + 1 + classes))
    head, meta = _read_raw(packed / "train.rec", idx[0][1])
    assert head[0] == 2 and meta.tolist() == [n + 1, n + 1 + classes]
    for key in (1, 17, 50):
        (flag, label, id_, _), _ = _read_raw(packed / "train.rec", idx[key][1])
        assert flag == 0 and label == tl.labels[key - 1] and id_ == key
    for c in range(classes):
        _, rng = _read_raw(packed / "train.rec", idx[n + 1 + c][1])
        keys = np.flatnonzero(tl.labels == c) + 1
        assert rng.tolist() == [keys[0], keys[-1] + 1]


def test_round_trip_same_pixels_with_workers(packed, faces):
    tl = read_train_list(faces)
    ds = build_train_dataset(rec=str(packed), num_classes=tl.num_classes)
    assert isinstance(ds, RecordIODataset) and len(ds) == 50 and ds.num_classes == tl.num_classes
    ds[0]  # the parent opens its descriptor before forking; workers must open their own
    loader = build_train_loader(ds, batch_size=8, workers=2, sampler=EpochShuffleSampler(50, shuffle=False),
                                pin_memory=False, drop_last=False, persistent_workers=False)
    images = torch.cat([b[0] for b in loader])
    labels = torch.cat([b[1] for b in loader])
    assert images.shape == (50, 3, 112, 112) and labels.tolist() == tl.labels.tolist()
    for i, path in enumerate(tl.paths):
        assert np.array_equal(images[i].numpy(), cv2.imread(path).transpose(2, 0, 1)), path


def test_pickles_without_descriptor(packed):
    ds = RecordIODataset(packed)
    first = ds[0][0]
    assert ds._fd is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fd is None and torch.equal(clone[0][0], first)


def test_command_runs(tmp_path, faces):
    out = tmp_path / "viacommand"
    subprocess.run([sys.executable, "-m", "dataloader.pack_rec", "--train_list", str(faces), "--out", str(out),
                    "--reencode", "--quality", "90", "--workers", "0"], cwd=REPO, check=True, capture_output=True)
    ds = RecordIODataset(out)
    img = cv2.imread(read_train_list(faces).paths[3]).transpose(2, 0, 1).astype(int)
    assert len(ds) == 50 and np.abs(ds[3][0].numpy().astype(int) - img).mean() < 3  # lossy, but close


def test_multi_part_record_bytes(tmp_path):
    """A payload with the magic word at an aligned position is split there, as dmlc's writer does."""
    image = b"ab\x00\x00" + MAGIC + b"cdef" + MAGIC + b"xyz" + MAGIC  # payload offsets 28, 36 aligned; 43 not
    payload = pack_payload(3.0, image)
    with RecordIOWriter(tmp_path / "t.rec", tmp_path / "t.idx") as w:
        w.write(0, payload)
    head = struct.pack("<IfQQ", 0, 3.0, 0, 0)
    expected = (MAGIC + struct.pack("<I", (1 << 29) | 28) + head + b"ab\x00\x00"
                + MAGIC + struct.pack("<I", (2 << 29) | 4) + b"cdef"
                + MAGIC + struct.pack("<I", (3 << 29) | 7) + b"xyz" + MAGIC + b"\x00")
    data = (tmp_path / "t.rec").read_bytes()
    assert data == expected
    with open(tmp_path / "t.rec", "rb") as f:
        back = read_record(f.fileno(), 0, len(data))
    assert back == payload
    header, labels, img = unpack_payload(back)
    assert header.label == 3.0 and labels is None and bytes(img) == image


def _write_plain(tmp_path: Path, faces: Path, n: int, first_key: int = 0, two_labels: bool = False) -> Path:
    """A set without meta record, written key by key with the writer API."""
    tl = read_train_list(faces)
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        for k in range(n):
            label = [float(tl.labels[k]), 0.5] if two_labels else float(tl.labels[k])
            w.write(first_key + k, pack_payload(label, Path(tl.paths[k]).read_bytes()))
    return tmp_path


@pytest.mark.parametrize("first_key, two_labels", [(0, False), (1, True)])
def test_set_without_meta_record(tmp_path, faces, first_key, two_labels):
    """Record 0 with flag 0 is an image; without key 0 every key is; flag > 0 -> the first label."""
    ds = RecordIODataset(_write_plain(tmp_path, faces, 5, first_key, two_labels))
    tl = read_train_list(faces)
    assert len(ds) == 5 and ds.num_classes is None and ds.keys.tolist() == list(range(first_key, first_key + 5))
    assert [ds[i][1] for i in range(5)] == tl.labels[:5].tolist()
    assert np.array_equal(ds[4][0].numpy(), cv2.imread(tl.paths[4]).transpose(2, 0, 1))


def test_idx_past_end_of_rec(tmp_path, packed):
    for name in ("train.rec", "property"):
        (tmp_path / name).write_bytes((packed / name).read_bytes())
    lines = (packed / "train.idx").read_text().splitlines()
    lines[7] = "7\t99999999"
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        RecordIODataset(tmp_path)
    assert f"{tmp_path / 'train.idx'}:8" in str(e.value) and "key 7" in str(e.value)
    assert "past the end" in str(e.value)


def test_malformed_idx_line(tmp_path, packed):
    (tmp_path / "train.rec").write_bytes((packed / "train.rec").read_bytes())
    (tmp_path / "train.idx").write_text("0\t0\n1 x\n")
    with pytest.raises(ValueError, match=r"train\.idx:2: expected 'key<TAB>offset'"):
        RecordIODataset(tmp_path)


def test_corrupt_records_named(tmp_path, packed):
    for name in ("train.idx", "property"):
        (tmp_path / name).write_bytes((packed / name).read_bytes())
    data = bytearray((packed / "train.rec").read_bytes())
    offsets = {int(k): int(o) for k, o in (ln.split() for ln in (packed / "train.idx").read_text().splitlines())}
    data[offsets[5] : offsets[5] + 4] = b"JUNK"
    struct.pack_into("<I", data, offsets[9] + 4, 10**6)  # length past the end of the file
    (tmp_path / "train.rec").write_bytes(bytes(data))
    ds = RecordIODataset(tmp_path)
    with pytest.raises(ValueError) as e:
        ds[4]
    assert f"{tmp_path / 'train.rec'} key 5 at offset {offsets[5]}" in str(e.value) and "bad magic" in str(e.value)
    with pytest.raises(ValueError, match=f"key 9 at offset {offsets[9]}.*runs past the end"):
        ds[8]
    skipping = RecordIODataset(tmp_path, skip_bad=True)
    assert isinstance(skipping[4], BadSample) and "key 5" in skipping[4].source
    assert skipping[5][0].shape == (3, 112, 112)


def test_fc_size_checks(tmp_path, packed, faces):
    classes = read_train_list(faces).num_classes
    with pytest.raises(ValueError, match=f"{classes} identities.*--last-fc-size"):
        RecordIODataset(packed, num_classes=classes - 1)
    d = _write_plain(tmp_path, faces, 12)  # no property, no meta: checked per record
    ds = RecordIODataset(d, num_classes=1)
    assert ds[0][1] == 0
    with pytest.raises(ValueError, match="key 5: identity 1 >= 1 classes; --last-fc-size"):
        ds[5]


def test_meta_record_names_missing_key(tmp_path, faces):
    tl = read_train_list(faces)
    write_rec_set(tmp_path, ((int(tl.labels[i]), Path(tl.paths[i]).read_bytes()) for i in range(4)), 15)
    lines = (tmp_path / "train.idx").read_text().splitlines()
    (tmp_path / "train.idx").write_text("\n".join(ln for ln in lines if not ln.startswith("3\t")) + "\n")
    with pytest.raises(ValueError, match="keys 1..4, but key 3 is missing"):
        RecordIODataset(tmp_path)


def test_multi_part_image_through_dataset(tmp_path, faces):
    """A real JPEG whose comment segment holds the magic word at an aligned payload offset."""
    path = read_train_list(faces).paths[0]
    jpeg = Path(path).read_bytes()
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 6) + b"--" + MAGIC  # magic at payload offset 32
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write(1, pack_payload(7.0, jpeg[:2] + comment + jpeg[2:]))
    assert struct.unpack_from("<I", (tmp_path / "train.rec").read_bytes(), 4)[0] >> 29 == 1
    img, label = RecordIODataset(tmp_path)[0]
    assert label == 7 and np.array_equal(img.numpy(), cv2.imread(path).transpose(2, 0, 1))
