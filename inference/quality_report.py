"""What ``inference.assess`` writes: quality.csv / quality.json (one row per face or failed photo),
the aligned crops, a ``.npz`` of features, and a contact sheet of the faces sorted by quality.

Every file is written atomically (``utils.atomic``): an interrupted run leaves the previous report
or none, never a half-written one.
"""
from __future__ import annotations

import csv
import io
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from faces.align import write_jpeg_atomic
from faces.photo_faces import FaceRecord
from utils.atomic import atomic_write, write_json

COLUMNS = (["path", "face", "status", "det_score", "box_x1", "box_y1", "box_x2", "box_y2"]
           + [f"lm_{a}{i}" for i in range(1, 6) for a in "xy"]
           + ["magnitude", "quality", "quality_scale", "width", "height", "note"])


def _num(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def record_row(rec: FaceRecord, magnitude: float | None, quality: float | None, scale: str) -> dict:
    """A report row; numbers rounded (coordinates to 0.01 px), absent values None."""
    row: dict = dict.fromkeys(COLUMNS)
    row.update(path=rec.path, face=rec.face, status=rec.status, note=rec.note, det_score=_num(rec.det_score, 4))
    if rec.image_size:
        row["width"], row["height"] = rec.image_size
    if rec.box is not None:
        row.update(zip(("box_x1", "box_y1", "box_x2", "box_y2"), (_num(v, 2) for v in rec.box), strict=True))
    if rec.landmarks is not None:
        row.update(zip(COLUMNS[8:18], (_num(v, 2) for v in rec.landmarks.ravel()), strict=True))
    if magnitude is not None:
        row["magnitude"] = _num(magnitude, 4)
        row["quality_scale"] = scale
        row["quality"] = _num(magnitude, 4) if scale == "raw" else (int(quality) if quality is not None else None)
    return row


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())


def write_quality_json(path: str | os.PathLike, rows: Sequence[dict], summary: dict) -> None:
    write_json(path, {"summary": summary, "rows": list(rows)}, indent=1)


def crop_name(rec: FaceRecord, index: int) -> str:
    """A flat, unique file name for a face crop: running index, photo stem, face number."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(rec.path).stem)[:60]
    return f"{index:06d}_{stem}_f{rec.face}.jpg"


def save_crops(folder: Path, records: Sequence[FaceRecord]) -> list[str]:
    names = []
    for i, rec in enumerate(records):
        name = crop_name(rec, i)
        write_jpeg_atomic(folder / name, rec.crop)
        names.append(name)
    return names


def contact_sheet(crops: Sequence[np.ndarray], labels: Sequence[str], path: str | os.PathLike,
                  columns: int = 8, max_faces: int = 48, thumb: int = 96, title: str = "") -> Path:
    """A PNG grid of faces in the given order (callers sort by quality), each with a caption.

    With more than ``max_faces`` faces, evenly spaced ones are shown (first and last included). ``title`` (e.g. the
    model and the quality scale, so the sheet says which model scored it) heads the sheet, wrapped to its width.
    """
    if not len(crops):
        raise ValueError("contact sheet: no faces to draw")
    idx = np.unique(np.linspace(0, len(crops) - 1, min(max_faces, len(crops))).round().astype(int))
    rows = math.ceil(len(idx) / columns)
    cap, width = 18, min(columns, len(idx)) * thumb
    heading = textwrap.wrap(title, max(8, width // 7)) if title else []
    top = 16 * len(heading) + (4 if heading else 0)
    sheet = np.full((top + rows * (thumb + cap), width, 3), 255, np.uint8)
    for k, line in enumerate(heading):
        cv2.putText(sheet, line, (3, 13 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for k, i in enumerate(idx):
        r, c = divmod(k, columns)
        y, x = top + r * (thumb + cap), c * thumb
        sheet[y:y + thumb, x:x + thumb] = cv2.resize(crops[i], (thumb, thumb), interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, labels[i][:14], (x + 3, y + thumb + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    ok, data = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"PNG encoding failed for {path}")
    with atomic_write(path, "wb") as f:
        f.write(data.tobytes())
    return Path(path)
