"""gen_feat's run: a list of aligned faces checked, embedded on the path ``FeatOptions`` picks (the torch path
``inference.feat_torch``, imported only then, or the ONNX path ``inference.feat_onnx``) and written as a
feature file; bad images stop the run naming their list line, or with ``skip_bad_images`` are left out and
listed in ``FEAT_LIST.skipped.txt``."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from faces.face_list import (
    ImageList,
    SkippedImage,
    bad_face_reason,
    empty_images,
    load_image_list,
    write_skipped,
)
from inference.feat_onnx import extract_ort, onnx_model_file
from inference.feat_options import FeatOptions, choose_backend
from utils.feature_io import check_output_folder, check_room, sweep_stale_tmp, write_features
from utils.text_lines import printable

DEFAULT_EMBEDDING = 512  # the output estimate's size per face before the model says (most checkpoints')
EMPTY = "empty file (0 bytes)"


def drop_empty(images: ImageList, skip: bool) -> tuple[ImageList, list[SkippedImage]]:
    """The list without its 0-byte files (with ``skip``), or a ValueError naming the first one's line."""
    empty = empty_images(images)
    if empty and not skip:
        i = empty[0]
        raise ValueError(f"{images.where(i)}: image {printable(images.resolved[i])} is empty (0 bytes) "
                         f"({len(empty)} of {len(images)} listed images are empty; --skip-bad-images leaves "
                         f"them out)")
    gone = set(empty)
    return images.subset([i for i in range(len(images)) if i not in gone]), [images.skipped(i, EMPTY) for i in empty]


def undecoded(images: ImageList, feats: np.ndarray) -> dict[int, SkippedImage]:
    """The faces the embedding skipped (NaN rows) by row, each with its reason, read again here (decoding may
    have run in worker processes). A NaN row of a readable face is the model's: it stays for the writer to
    refuse."""
    out = {}
    for i in np.flatnonzero(np.isnan(feats).all(axis=1)):
        reason = bad_face_reason(images.resolved[i])
        if reason is not None:
            out[int(i)] = images.skipped(int(i), reason)
    return out


def report_skipped(feat_list: str, skipped: list[SkippedImage], total: int) -> None:
    """``FEAT_LIST.skipped.txt`` and one line saying how many; an old one is removed when none were skipped,
    so that it never describes another run."""
    side = Path(f"{feat_list}.skipped.txt")
    if not skipped:
        side.unlink(missing_ok=True)
        return
    write_skipped(side, sorted(skipped, key=lambda s: s.line))
    print(f"skipped {len(skipped)} of {total} images; see {printable(side)}", flush=True)


def embed(resume: str, images: ImageList, feat_list: str, opts: FeatOptions) -> tuple[np.ndarray, dict]:
    """The features of ``images`` in list order (NaN rows: faces skipped) on the path ``opts`` picks."""
    check_room(feat_list, images.listed, opts.embedding_size or DEFAULT_EMBEDDING)
    backend, why = choose_backend(opts)
    if backend == "onnxruntime":
        chosen = opts.backend == "auto" and opts.dtype != "int8"
        try:
            onnx_file = onnx_model_file(resume, images, opts)
        except (OSError, RuntimeError) as e:  # the cache cannot be written (a read-only home), or the export failed
            if not chosen or not Path(resume).is_file():
                raise
            print(f"the ONNX export of {printable(resume)} could not be made or cached ({e}); PyTorch instead "
                  "(--backend torch skips this attempt, MAGFACE_CACHE moves the cache)", file=sys.stderr, flush=True)
        else:
            return extract_ort(resume, onnx_file, images, feat_list, opts, why)
    from inference.feat_torch import extract_torch  # torch: imported only when this path runs

    return extract_torch(resume, images, feat_list, opts)


def extract(resume: str, inf_list: str, feat_list: str, opts: FeatOptions | None = None) -> dict:
    """Embed every face of ``inf_list`` with the checkpoint ``resume`` and write ``feat_list``; timings."""
    opts = FeatOptions() if opts is None else opts
    t_start = time.perf_counter()
    check_output_folder(feat_list)  # before the list and the (possibly large) model: fail fast
    stale = sweep_stale_tmp(feat_list)
    if stale:
        print(f"removed {len(stale)} temporary file(s) that an interrupted write of {printable(feat_list)} left: "
              f"{', '.join(printable(n) for n in stale)}", flush=True)
    everything = load_image_list(inf_list)
    images, skipped = drop_empty(everything, opts.skip_bad_images)
    feats, info = embed(resume, images, feat_list, opts) if len(images) else (np.zeros((0, 0), np.float32), {})
    bad = undecoded(images, feats) if opts.skip_bad_images else {}
    if bad:
        keep = [i for i in range(len(images)) if i not in bad]
        images, feats = images.subset(keep), feats[keep]
    skipped += bad.values()
    if not len(images):
        report_skipped(feat_list, skipped, len(everything))
        raise ValueError(f"no usable image in {printable(inf_list)}: all {len(everything)} were skipped "
                         f"(see {printable(feat_list)}.skipped.txt)")
    mags = np.linalg.norm(feats, axis=1)
    write_features(feat_list, images.listed, feats, mags, meta={"precision": info["precision"]})
    report_skipped(feat_list, skipped, len(everything))  # after the features it describes
    total = time.perf_counter() - t_start
    wall = info["wall_s"]
    print(f"wrote {len(images)} features ({info['what']}) to {printable(feat_list)} in {wall:.1f}s "
          f"({len(images) / wall:.1f} img/s; {total:.1f}s with loading and writing); "
          f"magnitude mean {mags.mean():.2f} [{mags.min():.2f}, {mags.max():.2f}]")
    return {"num_images": len(images), "num_skipped": len(skipped), "wall_s": wall, "total_s": total,
            "feat_list": str(feat_list), "batch_size": info["batch_size"], "workers": info["workers"],
            "device": info["device"], "precision": info["precision"]}
