"""Five-point face alignment to the ArcFace 112x112 template.

Recognition models are trained on faces warped so that the eyes, nose tip and mouth corners land on
fixed template points; feeding them faces aligned any other way costs accuracy. The warp is the
least-squares similarity (rotation, uniform scale, translation) from the detected landmarks to the
template, found in closed form with Umeyama's method, applied with bilinear interpolation and a black
border. Large faces (transform scale below 0.5) are first reduced with area interpolation to avoid
aliasing, as the project's aligned data sets were made.

Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner ("left" = image
left). Landmark list formats read by the CLI, one image per line:

- ``path5``:  ``path x1 y1 ... x5 y5``
- ``ijb``:    ``name x1 y1 ... x5 y5 score`` (insightface ``ijb*_name_5pts_score.txt``)
- ``scored``: ``path score x1 y1 ... x5 y5`` (``landmarks.txt`` of the shared data sets)

CLI: ``python -m faces.align --landmarks FILE --src-root DIR --out DIR [--format auto|path5|ijb|scored]``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.text_lines import numbered_tokens, printable

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_SIZE = 112
FORMATS = ("path5", "ijb", "scored")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class LandmarkEntry:
    """One image of a landmark list; ``line`` (1-based) is kept so every report can name file:line."""

    path: str
    points: np.ndarray
    score: float | None
    line: int


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), as a (2, 3) matrix for cv2."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmark coordinates must be finite")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("degenerate source landmarks: all points coincide")
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0  # the best orthogonal map would be a reflection: take the best rotation instead
    rot = u @ np.diag(signs) @ vt
    scale = float((sing * signs).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def similarity_scale(matrix: np.ndarray) -> float:
    """Uniform scale of a similarity matrix (the length of its first column)."""
    return float(np.hypot(matrix[0, 0], matrix[1, 0]))


def template_for(size: int) -> np.ndarray:
    """The ArcFace template scaled from 112 to ``size`` pixels."""
    return ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Warp ``image`` (uint8 HxW or HxWx3) so its 5 ``landmarks`` land on the template; ``size``^2 uint8."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks of shape (5, 2), got {landmarks.shape}")
    template = template_for(size)
    matrix = estimate_similarity(landmarks, template)
    scale = similarity_scale(matrix)
    if scale < 0.5:
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        factors = np.array([new_w / w, new_h / h])
        landmarks = (landmarks + 0.5) * factors - 0.5  # pixel centres map like this under a resize
        matrix = estimate_similarity(landmarks, template)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _numbers(tokens: list[str], where: str) -> np.ndarray:
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{where}: expected numbers, got {' '.join(tokens)!r}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: non-finite landmark value in {' '.join(tokens)!r}")
    return values


def parse_landmark_line(tokens: list[str], fmt: str, where: str) -> tuple[str, np.ndarray, float | None]:
    """(path, (5, 2) points, score or None) from one line's tokens; ``where`` is ``file:line``."""
    expected = 11 if fmt == "path5" else 12
    if fmt not in FORMATS:
        raise ValueError(f"unknown landmark format {fmt!r}; expected one of {FORMATS}")
    if len(tokens) != expected:
        raise ValueError(f"{where}: format {fmt} expects {expected} fields, got {len(tokens)}")
    values = _numbers(tokens[1:], where)
    if fmt == "path5":
        return tokens[0], values.reshape(5, 2), None
    if fmt == "ijb":
        return tokens[0], values[:10].reshape(5, 2), float(values[10])
    return tokens[0], values[1:].reshape(5, 2), float(values[0])


def _is_score(value: str) -> bool:
    try:
        return -1.0 <= float(value) <= 1.0
    except ValueError:
        return False


def detect_format(rows: list[tuple[int, list[str]]], path: str) -> tuple[str, str]:
    """Pick a format from token counts and where the [-1, 1] score column is; returns (format, reason)."""
    if not rows:
        raise ValueError(f"{path}: no landmark lines")
    counts = {len(tokens) for _, tokens in rows}
    if len(counts) > 1:
        first_line, first = rows[0]
        line, tokens = next((n, t) for n, t in rows if len(t) != len(first))
        raise ValueError(f"{path}:{line}: {len(tokens)} fields, but line {first_line} has {len(first)}")
    count = counts.pop()
    if count == 11:
        return "path5", "11 fields per line"
    if count != 12:
        raise ValueError(f"{path}:{rows[0][0]}: {count} fields; expected 11 (path5) or 12 (ijb, scored)")
    score_first = all(_is_score(tokens[1]) for _, tokens in rows)
    score_last = all(_is_score(tokens[11]) for _, tokens in rows)
    if score_first and not score_last:
        return "scored", "12 fields, field 2 always in [-1, 1]"
    if score_last and not score_first:
        return "ijb", "12 fields, field 12 always in [-1, 1]"
    raise ValueError(f"{path}: cannot tell 'ijb' from 'scored' (score column ambiguous); pass --format")


def read_landmarks(path: str | Path, fmt: str = "auto") -> tuple[list[LandmarkEntry], str, str]:
    """Entries of a landmark list, the format used and why; blank and ``#`` lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    rows = []
    for number, tokens in numbered_tokens(path):
        if not tokens[0].startswith("#"):
            rows.append((number, tokens))
    if fmt == "auto":
        fmt, reason = detect_format(rows, str(path))
    elif fmt in FORMATS:
        reason = "given"
    else:
        raise ValueError(f"unknown landmark format {fmt!r}; expected auto or one of {FORMATS}")
    entries = []
    for number, tokens in rows:
        name, points, score = parse_landmark_line(tokens, fmt, f"{path}:{number}")
        entries.append(LandmarkEntry(name, points, score, number))
    return entries, fmt, reason


def output_relpath(name: str, src_root: Path) -> Path:
    """Where an entry's aligned face goes below the output root: its path below ``src_root``, as .jpg."""
    rel = Path(name)
    if rel.is_absolute():
        rel = rel.resolve().relative_to(src_root.resolve())  # ValueError when outside the root
    if ".." in rel.parts:
        raise ValueError(f"path {name!r} leaves the source root")
    if rel.suffix.lower() not in (".jpg", ".jpeg"):
        rel = rel.with_suffix(".jpg")
    return rel


def write_jpeg_atomic(path: Path, image: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """Encode first, then rename, so an interrupted run never leaves a truncated image behind."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for {printable(path)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


def _read_image(path: Path) -> np.ndarray | None:
    """BGR image or None, as ``cv2.imread`` but for any path: cv2 crashes on one that is not UTF-8."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def align_list(
    entries: list[LandmarkEntry],
    landmark_file: str,
    src_root: Path,
    out_root: Path,
    size: int = TEMPLATE_SIZE,
) -> dict[str, int]:
    """Align every entry; problems are reported on stderr as ``file:line`` and counted, not raised."""
    counts = {"aligned": 0, "failed": 0, "skipped": 0}
    for entry in entries:
        where = f"{landmark_file}:{entry.line}"
        if not np.any(entry.points):
            print(f"{where}: skipped {printable(entry.path)}: no landmarks (all zero)", file=sys.stderr)
            counts["skipped"] += 1
            continue
        try:
            rel = output_relpath(entry.path, src_root)
            src = Path(entry.path) if Path(entry.path).is_absolute() else src_root / entry.path
            image = _read_image(src)
            if image is None:
                raise ValueError(f"cannot read image {printable(src)}")
            write_jpeg_atomic(out_root / rel, align_face(image, entry.points, size))
        except ValueError as e:
            print(f"{where}: failed {printable(entry.path)}: {e}", file=sys.stderr)
            counts["failed"] += 1
            continue
        counts["aligned"] += 1
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Align faces to the ArcFace 112x112 five-point template")
    parser.add_argument("--landmarks", required=True, help="landmark list (see --format)")
    parser.add_argument("--src-root", required=True, help="folder the listed image paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (mirrors the relative paths)")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                        help="landmark list layout: path5 'path x1 y1 ... x5 y5', ijb 'name x1 ... y5 score', "
                        "scored 'path score x1 ... y5'; auto guesses from the first line")
    parser.add_argument("--size", type=int, default=TEMPLATE_SIZE, help="output side (template scaled)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    entries, fmt, reason = read_landmarks(args.landmarks, args.format)
    print(f"{args.landmarks}: format {fmt} ({reason}), {len(entries)} entries")
    counts = align_list(entries, args.landmarks, Path(args.src_root), Path(args.out), args.size)
    print(
        f"aligned {counts['aligned']}, failed {counts['failed']}, skipped {counts['skipped']} "
        f"of {len(entries)} -> {args.out}"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, None, "faces.align"))
