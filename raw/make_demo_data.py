"""Build raw/demo_data from the aligned faces in ../shared/data (run once by a maintainer).

- celeba/: CelebA identities with at least 10 aligned faces, at most 20 each (train.list, labels 0..N-1);
- lfw/: the first 2,400 LFW View-2 pairs (folds 1-4), reordered so that every tenth of the list holds
  as many same as different pairs (the 10-fold protocol splits the list into contiguous blocks):
  img.list (pair i = lines 2i, 2i+1) and pair.list (``i j label``).

JPEG bytes are copied unchanged. Terms: see raw/demo_data/README.md.
"""
from __future__ import annotations

import argparse
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_celeba(src: Path, out: Path, min_images: int, max_images: int) -> int:
    by_id: dict[int, list[str]] = defaultdict(list)
    for line in (src / "train.list").read_text().splitlines():
        tokens = line.split()
        if tokens:
            by_id[int(tokens[2])].append(tokens[0])
    kept = [label for label in sorted(by_id) if len(by_id[label]) >= min_images]
    lines = []
    for new_label, label in enumerate(kept):
        for rel in sorted(by_id[label])[:max_images]:
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst)
            lines.append(f"{rel} 0 {new_label} 0")
    (out / "train.list").write_text("\n".join(lines) + "\n")
    return len(lines)


def build_lfw(src: Path, out: Path, num_pairs: int) -> int:
    images = src.joinpath("img.list").read_text().split()
    pairs = [tuple(map(int, line.split())) for line in src.joinpath("pair.list").read_text().splitlines()]
    pairs = pairs[:num_pairs]
    same = [p for p in pairs if p[2] == 1]
    diff = [p for p in pairs if p[2] == 0]
    ordered = [p for s, d in zip(same, diff, strict=True) for p in (s, d)]
    img_lines, pair_lines = [], []
    for i, (a, b, label) in enumerate(ordered):
        for idx in (a, b):
            rel = images[idx]
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                shutil.copyfile(src / rel, dst)
            img_lines.append(rel)
        pair_lines.append(f"{2 * i} {2 * i + 1} {label}")
    (out / "img.list").write_text("\n".join(img_lines) + "\n")
    (out / "pair.list").write_text("\n".join(pair_lines) + "\n")
    return len(ordered)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "raw" / "demo_data"))
    p.add_argument("--pairs", type=int, default=2400)
    args = p.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    n_train = build_celeba(shared / "celeba112", out / "celeba", min_images=10, max_images=20)
    n_pairs = build_lfw(shared / "lfw112", out / "lfw", args.pairs)
    print(f"demo data in {out}: {n_train} training faces, {n_pairs} LFW pairs")


if __name__ == "__main__":
    main()
