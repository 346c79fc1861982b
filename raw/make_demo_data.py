"""Build raw/demo_data from the aligned faces in ../shared/data (run once by a maintainer).

- celeba/: CelebA identities with at least 10 aligned faces, at most 20 each (train.list, labels 0..N-1);
- lfw/: the first 2,400 LFW View-2 pairs (folds 1-4), reordered so that every tenth of the list holds
  as many same as different pairs (the 10-fold protocol splits the list into contiguous blocks):
  img.list (pair i = lines 2i, 2i+1) and pair.list (``i j label``);
- photos/: a few unaligned photographs of ../shared/data/photos with their reference landmarks.txt lines and
  the no-face photograph (no_face.txt), for the detection, prepare and assess tests on a bare clone.

JPEG bytes are copied unchanged. Terms: see raw/demo_data/README.md.
"""
from __future__ import annotations

import argparse
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# LFW photographs: the 12 that tests/test_quality_model.py scores (every 12th of the 200, sorted), the ones
# tests name (AJ_Cook ... Anders_Ebbeson; Alejandro_Toledo holds a second face 2/3 the size of the first) and
# a few whose aligned faces are in lfw/ above, so that detection + alignment can be checked against them.
LFW_PHOTOS = (
    "AJ_Cook/AJ_Cook_0001", "Alejandro_Toledo/Alejandro_Toledo_0021",
    "Alexandra_Vodjanikova/Alexandra_Vodjanikova_0002", "Allyson_Felix/Allyson_Felix_0005",
    "Anders_Ebbeson/Anders_Ebbeson_0002", "Aparna_Pillai/Aparna_Pillai_0001", "Babe_Ruth/Babe_Ruth_0001",
    "Bruna_Colosio/Bruna_Colosio_0001", "Carl_Reiner/Carl_Reiner_0001", "Colin_Powell/Colin_Powell_0183",
    "Doug_Duncan/Doug_Duncan_0002", "Fidel_Castro/Fidel_Castro_0003", "George_W_Bush/George_W_Bush_0013",
    "Gonzalo_Sanchez_de_Lozada/Gonzalo_Sanchez_de_Lozada_0012", "Hillary_Clinton/Hillary_Clinton_0011",
    "Jack_Goodman/Jack_Goodman_0001", "Jiang_Zemin/Jiang_Zemin_0005", "Jodie_Foster/Jodie_Foster_0001",
    "Juan_Pablo_Montoya/Juan_Pablo_Montoya_0008", "Lenny_Kravitz/Lenny_Kravitz_0001",
    "Mary_Sue_Coleman/Mary_Sue_Coleman_0001", "Paula_Radcliffe/Paula_Radcliffe_0005", "Wen_Jiabao/Wen_Jiabao_0006",
)
# CelebA photographs: the first four (one face each), one with two faces, five where a larger non-face box
# outscores the face (071213 and 011760 above 640 px, so detection runs on a reduced copy) and the one without
# a detectable face.
CELEBA_PHOTOS = ("001084", "001085", "002559", "002622", "011760", "049963", "071213", "113028", "130926",
                 "194580", "110546")


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


def build_photos(src: Path, out: Path) -> int:
    wanted = [f"lfw/{name}.jpg" for name in LFW_PHOTOS] + [f"celeba/{name}.jpg" for name in CELEBA_PHOTOS]
    for rel in wanted:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)
    chosen = set(wanted)
    for name in ("landmarks.txt", "no_face.txt"):  # the source's lines for the chosen photographs, in its order
        lines = [line for line in (src / name).read_text().splitlines() if line.split() and line.split()[0] in chosen]
        (out / name).write_text("".join(f"{line}\n" for line in lines))
    return len(wanted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "raw" / "demo_data"))
    p.add_argument("--pairs", type=int, default=2400)
    args = p.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    n_train = build_celeba(shared / "celeba112", out / "celeba", min_images=10, max_images=20)
    n_pairs = build_lfw(shared / "lfw112", out / "lfw", args.pairs)
    n_photos = build_photos(shared / "photos", out / "photos")
    print(f"demo data in {out}: {n_train} training faces, {n_pairs} LFW pairs, {n_photos} photographs")


if __name__ == "__main__":
    main()
