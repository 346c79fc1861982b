"""CPU inference end to end as processes: the seed's gen_feat, ours (fp32, bf16, int8), the torch-free path.

    python -m bench.bench_deploy [--arch iresnet50] [--limit 256] [--demo-ckpt CKPT] [--json out.json]

Each row is one command run as a fresh process and timed from start to exit (interpreter, imports, model load,
decode, compute, writing), on the first ``--limit`` faces of an aligned LFW list, with a released-format
checkpoint of random weights (``bench.bench_gen_feat.random_model``): the seed's procedure
(``bench/seed_gen_feat.py``), ``python inference/gen_feat.py`` with the seed's flags and text output at fp32,
at the default ``--dtype auto`` (the row name says what it picks here), bf16 and int8 (int8 twice: the first
run of a checkpoint quantizes and calibrates, the second uses the cached file), and ``python -m
inference.ort_embed`` on the exported fp32 and the cached int8 ONNX files. The ONNX rows run on what ``auto``
picks here (OpenVINO on a CPU with AMX, else onnxruntime; the row names say which), with onnxruntime rows
beside them for comparison. Parity: relative error of fp32 against the seed, minimum cosine to our fp32.
Breakdown: start-up (``import``) times of each entry point, model load, decoding, and the compute rate
in-process. ``--demo-ckpt``: the 10-fold accuracy (MagFace protocol) of that checkpoint on the 2,400 demo
LFW pairs at fp32 and int8. Sizes: installed size of the packages each path needs.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import format_machine, format_rows, load_average, machine_info
from utils.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
COLUMNS = ("method", "seconds", "img_s", "vs_seed", "rel_err_vs_seed", "min_cos_vs_fp32", "load_1min")
STARTUP = {"python (nothing)": "pass", "seed (torch, torchvision)": "import torch, torchvision",
           "gen_feat imports (torch path)": "import inference.gen_feat, inference.feat_torch",
           "gen_feat imports (int8 / onnxruntime)": "import inference.gen_feat, inference.int8, inference.ort_embed",
           "ort_embed imports": "import inference.ort_embed"}
PACKAGES = {"torch path": ("torch", "torchvision", "numpy", "opencv-python-headless"),
            "torch-free path": ("onnxruntime", "numpy", "opencv-python-headless"),
            "torch-free path on openvino": ("openvino", "numpy", "opencv-python-headless")}


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds


def installed_mb(dist: str) -> float:
    files = md.distribution(dist).files or []
    return sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 2**20


def load_feats(path: Path) -> np.ndarray:
    from utils.feature_io import load_feature_file

    return load_feature_file(path).features


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def breakdown(ckpt: Path, arch: str, paths: list[str]) -> dict:
    """Where a gen_feat run spends its time, measured piece by piece (in this process, after warm-up)."""
    import torch

    from inference.extract import embed_batch, prepare_model
    from models.checkpoint import load_backbone
    from utils.convention import read_aligned_face

    out = {name: min(timed([PY, "-c", code]) for _ in range(2)) for name, code in STARTUP.items()}
    t0 = time.perf_counter()
    model, conv, _ = load_backbone(ckpt, arch, "cpu")
    out["model load (torch.load + build)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = prepare_model(model, "cpu")
    out["fold BN + channels-last"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faces = np.stack([read_aligned_face(p) for p in paths])
    out[f"decode {len(paths)} faces"] = time.perf_counter() - t0
    x = torch.from_numpy(faces[:64].transpose(0, 3, 1, 2).copy())
    embed_batch(fast, x[:8], conv, channels_last=True)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        fast = prepare_model(model, "cpu", dtype=dtype)
        t0 = time.perf_counter()
        embed_batch(fast, x, conv, dtype, channels_last=True)
        out[f"compute {name}, img/s (batch 64)"] = 64 / (time.perf_counter() - t0)
    return out


def demo_accuracy(ckpt: str, tmp: Path, env: dict) -> dict:
    """10-fold LFW accuracy (MagFace protocol) of the demo checkpoint's fp32 and int8 features."""
    from eval.verification import features_pairs, kfold_accuracy

    lst, pairs = ROOT / "raw/demo_data/lfw/img.list", ROOT / "raw/demo_data/lfw/pair.list"
    result = {}
    for dtype in ("fp32", "int8"):
        out = tmp / f"demo_{dtype}.npz"
        result[f"{dtype}_seconds"] = timed([PY, "inference/gen_feat.py", "--resume", ckpt, "--inf_list", str(lst),
                                            "--feat_list", str(out), "--dtype", dtype], env)
        e0, e1, same = features_pairs(str(out), str(pairs), None)
        result[f"{dtype}_accuracy"] = float(kfold_accuracy(e0, e1, same).accuracies.mean())
        result[f"{dtype}_feats"] = load_feats(out)
    from inference.onnx_model import choose_runtime

    result["int8_runtime"] = choose_runtime("auto")
    result["min_cos_int8_vs_fp32"] = cos_min(result.pop("int8_feats"), result.pop("fp32_feats"))
    return result


def get_args_parser() -> argparse.ArgumentParser:
    from bench.bench_gen_feat import DEFAULT_LIST

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="iresnet50")
    p.add_argument("--list", default=str(DEFAULT_LIST), help="aligned-face list (first token = path)")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--demo-ckpt", default=None, help="a trained demo checkpoint: LFW accuracy fp32 vs int8")
    p.add_argument("--json", default=None)
    return p


def run_rows(ckpt: Path, lst: Path, tmp: Path, arch: str, env: dict) -> tuple[list[dict], dict[str, Path]]:
    gen = [PY, "inference/gen_feat.py", "--arch", arch, "--resume", str(ckpt), "--inf_list", str(lst)]
    from inference.feat_options import FeatOptions, choose_backend
    from inference.onnx_model import choose_runtime
    from utils.cpu_info import choose_precision

    auto = f"auto: {choose_runtime('auto')}"  # what --onnx-runtime / --runtime auto picks on this machine
    picked = f"{choose_precision('auto', 'cpu').dtype}, {choose_backend(FeatOptions())[0]}"  # the default here
    onnx = tmp / "model.onnx"
    subprocess.run([PY, "-m", "inference.export_onnx", "--resume", str(ckpt), "--out", str(onnx)], cwd=ROOT,
                   check=True, capture_output=True)
    runs = [("seed gen_feat procedure (-b 256 -j 4)", [PY, "bench/seed_gen_feat.py", "--arch", arch, "--resume",
                                                       str(ckpt), "--inf_list", str(lst)], "seed.txt"),
            ("gen_feat --dtype fp32", gen + ["--dtype", "fp32"], "fp32.txt"),
            (f"gen_feat default (auto: {picked})", gen, "auto.txt"),
            ("gen_feat --dtype bf16", gen + ["--dtype", "bf16"], "bf16.txt"),
            (f"gen_feat --dtype int8 (first run: quantize; {auto})", gen + ["--dtype", "int8"], "int8_cold.txt"),
            (f"gen_feat --dtype int8 (cached; {auto})", gen + ["--dtype", "int8"], "int8.txt"),
            ("gen_feat --dtype int8 --onnx-runtime onnxruntime (cached)",
             gen + ["--dtype", "int8", "--onnx-runtime", "onnxruntime"], "int8_ort.txt"),
            (f"gen_feat --backend onnxruntime (first run: export; {auto})", gen + ["--backend", "onnxruntime"],
             "ortb_cold.txt"),
            (f"gen_feat --backend onnxruntime (cached; {auto})", gen + ["--backend", "onnxruntime"], "ortb.txt"),
            (f"ort_embed fp32 (no torch; {auto})", [PY, "-m", "inference.ort_embed", "--onnx", str(onnx),
                                                    "--inf_list", str(lst)], "ort_fp32.txt")]
    rows, outs = [], {}
    for name, cmd, out in runs:
        outs[name] = tmp / out
        seconds = timed(cmd + ["--feat_list", str(outs[name])], env)
        rows.append({"method": name, "seconds": seconds, "load_1min": load_average()[0]})
    int8_onnx = next(Path(env["MAGFACE_CACHE"]).glob("*.int8.onnx"))
    for name, extra in ((f"ort_embed int8 (no torch; {auto})", []),
                        ("ort_embed int8 (no torch) --runtime onnxruntime", ["--runtime", "onnxruntime"]),
                        ("ort_embed int8 (no torch) --runtime openvino", ["--runtime", "openvino"])):
        outs[name] = tmp / f"ort_int8_{'_'.join(extra[1:]) or 'auto'}.txt"
        rows.append({"method": name, "load_1min": load_average()[0],
                     "seconds": timed([PY, "-m", "inference.ort_embed", "--onnx", str(int8_onnx), "--inf_list",
                                       str(lst), "--feat_list", str(outs[name]), *extra], env)})
    return rows, outs


def main(argv: list[str] | None = None) -> dict:
    from bench.bench_gen_feat import random_model, write_limited_list
    from models.checkpoint import save_released

    args = get_args_parser().parse_args(argv)
    info = machine_info()
    print(format_machine(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"MAGFACE_CACHE": str(tmp / "cache")}
        ckpt = tmp / f"{args.arch}.pth"
        save_released(ckpt, random_model(args.arch), None, 0, args.arch)
        paths = write_limited_list(Path(args.list), tmp / "img.list", args.limit)
        rows, outs = run_rows(ckpt, tmp / "img.list", tmp, args.arch, env)
        seed, fp32 = load_feats(outs[rows[0]["method"]]), load_feats(outs["gen_feat --dtype fp32"])
        for row in rows:
            feats = load_feats(outs[row["method"]])
            row.update(img_s=len(paths) / row["seconds"], vs_seed=rows[0]["seconds"] / row["seconds"],
                       rel_err_vs_seed=float(np.abs(feats - seed).max() / np.abs(seed).max()),
                       min_cos_vs_fp32=cos_min(feats, fp32))
        parts = breakdown(ckpt, args.arch, paths)
        demo = demo_accuracy(args.demo_ckpt, tmp, env) if args.demo_ckpt else None
    sizes = {path: {d: round(installed_mb(d), 1) for d in dists} for path, dists in PACKAGES.items()}
    print(f"\nend to end as processes: {args.arch} (random weights), {len(paths)} faces of {args.list}, text output")
    print(format_machine(info))
    print(format_rows(rows, COLUMNS))
    print("\nwhere the time goes (seconds unless img/s):")
    print("".join(f"  {k}: {v:.2f}\n" for k, v in parts.items()), end="")
    for path, d in sizes.items():
        print(f"installed size, {path}: {sum(d.values()):.0f} MB ({', '.join(f'{k} {v:.0f}' for k, v in d.items())})")
    if demo:
        print(f"demo checkpoint {args.demo_ckpt}, 2,400 LFW pairs, 10-fold accuracy: fp32 {demo['fp32_accuracy']:.4f}, "
              f"int8 {demo['int8_accuracy']:.4f} ({demo['int8_runtime']}; min cosine int8 vs fp32 over 4,800 faces "
              f"{demo['min_cos_int8_vs_fp32']:.4f})")
    report = {"machine": info, "args": vars(args), "results": rows, "breakdown": parts, "sizes_mb": sizes,
              "demo": demo}
    if args.json:
        write_json(args.json, report, default=str)
    return report


if __name__ == "__main__":
    main()
