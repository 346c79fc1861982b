"""dataloader.prepare: photographs in identity folders -> aligned faces, train.list, .rec and a drop report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloader import prepare
from dataloader.image_list import read_train_list
from dataloader.rec_dataset import RecordIODataset
from faces.align import align_face

PHOTOS = {"Alice": ["AJ_Cook/AJ_Cook_0001.jpg", "Anders_Ebbeson/Anders_Ebbeson_0002.jpg"],
          "Bob": ["Allyson_Felix/Allyson_Felix_0005.jpg",
                  "Alejandro_Toledo/Alejandro_Toledo_0021.jpg"]}  # two people, the second 2/3 the first's size


@pytest.fixture(scope="module")
def root(photos_dir: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, rels in PHOTOS.items():
        (root / name).mkdir()
        for rel in rels:
            shutil.copy(photos_dir / "lfw" / rel, root / name / Path(rel).name)
    no_face = (photos_dir / "no_face.txt").read_text().split()[0]
    shutil.copy(photos_dir / no_face, root / "Alice" / "beach.jpg")
    (root / "Bob" / "scan.png").write_text("not an image")
    face = cv2.imread(str(photos_dir / "lfw" / PHOTOS["Bob"][0]))
    (root / "Bob" / "group").mkdir()
    cv2.imwrite(str(root / "Bob" / "group" / "twins.jpg"), np.hstack([face, face[:, ::-1]]))  # two equal faces
    (root / "Carol").mkdir()
    (root / "Carol" / "notes.jpg").write_text("nothing")
    return root


def aligned_target(rel: str, lfw_dir: Path, photos_dir: Path) -> np.ndarray:
    """The aligned face of photograph ``lfw/REL`` in ``lfw_dir``. The shipped subset holds only the faces of its
    2,400 pairs; for the others, the photograph aligned with its reference landmarks, as that face was made."""
    aligned = lfw_dir / "images" / rel
    if aligned.is_file():
        return cv2.imread(str(aligned))
    lines = (photos_dir / "landmarks.txt").read_text().splitlines()
    tokens = next(line.split() for line in lines if line.split()[0] == f"lfw/{rel}")
    points = np.array(tokens[2:], dtype=np.float64).reshape(5, 2)
    return align_face(cv2.imread(str(photos_dir / "lfw" / rel)), points)


def test_prepare_end_to_end(root, tmp_path, lfw_dir, photos_dir):
    out = tmp_path / "set"
    assert prepare.main(["--photos", str(root), "--out", str(out), "--rec", "--no-progress", "--workers", "0"]) == 0
    lines = (out / "train.list").read_text().splitlines()
    assert lines == ["images/Alice/AJ_Cook_0001.jpg 0 0 0", "images/Alice/Anders_Ebbeson_0002.jpg 0 0 0",
                     "images/Bob/Allyson_Felix_0005.jpg 0 1 0"]
    listed = read_train_list(out / "train.list")
    assert listed.num_classes == 2
    for rel in PHOTOS["Alice"]:  # the aligned face is the shared set's aligned face, up to JPEG noise
        ours = cv2.imread(str(out / "images" / "Alice" / Path(rel).name)).astype(np.int16)
        target = aligned_target(rel, lfw_dir, photos_dir).astype(np.int16)
        assert ours.shape == (112, 112, 3) and np.abs(ours - target).mean() < 4.0
    dropped = dict(line.split(" ", 1) for line in (out / "dropped.txt").read_text().splitlines())
    assert {k: v.split()[0] for k, v in dropped.items()} == {
        "Alice/beach.jpg": "no_face", "Bob/scan.png": "unreadable", "Bob/group/twins.jpg": "ambiguous",
        "Bob/Alejandro_Toledo_0021.jpg": "ambiguous", "Carol/notes.jpg": "unreadable"}
    assert (out / "identities.txt").read_text().splitlines() == ["0 Alice 2", "1 Bob 1"]
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["statuses"] == {"ok": 3, "no_face": 1, "unreadable": 2, "ambiguous": 2}
    assert report["identities_without_faces"] == ["Carol"]
    rec = RecordIODataset(out / "rec")
    assert len(rec) == 3 and rec.num_classes == 2
    image, label = rec[2]
    assert label == 1 and tuple(image.shape) == (3, 112, 112)


def test_prepare_keeps_ambiguous_with_ambiguity_off_and_fails_without_faces(root, tmp_path, capsys):
    out = tmp_path / "set"
    assert prepare.main(["--photos", str(root / "Bob"), "--out", str(out), "--no-progress", "--ambiguity", "0"]) == 0
    assert (out / "train.list").read_text().splitlines() == ["images/group/twins.jpg 0 0 0"]
    assert "3 files directly in" in capsys.readouterr().err  # Bob's own photos are not in an identity folder
    assert prepare.main(["--photos", str(root), "--out", str(tmp_path / "x"), "--no-progress", "--min-size",
                         "5000"]) == 1
    assert "no face kept" in capsys.readouterr().err
    assert not (tmp_path / "x" / "train.list").exists()
    assert prepare.main(["--photos", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
