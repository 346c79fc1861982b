"""The seed's ``gen_feat.py`` procedure as a process: the baseline of the end-to-end benchmarks.

What the seed's script does with its defaults, reproduced with this repository's backbone (same
architecture and weights): it imports torch and torchvision, builds the model, loads the checkpoint,
feeds a DataLoader of ``--workers`` (4) processes that decode each face with cv2 and pass it and a
mirrored copy it never uses through torchvision's ToTensor + Normalize(0, 1), runs the plain fp32 model
in ``no_grad`` and writes the features as text, value by value.

    python bench/seed_gen_feat.py --arch iresnet50 --resume CKPT --inf_list L --feat_list F [-b 256] [-j 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402,F401  (the seed imports it at start-up: part of its cost)
from torch import nn  # noqa: E402


class _SeedProcedureImages(torch.utils.data.Dataset):
    """What the seed's inference dataset does per image: cv2 decode, a mirrored copy, and both through
    torchvision's ToTensor + Normalize(0, 1), although only the first is embedded."""

    def __init__(self, paths: list[str]) -> None:
        from torchvision import transforms
        self.paths = paths
        self.to_tensor = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(mean=[0.0] * 3, std=[1.0] * 3)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = cv2.imread(self.paths[i])
        return [self.to_tensor(img), self.to_tensor(cv2.flip(img, 1))], self.paths[i]


@torch.no_grad()
def seed_procedure_features(model: nn.Module, paths: list[str], batch_size: int, device: torch.device,
                            workers: int, txt_out: Path) -> np.ndarray:
    """The seed's gen_feat.py procedure with its defaults: a DataLoader of --workers processes (4) over
    the dataset above, the model in DataParallel, and features written as text value by value."""
    loader = torch.utils.data.DataLoader(_SeedProcedureImages(paths), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda", shuffle=False)
    model = nn.DataParallel(model) if device.type == "cuda" else model
    out = []
    with open(txt_out, "w") as f:
        for (x, _mirrored), batch_paths in loader:
            feats = model(x.to(device)).data.cpu().numpy()
            out.append(feats)
            for feat, path in zip(feats, batch_paths, strict=True):
                f.write(path + " " + "".join(f"{e} " for e in feat) + "\n")
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=None)
    p.add_argument("--resume", required=True)
    p.add_argument("--inf_list", required=True)
    p.add_argument("--feat_list", required=True)
    p.add_argument("-b", "--batch_size", type=int, default=256)
    p.add_argument("-j", "--workers", type=int, default=4)
    args = p.parse_args(argv)
    from models.checkpoint import load_backbone

    model, _, _ = load_backbone(args.resume, args.arch, "cpu")
    paths = [line.split()[0] for line in Path(args.inf_list).read_text().splitlines() if line.strip()]
    seed_procedure_features(model, paths, args.batch_size, torch.device("cpu"), args.workers, Path(args.feat_list))


if __name__ == "__main__":
    main()
