"""The end-to-end demo on the real faces in raw/demo_data: train, verify, dump, plot, summarise.

    bash run/demo.sh                 # sets up .venv, then runs this
    python -m run.demo --out demo_out --epochs 6

It trains a narrow iResNet with the MagFace loss on 4,837 CelebA faces (253 identities), then
measures 10-fold verification accuracy on 2,400 held-out LFW pairs for the trained model and for
the same network untrained, dumps features and magnitudes and draws the error-versus-reject curve.
Then the quality half (run/demo_quality.py): the second face of every pair is damaged at a known
severity, the trained model and the shipped reference model (raw/reference) are scored on how their
magnitudes fall with damage, and the better one draws the damage ladder, the ERC on the damaged pairs
and the faces sorted by magnitude. Everything lands in ``demo_summary.json``. On a GPU it uses the GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "raw" / "demo_data"
REFERENCE = REPO / "raw" / "reference" / "magface_iresnet18_w32_56.pth"


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
    p.add_argument("--reference", default=str(REFERENCE),
                   help="a second checkpoint scored for quality beside the trained one ('none': only the trained one)")
    return p


def verify(ckpt: Path, data: Path, out: Path, tag: str, device: str) -> tuple[dict, Path]:
    from eval import verification
    from inference import gen_feat
    from utils.atomic import finite_or_none

    feats = out / f"lfw_{tag}.npz"
    gen_feat.extract(str(ckpt), str(data / "lfw" / "img.list"), str(feats),
                     gen_feat.FeatOptions(device=device, print_freq=1000))
    report = verification.run(feat_list=str(feats), pair_list=str(data / "lfw" / "pair.list"))
    verification.publish(report, out / f"verification_{tag}.json")
    return finite_or_none(report), feats  # as written: an undefined metric is None, not NaN


def untrained_checkpoint(args: argparse.Namespace, path: Path) -> None:
    from models import build_backbone
    from models.checkpoint import save_released

    torch.manual_seed(args.seed)
    model = build_backbone(args.arch, args.embedding_size, input_size=args.input_size)
    save_released(path, model, None, 0, args.arch, config={"input_size": args.input_size})


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


def reference_of(args: argparse.Namespace) -> Path | None:
    """The --reference checkpoint, checked before any work starts; None for 'none'."""
    if args.reference.lower() == "none":
        return None
    reference = Path(args.reference)
    if not reference.is_file():
        raise FileNotFoundError(f"--reference {reference}: no such checkpoint (pass --reference none to skip it)")
    return reference


def main(argv: list[str] | None = None) -> dict:
    from eval import quality
    from run.demo_quality import quality_stage
    from utils.atomic import finite_or_none, write_json

    args = get_args_parser().parse_args(argv)
    t0 = time.perf_counter()
    out, data = Path(args.out).resolve(), Path(args.data)
    reference = reference_of(args)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    untrained = out / "untrained.pth"
    untrained_checkpoint(args, untrained)
    before, _ = verify(untrained, data, out, "untrained", device)
    ckpt, train_s = train(args, out, device)
    after, feats = verify(ckpt, data, out, "trained", device)
    erc_png = out / "erc.png"
    erc = quality.run(str(feats), str(data / "lfw" / "pair.list"), fmr=1e-2, image_root=str(data / "lfw"))
    quality.publish(erc, out / "erc.json", erc_png)
    erc = finite_or_none(erc)  # as written (print_summary leaves out an undefined area)
    candidates, accuracy = {"trained": ckpt}, {"trained": after["accuracy_mean"]}
    if reference is not None:
        candidates["reference"] = reference
        accuracy["reference"] = verify(reference, data, out, "reference", device)[0]["accuracy_mean"]
    qual = quality_stage(candidates, data, out, device)
    for name, acc in accuracy.items():
        qual["quality_candidates"][name]["accuracy"] = acc
    summary = {
        "trained_accuracy": after["accuracy_mean"], "trained_accuracy_std": after["accuracy_std"],
        "untrained_accuracy": before["accuracy_mean"], "untrained_accuracy_std": before["accuracy_std"],
        "protocol": after.get("protocol", "magface"), "num_pairs": after.get("num_pairs"),
        "erc_fmr": erc.get("fmr"), "erc_auc": erc.get("auc"), "train_wall_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1), "device": device, "arch": args.arch,
        "input_size": args.input_size, "epochs": args.epochs, "checkpoint": str(ckpt),
        "features": str(feats), "erc_plot": str(erc_png), **qual,
    }
    write_json(out / "demo_summary.json", summary, nan_as_null=True)
    print_summary(summary, out)
    return summary


def print_summary(s: dict, out: Path) -> None:
    print("\n=== MagFace demo summary ===")
    print(f"verification on {s['num_pairs']} held-out LFW pairs ({s['protocol']} protocol, 10 folds):")
    print(f"  untrained {s['arch']}: {100 * s['untrained_accuracy']:.2f}% +- {100 * s['untrained_accuracy_std']:.2f}")
    print(f"  trained   {s['arch']}: {100 * s['trained_accuracy']:.2f}% +- {100 * s['trained_accuracy_std']:.2f}")
    aucs = ", ".join(f"{k} {v:.4f}" for k, v in (s["erc_auc"] or {}).items() if v is not None)
    print(f"error-versus-reject area (FNMR at FMR {s['erc_fmr']}, lower is better): {aucs}")
    print_quality(s)
    print(f"training {s['train_wall_s']}s, total {s['wall_s']}s on {s['device']}")
    pictures = (s[k] for k in ("erc_plot", "damage_ladder", "damage_erc_plot", "face_grid"))
    print("pictures: " + "\n          ".join(pictures))
    print(f"summary:  {out / 'demo_summary.json'}")


def print_quality(s: dict) -> None:
    print("magnitude as quality, on the same pairs with the second face damaged (blur, downscale, jpeg, dark,")
    print("bright, noise, occlusion at severities in [0, 1); Spearman rho of magnitude vs severity, -1 is ideal):")
    for name, c in s["quality_candidates"].items():
        rho, erc = c["spearman"], next(iter(c["erc_auc"].values()))
        kinds = ", ".join(f"{k} {v:+.2f}" for k, v in rho.items() if k != "overall")
        print(f"  {name:9s} clean {100 * c['accuracy']:.2f}%  rho {rho['overall']:+.3f} ({kinds})")
        print(f"            ERC area on damaged pairs: magnitude {erc['magnitude']:.4f}, random {erc['random']:.4f}, "
              f"sharpness {erc['sharpness']:.4f}")
    print(f"  pictures drawn with the {s['quality_model']} model ({s['quality_checkpoint']})")


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, None, "demo.py"))
