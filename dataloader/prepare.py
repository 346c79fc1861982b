"""Build a training set from one's own photographs: one folder per identity -> aligned faces + list.

    python -m dataloader.prepare --photos ROOT --out DIR [--rec]

ROOT holds one sub-folder per identity (its name is the identity), with photographs inside (sub-folders
walked). Every photograph goes through the same detection, face choice and alignment as
``inference.assess`` (``faces.photo_faces``); with the default ``--policy largest`` a photograph
whose runner-up face is nearly as large (``--ambiguity``, area x score ratio 0.6) is dropped as
``ambiguous``, since the identity label could belong to either face. Writes:

- ``DIR/images/<identity>/<photo>.jpg``: aligned 112x112 faces (JPEG quality 95);
- ``DIR/train.list``: ``images/<identity>/<photo>.jpg 0 <label> 0`` (the seed's format), labels
  0..C-1 over the identities with at least one face, in sorted name order;
- ``DIR/identities.txt``: ``label identity faces``; ``DIR/dropped.txt``: ``photo status note``;
- ``DIR/prepare_report.json``: counts per status and identity;
- with ``--rec``: ``DIR/rec/train.rec``, ``train.idx`` and ``property`` (``dataloader.pack_rec``).

Exit code 1 when no face at all was kept, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from dataloader.image_list import read_train_list
from dataloader.pack_rec import pack_train_list
from dataloader.photo_loader import default_workers, iter_photo_faces
from faces.align import write_jpeg_atomic
from faces.detect import POLICIES
from faces.photo_faces import IMAGE_SUFFIXES, FaceOptions, add_face_args
from utils.atomic import atomic_write, write_json
from utils.cli import HelpFormatter, run_cli


def identity_photos(root: Path) -> dict[str, list[Path]]:
    """{identity folder name: its photographs (image suffixes, sorted)}; hidden entries skipped."""
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder not found: {root}")
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                        and not any(part.startswith(".") for part in q.relative_to(folder).parts))
        out[folder.name] = photos
    if not out:
        raise ValueError(f"{root} has no identity sub-folders (expected ROOT/<identity>/<photo>.jpg)")
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        print(f"warning: {len(loose)} files directly in {root} ignored (e.g. {loose[0].name}): photographs go in "
              f"ROOT/<identity>/", file=sys.stderr)
    return out


DEFAULT_FACES = FaceOptions()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Aligned training set from photographs, one folder per identity",
                                formatter_class=HelpFormatter)
    p.add_argument("--photos", required=True, help="ROOT with one sub-folder of photographs per identity")
    p.add_argument("--out", required=True, help="output folder")
    add_face_args(p, ("largest", "center"))
    p.add_argument("--ambiguity", type=float, default=0.6,
                   help="drop a photo (status ambiguous) when its runner-up face has at least this fraction of "
                   "the chosen face's area x score (largest policy; 0 keeps every photo)")
    p.add_argument("--rec", action="store_true", help="also pack DIR/rec/train.rec + train.idx")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, batch jobs)")
    return p


def prepare(photos: str | Path, out: str | Path, faces: FaceOptions = DEFAULT_FACES, workers: int | None = None,
            rec: bool = False, progress: bool = True) -> int:
    """Align one face per photograph of ``photos``/<identity>/ into ``out`` (train.list, images/, reports; with
    ``rec`` also a RecordIO set); returns the exit status (0, or 1 when no face was kept)."""
    root, out = Path(photos), Path(out)
    if faces.policy not in POLICIES[:2]:
        raise ValueError(f"--policy must be largest or center, got {faces.policy}")
    photos = identity_photos(root)
    order = [(name, p) for name, ps in photos.items() for p in ps]
    if not order:
        raise ValueError(f"{root}: the identity folders hold no photographs ({', '.join(sorted(IMAGE_SUFFIXES))})")
    workers = default_workers() if workers is None else workers
    kept: dict[str, list[str]] = {name: [] for name in photos}
    dropped, counts = [], {}
    bar = tqdm(total=len(order), unit="photo", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for (name, photo), records in zip(order, iter_photo_faces([str(p) for _, p in order], faces, workers),
                                      strict=True):
        rec = records[0]
        counts[rec.status] = counts.get(rec.status, 0) + 1
        rel = photo.relative_to(root)
        if rec.status != "ok":
            dropped.append(f"{rel} {rec.status} {rec.note.replace(chr(10), ' ')}".rstrip())
        else:
            target = Path("images") / name / "__".join(photo.relative_to(root / name).with_suffix(".jpg").parts)
            write_jpeg_atomic(out / target, rec.crop)
            kept[name].append(target.as_posix())
        bar.update(1)
    bar.close()
    return write_set(out, kept, dropped, counts, rec, len(order))


def write_set(out: Path, kept: dict[str, list[str]], dropped: list[str], counts: dict[str, int], rec: bool,
              num_photos: int) -> int:
    names = [n for n in sorted(kept) if kept[n]]
    lines = [f"{path} 0 {label} 0\n" for label, n in enumerate(names) for path in kept[n]]
    report = {"photos": num_photos, "faces": len(lines), "identities": len(names), "statuses": counts,
              "identities_without_faces": [n for n in sorted(kept) if not kept[n]]}
    with atomic_write(out / "dropped.txt", "w") as f:
        f.write("".join(d + "\n" for d in dropped))
    with atomic_write(out / "identities.txt", "w") as f:
        f.write("".join(f"{label} {n} {len(kept[n])}\n" for label, n in enumerate(names)))
    write_json(out / "prepare_report.json", report, end="")
    status_text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if not lines:
        print(f"error: no face kept from {num_photos} photos ({status_text})", file=sys.stderr)
        return 1
    with atomic_write(out / "train.list", "w") as f:
        f.write("".join(lines))
    if rec:
        pack_train_list(read_train_list(out / "train.list"), out / "rec")
    print(f"{num_photos} photos -> {len(lines)} faces of {len(names)} identities ({status_text}); wrote "
          f"{out / 'train.list'}{' and ' + str(out / 'rec') if rec else ''}; dropped photos in {out / 'dropped.txt'}")
    return 0


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    faces = FaceOptions(args.policy, args.det_score, args.min_size, args.det_size,
                        args.ambiguity if args.policy == "largest" else 0.0)
    return prepare(args.photos, args.out, faces, args.workers, args.rec, progress=not args.no_progress)



def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line naming the file/line at fault (``utils.cli``); --debug for a traceback."""
    return run_cli(_main, argv, "dataloader.prepare")


if __name__ == "__main__":
    sys.exit(main())
