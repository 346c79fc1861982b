"""The end-to-end demo on the real faces in raw/demo_data: train, verify, dump, plot, summarise.

    bash run/demo.sh                 # sets up .venv, then runs this
    python -m run.demo --out demo_out --epochs 6

It trains a narrow iResNet with the MagFace loss on 4,837 CelebA faces (253 identities), then
measures 10-fold verification accuracy on 2,400 held-out LFW pairs for the trained model and for
the same network untrained, dumps features and magnitudes, draws the error-versus-reject curve and
a grid of faces sorted by magnitude, and writes ``demo_summary.json``. On a GPU it uses the GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "raw" / "demo_data"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MagFace demo on real faces",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--arch", default="iresnet18_w32", help="backbone (a narrow iResNet trains on a CPU)")
    p.add_argument("--input-size", type=int, default=56, help="working resolution (faces are 112x112)")
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DATA), help="folder with celeba/train.list and lfw/{img,pair}.list")
    return p


def _run(module_main, argv: list[str]) -> None:
    code = module_main(argv)
    if isinstance(code, int) and code != 0:
        raise SystemExit(f"step failed ({module_main.__module__} {' '.join(argv)}): exit {code}")


def verify(ckpt: Path, data: Path, out: Path, tag: str, device: str) -> tuple[dict, Path]:
    from eval import verification
    from inference import gen_feat

    feats = out / f"lfw_{tag}.npz"
    gen_feat.main(["--resume", str(ckpt), "--inf_list", str(data / "lfw" / "img.list"), "--feat_list", str(feats),
                   "--device", device, "--print-freq", "1000"])
    report = out / f"verification_{tag}.json"
    _run(verification.main, ["--feat-list", str(feats), "--pair-list", str(data / "lfw" / "pair.list"),
                             "--json", str(report)])
    return json.loads(report.read_text()), feats


def untrained_checkpoint(args: argparse.Namespace, path: Path) -> None:
    from models import build_backbone
    from utils.checkpoint import save_released

    torch.manual_seed(args.seed)
    model = build_backbone(args.arch, args.embedding_size, input_size=args.input_size)
    save_released(path, model, None, 0, args.arch, config={"input_size": args.input_size})


def face_grid(feats_npz: Path, data: Path, out: Path, count: int = 32) -> Path:
    """A grid of faces at evenly spaced magnitude quantiles, lowest first."""
    from inference.toy_example import render_magnitude_grid

    z = np.load(feats_npz)
    paths, mags = [str(p) for p in z["paths"]], z["magnitudes"]
    unique = {p: i for i, p in enumerate(paths)}
    order = sorted(unique.values(), key=lambda i: mags[i])
    pick = [order[int(round(q))] for q in np.linspace(0, len(order) - 1, count)]
    images = np.stack([cv2.imread(str(data / "lfw" / paths[i])) for i in pick])
    return render_magnitude_grid(images, mags[pick], out / "faces_by_magnitude.png", cols=8)


def train(args: argparse.Namespace, out: Path, device: str) -> tuple[Path, float]:
    from run import train as train_entry

    num_classes = 1 + max(int(line.split()[2]) for line in (Path(args.data) / "celeba" / "train.list").open())
    t0 = time.perf_counter()
    result = train_entry.main([
        "--arch", args.arch, "--input-size", str(args.input_size), "--embedding-size", str(args.embedding_size),
        "--train_list", str(Path(args.data) / "celeba" / "train.list"), "--last-fc-size", str(num_classes),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--schedule", "cosine", "--warmup-epochs", str(args.warmup_epochs), "--workers", str(args.workers),
        "--device", device, "--seed", str(args.seed), "--print-freq", "25", "--pth-save-epoch", str(args.epochs),
        "--pth-save-fold", str(out / "train"), "--tensorboard", "0",
    ])
    return Path(result["checkpoints"][-1]), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    t0 = time.perf_counter()
    out, data = Path(args.out).resolve(), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    untrained = out / "untrained.pth"
    untrained_checkpoint(args, untrained)
    before, _ = verify(untrained, data, out, "untrained", device)
    ckpt, train_s = train(args, out, device)
    after, feats = verify(ckpt, data, out, "trained", device)
    from eval import quality

    erc_json, erc_png = out / "erc.json", out / "erc.png"
    _run(quality.main, ["--feat-list", str(feats), "--pair-list", str(data / "lfw" / "pair.list"),
                        "--image-root", str(data / "lfw"), "--fmr", "1e-2", "--plot", str(erc_png),
                        "--json", str(erc_json)])
    grid = face_grid(feats, data, out)
    erc = json.loads(erc_json.read_text())
    summary = {
        "trained_accuracy": after["accuracy_mean"], "trained_accuracy_std": after["accuracy_std"],
        "untrained_accuracy": before["accuracy_mean"], "untrained_accuracy_std": before["accuracy_std"],
        "protocol": after.get("protocol", "magface"), "num_pairs": after.get("num_pairs"),
        "erc_fmr": erc.get("fmr"), "erc_auc": erc.get("auc"), "train_wall_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1), "device": device, "arch": args.arch,
        "input_size": args.input_size, "epochs": args.epochs, "checkpoint": str(ckpt),
        "features": str(feats), "erc_plot": str(erc_png), "face_grid": str(grid),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, out)
    return summary


def print_summary(s: dict, out: Path) -> None:
    print("\n=== MagFace demo summary ===")
    print(f"verification on {s['num_pairs']} held-out LFW pairs ({s['protocol']} protocol, 10 folds):")
    print(f"  untrained {s['arch']}: {100 * s['untrained_accuracy']:.2f}% +- {100 * s['untrained_accuracy_std']:.2f}")
    print(f"  trained   {s['arch']}: {100 * s['trained_accuracy']:.2f}% +- {100 * s['trained_accuracy_std']:.2f}")
    aucs = ", ".join(f"{k} {v:.4f}" for k, v in (s["erc_auc"] or {}).items() if v is not None)
    print(f"error-versus-reject area (FNMR at FMR {s['erc_fmr']}, lower is better): {aucs}")
    print(f"training {s['train_wall_s']}s, total {s['wall_s']}s on {s['device']}")
    print(f"pictures: {s['erc_plot']}\n          {s['face_grid']}")
    print(f"summary:  {out / 'demo_summary.json'}")


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, None, "demo.py"))
