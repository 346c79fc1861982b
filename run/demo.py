"""The end-to-end demo on the real faces in raw/demo_data: train, verify, dump, plot, summarise.

    bash run/demo.sh                 # sets up .venv, then runs this
    python -m run.demo --out demo_out --epochs 6

It trains a narrow iResNet with the MagFace loss from scratch on 4,837 CelebA faces (253 identities), then
measures 10-fold verification accuracy on 2,400 held-out LFW pairs for the trained model and for
the same network untrained, dumps features and magnitudes and draws the error-versus-reject curve.
Then it fine-tunes the converged public MobileFaceNet (raw/pretrained) with MagFace on the same faces, for
``--finetune-steps`` steps of the recipe that made the shipped quality model (run/recipes.py). The quality
half (run/demo_quality.py) damages the second face of every pair at a known severity, scores the three
models (trained from scratch, fine-tuned here, the shipped quality model raw/quality) on how their
magnitudes fall with damage, and the best one draws the damage ladder, the ERC on the damaged pairs and the
faces sorted by magnitude; where the full LFW set is found (../shared/data/lfw112) its accuracy on all
6,000 pairs is added. Everything lands in ``demo_summary.json``. On a GPU it uses the GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from run.recipes import QUALITY_FINETUNE, QUALITY_MODEL
from utils.cli import HelpFormatter

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "raw" / "demo_data"
# not in the repository: used when it is there (MAGFACE_SHARED_DATA as in the tests, else ../shared/data)
FULL_LFW = Path(os.environ.get("MAGFACE_SHARED_DATA", REPO.parent / "shared" / "data")) / "lfw112"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MagFace demo on real faces",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--arch", default="iresnet18_w32", help="backbone (a narrow iResNet trains on a CPU)")
    p.add_argument("--input-size", type=int, default=56, help="working resolution (faces are 112x112)")
    p.add_argument("--embedding-size", type=int, default=128, help="embedding dimension of the model trained")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the from-scratch training (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the from-scratch training")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up before the cosine decay")
    p.add_argument("--workers", type=int, default=1, help="data loading worker processes")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of the training runs and the damaged set")
    p.add_argument("--data", default=str(DATA), help="folder with celeba/train.list and lfw/{img,pair}.list")
    p.add_argument("--finetune-steps", type=int, default=75,
                   help="steps of MagFace fine-tuning of the pretrained MobileFaceNet (0: skip it)")
    p.add_argument("--reference", default=str(QUALITY_MODEL),
                   help="the shipped quality model, scored beside the demo's own ('none': leave it out)")
    p.add_argument("--lfw-full", default=str(FULL_LFW),
                   help="folder with the full LFW img.list/pair.list (6,000 pairs): the recommended model's "
                   "accuracy there is added when it exists ('none': skip)")
    return p


def verify(ckpt: Path, data: Path, out: Path, tag: str, device: str) -> tuple[dict, Path]:
    from eval import verification
    from inference import gen_feat
    from utils.atomic import finite_or_none

    feats = out / f"lfw_{tag}.npz"
    # fp32, not gen_feat's auto (bf16 where the CPU has it): the printed numbers are then the same on every machine
    gen_feat.extract(str(ckpt), str(data / "lfw" / "img.list"), str(feats),
                     gen_feat.FeatOptions(device=device, dtype="fp32", print_freq=1000))
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
        "--pth-save-fold", str(out / "train"), "--tensorboard", "0", "--overwrite",  # each demo run starts afresh
    ])
    return Path(result["checkpoints"][-1]), time.perf_counter() - t0


def finetune(args: argparse.Namespace, out: Path, device: str) -> tuple[Path, float]:
    """MagFace fine-tuning of the pretrained MobileFaceNet for --finetune-steps steps (one cosine epoch)."""
    from run import train as train_entry

    num_classes = 1 + max(int(line.split()[2]) for line in (Path(args.data) / "celeba" / "train.list").open())
    t0 = time.perf_counter()
    result = train_entry.main([
        *QUALITY_FINETUNE, "--train_list", str(Path(args.data) / "celeba" / "train.list"), "--last-fc-size",
        str(num_classes), "--epochs", "1", "--max-steps", str(args.finetune_steps), "--workers", str(args.workers),
        "--device", device, "--seed", str(args.seed), "--print-freq", "25", "--pth-save-fold", str(out / "finetune"),
        "--tensorboard", "0", "--overwrite",
    ])
    return Path(result["checkpoints"][-1]), time.perf_counter() - t0


def full_lfw_accuracy(ckpt: Path, folder: Path, out: Path, device: str) -> dict | None:
    """10-fold accuracy on all 6,000 LFW View-2 pairs when ``folder`` holds them, else None."""
    if not ((folder / "img.list").is_file() and (folder / "pair.list").is_file()):
        return None
    from eval import verification
    from inference import gen_feat

    feats = out / "lfw_full.npz"
    gen_feat.extract(str(ckpt), str(folder / "img.list"), str(feats),
                     gen_feat.FeatOptions(device=device, dtype="fp32", print_freq=1000))
    report = verification.run(feat_list=str(feats), pair_list=str(folder / "pair.list"))
    return {"accuracy": report["accuracy_mean"], "std": report["accuracy_std"], "pairs": report["num_pairs"],
            "checkpoint": str(ckpt)}


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
    from run.demo_quality import shown

    erc_png = out / "erc.png"
    erc = quality.run(str(feats), str(data / "lfw" / "pair.list"), fmr=1e-2, image_root=str(data / "lfw"))
    quality.publish(erc, out / "erc.json", erc_png, data=f"held-out LFW pairs of {shown(data / 'lfw')}",
                    model=f"trained: {args.arch} trained here from scratch for {args.epochs} epoch"
                          f"{'s' * (args.epochs != 1)} ({ckpt.name})")
    erc = finite_or_none(erc)  # as written (print_summary leaves out an undefined area)
    candidates, accuracy = {"trained": ckpt}, {"trained": after["accuracy_mean"]}
    finetune_s = 0.0
    if args.finetune_steps > 0:
        candidates["finetuned"], finetune_s = finetune(args, out, device)
        accuracy["finetuned"] = verify(candidates["finetuned"], data, out, "finetuned", device)[0]["accuracy_mean"]
    if reference is not None:
        candidates["shipped"] = reference
        accuracy["shipped"] = verify(reference, data, out, "shipped", device)[0]["accuracy_mean"]
    qual = quality_stage(candidates, data, out, device)
    for name, acc in accuracy.items():
        qual["quality_candidates"][name]["accuracy"] = acc
    full = None if args.lfw_full.lower() == "none" else \
        full_lfw_accuracy(Path(qual["quality_checkpoint"]), Path(args.lfw_full), out, device)
    summary = {
        "trained_accuracy": after["accuracy_mean"], "trained_accuracy_std": after["accuracy_std"],
        "untrained_accuracy": before["accuracy_mean"], "untrained_accuracy_std": before["accuracy_std"],
        "protocol": after.get("protocol", "magface"), "num_pairs": after.get("num_pairs"),
        "erc_fmr": erc.get("fmr"), "erc_auc": erc.get("auc"), "train_wall_s": round(train_s, 1),
        "finetune_wall_s": round(finetune_s, 1), "finetune_steps": args.finetune_steps,
        "lfw_accuracy_full": None if full is None else full["accuracy"],
        "lfw_accuracy_full_std": None if full is None else full["std"],
        "lfw_full_note": "all 6,000 LFW View-2 pairs, the recommended quality model" if full is not None else
        f"not measured: no img.list/pair.list under {args.lfw_full} (the full LFW set is not in the repository)",
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
    if s["lfw_accuracy_full"] is not None:
        print(f"  {s['quality_model']} on all 6,000 LFW pairs: {100 * s['lfw_accuracy_full']:.2f}% +- "
              f"{100 * s['lfw_accuracy_full_std']:.2f}")
    print(f"training {s['train_wall_s']}s, fine-tuning {s['finetune_wall_s']}s, total {s['wall_s']}s on "
          f"{s['device']}")
    drawn = {"erc_plot": f"trained {s['arch']}"} | dict.fromkeys(("damage_ladder", "damage_erc_plot", "face_grid"),
                                                                   f"{s['quality_model']} model")
    print("pictures: " + "\n          ".join(f"{s[k]}  (drawn with the {who})" for k, who in drawn.items()))
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
