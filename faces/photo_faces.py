"""From photographs to aligned 112x112 faces, one photograph at a time: the stage that ``inference.assess`` and
``dataloader.prepare`` share.

Each photograph is read (``faces.photo``: grayscale, 16-bit, alpha, CMYK and EXIF rotation handled),
its faces detected and chosen (``faces.detect``) and aligned (``faces.align``). Failures become a
``FaceRecord`` with a status instead of an exception, so one bad file never stops a batch:

    ok, no_face, too_small, ambiguous, unreadable (not an image, truncated, unreadable file), error

Torch-free; ``dataloader.photo_loader`` runs it over many photographs in DataLoader worker processes.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faces.align import align_face
from faces.detect import DEFAULT_MAX_SIDE, DEFAULT_MIN_SIZE, DEFAULT_SCORE, FaceDetector, choose_faces
from faces.photo import read_photo
from utils.text_lines import numbered_tokens

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2"}
LIST_SUFFIXES = {".txt", ".list", ".lst"}


@dataclass
class FaceRecord:
    """One row of a report: a chosen face (status ok) or why a photograph gave none."""

    path: str
    status: str
    face: int | None = None
    note: str = ""
    det_score: float | None = None
    box: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    crop: np.ndarray | None = field(default=None, repr=False)
    image_size: tuple[int, int] | None = None  # (width, height) of the photograph


@dataclass(frozen=True)
class FaceOptions:
    """How faces are found and chosen (see ``faces.detect``)."""

    policy: str = "largest"
    det_score: float = DEFAULT_SCORE
    min_size: float = DEFAULT_MIN_SIZE
    det_size: int = DEFAULT_MAX_SIDE
    ambiguity: float = 0.0
    threads: int = 0


def _read_list(path: Path) -> list[str]:
    out = []
    for _, tokens in numbered_tokens(path):
        if not tokens[0].startswith("#"):
            p = Path(tokens[0])
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def collect_inputs(inputs: list[str]) -> list[str]:
    """Image paths from files, folders (walked, image suffixes only, sorted) and list files
    (``.txt``/``.list``/``.lst``: first token per line, relative to the list's folder)."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                     and not any(part.startswith(".") for part in q.relative_to(p).parts)]
            paths += [str(q) for q in sorted(found)]
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            paths += _read_list(p)
        elif p.exists():
            paths.append(str(p))
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return paths


def faces_of_photo(path: str, detector: FaceDetector, options: FaceOptions) -> list[FaceRecord]:
    """The chosen faces of one photograph, aligned; or one record saying why there are none."""
    try:
        image, note = read_photo(path)
    except ValueError as e:
        return [FaceRecord(path, "unreadable", note=str(e))]
    size = (int(image.shape[1]), int(image.shape[0]))
    try:
        faces = detector.detect(image)
        chosen, status = choose_faces(faces, image.shape, options.policy, min_size=options.min_size,
                                      ambiguity=options.ambiguity)
        if status != "ok":
            extra = f"{len(faces)} detected" if faces else ""
            return [FaceRecord(path, status, note="; ".join(x for x in (note, extra) if x), image_size=size)]
        return [FaceRecord(path, "ok", i, note, f.score, f.box, f.landmarks, align_face(image, f.landmarks), size)
                for i, f in enumerate(chosen)]
    except (ValueError, RuntimeError, MemoryError) as e:  # onnxruntime / OpenCV failures on odd inputs
        return [FaceRecord(path, "error", note=f"{type(e).__name__}: {e}".splitlines()[0], image_size=size)]


def add_face_args(p: argparse.ArgumentParser, policies: tuple[str, ...]) -> None:
    """Detection flags shared by ``inference.assess`` and ``dataloader.prepare``."""
    p.add_argument("--policy", choices=policies, default="largest",
                   help="which face: largest (area x score, confident faces first), center (nearest the "
                   "image centre)" + (", or all" if "all" in policies else ""))
    p.add_argument("--det-score", type=float, default=DEFAULT_SCORE, help="detector score threshold")
    p.add_argument("--min-size", type=float, default=DEFAULT_MIN_SIZE,
                   help="smallest face box side in photo pixels; smaller faces give status too_small")
    p.add_argument("--det-size", type=int, default=DEFAULT_MAX_SIDE,
                   help="longer side photos are reduced to for detection (landmarks are scaled back)")
    p.add_argument("-j", "--workers", type=int, default=None,
                   help="detection worker processes (default: 0 on <= 2 cores, else half the cores, max 8)")
