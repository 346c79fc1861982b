"""Convert the public MobileFaceNet weights into this project's released checkpoint layout.

    python -m models.convert_mobilefacenet mobilefacenet.pt raw/pretrained/mobilefacenet.pth

The source is the ``weights/mobilefacenet.pt`` state dict of the Apache-2.0 repository named in
``raw/pretrained/README.md``. Its keys are mapped onto ``models.mobilefacenet.MobileFaceNet`` strictly (no key
missing, none left over), loaded into the module as a check, and written as a backbone-only checkpoint
(``module.features.*``, arch ``mobilefacenet``, input convention ``imagenet``) that ``load_backbone``,
``inference.gen_feat --resume``, ``inference.assess`` and ``--pretrained`` read.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from models.checkpoint import load_backbone_state, read_checkpoint, save_released
from models.mobilefacenet import INPUT_SIZE, MobileFaceNet, convert_public_state
from utils.cli import run_cli
from utils.convention import IMAGENET


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(src: str | Path, dst: str | Path) -> dict:
    """Write ``dst`` from the public state dict ``src``; returns what was written (for the README)."""
    obj = read_checkpoint(src)
    state = convert_public_state(obj.get("state_dict", obj), str(src))
    emb = int(state["fc.weight"].shape[0])
    model = MobileFaceNet(embedding_size=emb)
    load_backbone_state(model, state, str(src))
    config = {"arch": "mobilefacenet", "embedding_size": emb, "input_size": INPUT_SIZE,
              "input_convention": "imagenet", "source": Path(src).name, "source_sha256": sha256_of(src)}
    save_released(dst, model, None, epoch=0, arch="mobilefacenet", config=config, convention=IMAGENET)
    return config | {"sha256": sha256_of(dst), "bytes": Path(dst).stat().st_size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the public weights/mobilefacenet.pt (a PyTorch state dict)")
    parser.add_argument("dst", help="output checkpoint (released layout)")
    args = parser.parse_args(argv)
    info = convert(args.src, args.dst)
    print(f"wrote {args.dst}: {info['bytes']} bytes, sha256 {info['sha256']} (source sha256 {info['source_sha256']})")


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "convert_mobilefacenet"))
