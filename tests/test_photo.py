"""faces.photo: every stored form of a photograph becomes the 8-bit BGR image the detector expects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from faces.photo import jpeg_components, read_photo, to_bgr8


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:10] = 255  # a white band along the top edge
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    got, note = read_photo(tmp_path / "rotated.jpg")
    assert got.shape == (200, 100, 3)
    assert got[:, -10:].mean() > 200 and got[:, :50].mean() < 30  # the band is now on the right


def test_conversions_and_notes():
    deep = np.full((4, 4, 3), 65535, np.uint16)
    deep[0, 0] = 257 * 10
    out, notes = to_bgr8(deep)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 10 and out[1, 1, 0] == 255 and notes == ["16-bit scaled to 8-bit"]
    rgba = np.full((2, 2, 4), 200, np.uint8)
    rgba[0, 0, 3] = 0
    out, notes = to_bgr8(rgba)
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [156, 156, 156]  # 200 * 200/255
    assert notes == ["alpha composited onto black"]
    assert to_bgr8(np.full((2, 2, 4), 255, np.uint8))[1] == []  # opaque alpha: nothing to note
    gray, notes = to_bgr8(np.arange(4, dtype=np.uint8).reshape(2, 2))
    assert gray.shape == (2, 2, 3) and (gray[..., 0] == gray[..., 2]).all() and notes == ["grayscale"]


def test_jpeg_components_and_bad_files(tmp_path):
    data = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert jpeg_components(data) == 3
    assert jpeg_components(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()) == 1
    with pytest.raises(ValueError, match="cannot read"):
        read_photo(tmp_path / "absent.jpg")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="x.png: not a decodable image"):
        read_photo(tmp_path / "x.png")
