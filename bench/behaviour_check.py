"""Behaviour check for a restructuring: run the same commands in a reference tree and in a changed tree, compare.

    git worktree add --detach /tmp/ref <commit before the change>      # the reference (its .venv: a symlink)
    python -m bench.behaviour_check --ref /tmp/ref --tree . --work /tmp/bc [--only train_single,eval]

The scenarios cover training (single process with validation and vis_mag, a resume, 2-rank gloo DDP, the fused
head in bf16), gen_feat on every path, the evaluations, assess, the ONNX export and runtime, calibration and
``dataloader.prepare``, on small subsets of ``../shared/data`` (``--data``). The reference's outputs are cached
under WORK/ref_out and reused by later checks of other trees; ``--refresh-ref`` runs them again.

Outputs are compared exactly: .pth tensor for tensor (and their other entries), .npz / .npy arrays, JSON,
text (logs, csv, tables) after removing what legitimately differs between two runs: timestamps, throughput
and durations, the trees' and output folders' paths.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BC = Path()  # --work; set by main
REF_TREE = Path()  # --ref
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # --data
DATA = Path()
PY = ".venv/bin/python"
CKPT = "raw/quality/magface_mobilefacenet.pth"

TRAIN = ("--arch iresnet18_w16 --input-size 56 --embedding-size 64 --last-fc-size 253 --train_list {D}/train.list "
         "--batch-size 32 --device cpu --workers 2 --seed 3 --deterministic --degrade-prob 0.3 --dropout 0.1 "
         "--grad-clip 5 --print-freq 1")
HOOKS = "--val-bin {D}/small.bin --val-every 4 --save-best --vis_mag 1 --vis-mag-start 0 --vis-mag-every 3"

SCENARIOS: dict[str, list[str]] = {
    "train_single": [f"{PY} run/train.py {TRAIN} {HOOKS} --epochs 2 --pth-save-fold {{O}}/run"],
    "train_resume": [f"{PY} -m run.train {TRAIN} --epochs 2 --max-steps 5 --save-every-steps 5 "
                     "--pth-save-fold {O}/run",
                     f"{PY} -m run.train {TRAIN} --epochs 2 --resume auto --pth-save-fold {{O}}/run"],
    "train_ddp": [f".venv/bin/torchrun --nproc_per_node 2 --master_port {{PORT}} run/train_dist.py {TRAIN} {HOOKS} "
                  "--epochs 2 --pth-save-fold {O}/run"],
    "train_fused_bf16": [f"{PY} -m run.train {TRAIN} --head-impl fused --amp bf16 --max-steps 4 "
                         "--pth-save-fold {O}/run"],
    "gen_feat": [f"{PY} -m inference.gen_feat --resume {CKPT} --inf_list {{D}}/img.list --feat_list {{O}}/t32.npz "
                 "--backend torch --dtype fp32",
                 f"{PY} -m inference.gen_feat --resume {CKPT} --inf_list {{D}}/img.list --feat_list {{O}}/tbf.npz "
                 "--backend torch --dtype bf16 --flip",
                 f"{PY} -m inference.gen_feat --resume {CKPT} --inf_list {{D}}/img.list --feat_list {{O}}/auto.npz",
                 f"{PY} -m inference.gen_feat --resume {CKPT} --inf_list {{D}}/img.list --feat_list {{O}}/onnx.npz "
                 "--backend onnxruntime --dtype fp32",
                 f"{PY} -m inference.gen_feat --resume {{REFTRAIN}} --inf_list {{D}}/img.list "
                 "--feat_list {O}/int8.npz "
                 "--dtype int8 --calib-list {D}/img.list --calib-count 32",
                 f"{PY} inference/gen_feat.py --arch mobilefacenet --inf_list {{D}}/img.list "
                 "--feat_list {O}/seed.txt "
                 f"--resume {CKPT} -b 64 -j 0 --embedding_size 128 -p 100 --cpu-mode --dist 1"],
    "eval": [f"{PY} -m eval.verification --feat-list {{REFFEAT}} --pair-list {{D}}/pair.list --json {{O}}/ver.json",
             f"{PY} -m eval.verification --bin {{D}}/small.bin --resume {CKPT} --dtype fp32 --json {{O}}/bin.json",
             f"{PY} -m eval.quality --feat-list {{REFFEAT}} --pair-list {{D}}/pair.list --fmr 1e-2 --json {{O}}/q.json "
             "--plot {O}/q.png",
             f"{PY} -m eval.cluster --feat-list {{REFFEAT}} --labels-from-dirs --json {{O}}/cluster.json",
             f"{PY} -m eval.bin_io --img-list {{D}}/img.list --pair-list {{D}}/pair.list --out {{O}}/packed.bin",
             f"{PY} -m eval.damage make --img-list {{D}}/img.list --pair-list {{D}}/pair.list --out {{O}}/dmg",
             f"{PY} -m inference.gen_feat --resume {CKPT} --inf_list {{O}}/dmg/img.list --feat_list {{O}}/dmg.npz "
             "--backend torch --dtype fp32",
             f"{PY} -m eval.damage score --set {{O}}/dmg --feat-list {{O}}/dmg.npz --json {{O}}/damage.json"],
    "assess": [f"{PY} -m inference.assess {{D}}/photos --out {{O}}/q --save-crops --save-features --dtype fp32 "
               "--no-progress",
               f"{PY} -m inference.export_onnx --resume {CKPT} --out {{O}}/m.onnx",
               f"{PY} -m inference.ort_embed --onnx {{O}}/m.onnx --inf_list {{D}}/img.list --feat_list {{O}}/ort.npz "
               "--scores {O}/ort.csv",
               f"{PY} -m inference.calibrate --resume {CKPT} --inf_list {{D}}/img.list --out {{O}}/cal.json",
               f"{PY} -m dataloader.prepare --photos {{D}}/people --out {{O}}/set --rec --no-progress"],
}

VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"), "<TIME>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<CLOCK>"),
    (re.compile(r"[\d.,]+\s*(?:img/s|images/s|faces/s|photos/s|it/s|s/it|samples/s|ms|MiB/s)"), "<RATE>"),
    (re.compile(r"\b(?:eta|ETA|elapsed|took|in|time)[ =:]+[\d.:hms ]+s?\b"), "<DUR>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s*s\b"), "<SECS>"),
    (re.compile(r"pid \d+"), "pid <PID>"),
    (re.compile(r"port \d+|:\d{4,5}\b"), "<PORT>"),
]


def prepare_data() -> None:
    if (DATA / "done").exists():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    train = (SHARED / "celeba112/train.list").read_text().splitlines()[:192]
    (DATA / "train.list").write_text("".join(f"{SHARED}/celeba112/{ln}\n" for ln in train))
    all_imgs = (SHARED / "lfw112/img.list").read_text().splitlines()
    pair_lines = (SHARED / "lfw112/pair.list").read_text().splitlines()
    pairs = [ln.split() for ln in pair_lines[:60] + pair_lines[300:360]]
    index: dict[int, int] = {}
    for i, j, _ in pairs:
        for k in (int(i), int(j)):
            index.setdefault(k, len(index))
    (DATA / "img.list").write_text("".join(f"{SHARED}/lfw112/{all_imgs[k]}\n" for k in index))
    (DATA / "pair.list").write_text("".join(f"{index[int(i)]} {index[int(j)]} {s}\n" for i, j, s in pairs))
    photos = DATA / "photos"
    photos.mkdir()
    for ln in (SHARED / "photos/landmarks.txt").read_text().splitlines()[:24]:
        rel = ln.split()[0]
        (photos / rel.replace("/", "__")).symlink_to(SHARED / "photos" / rel)
    people = DATA / "people"
    ids: dict[str, list[str]] = {}
    for ln in (SHARED / "photos/landmarks.txt").read_text().splitlines():
        rel = ln.split()[0]
        if rel.startswith("lfw/"):
            ids.setdefault(rel.split("/")[1], []).append(rel)
    for name, rels in sorted(ids.items())[:6]:
        (people / name).mkdir(parents=True)
        for rel in rels[:3]:
            (people / name / Path(rel).name).symlink_to(SHARED / "photos" / rel)
    subprocess.run([str(REF_TREE / PY), "-m", "eval.bin_io", "--img-list", str(DATA / "img.list"), "--pair-list",
                    str(DATA / "pair.list"), "--out", str(DATA / "small.bin")], cwd=REF_TREE, check=True)
    (DATA / "done").write_text("ok\n")


def run_scenario(tree: Path, name: str, out: Path, log) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = out.parent / f"{name}.cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONHASHSEED="0", MAGFACE_NO_PROGRESS="1", MAGFACE_CACHE=str(cache))
    for i, cmd in enumerate(SCENARIOS[name]):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = cmd.format(O=out, D=DATA, PORT=port, REFFEAT=BC / "ref_out/gen_feat/t32.npz",
                         REFTRAIN=BC / "ref_out/train_single/run/last.pth")
        t = time.time()
        proc = subprocess.run(cmd, shell=True, cwd=tree, env=env, capture_output=True, text=True,
                              errors="backslashreplace")
        (out / f"cmd{i}.stdout").write_text(proc.stdout)
        (out / f"cmd{i}.stderr").write_text(proc.stderr)
        (out / f"cmd{i}.rc").write_text(f"{proc.returncode}\n")
        log(f"  [{name}] cmd{i} rc={proc.returncode} {time.time() - t:.0f}s")


def normalise(text: str, roots: list[Path]) -> str:
    for root in sorted(roots, key=lambda p: -len(str(p))):
        text = text.replace(str(root), "<ROOT>")
    for pat, rep in VOLATILE:
        text = pat.sub(rep, text)
    lines = [ln for ln in text.splitlines() if "it/s]" not in ln and "s/it]" not in ln and "%|" not in ln]
    return "\n".join(lines)


def compare_pth(a: Path, b: Path) -> list[str]:
    import torch

    sa, sb = torch.load(a, map_location="cpu", weights_only=False), torch.load(b, map_location="cpu",
                                                                               weights_only=False)
    diffs: list[str] = []

    def walk(x, y, key):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape \
                    or x.dtype != y.dtype or not torch.equal(x, y):
                diffs.append(f"{key}: tensors differ")
        elif isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                diffs.append(f"{key}: keys {sorted(set(x) ^ set(y), key=str)}")
            for k in set(x) & set(y):
                walk(x[k], y[k], f"{key}.{k}")
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{key}[{i}]")
        elif isinstance(x, str) and isinstance(y, str):
            if normalise(x, ROOTS) != normalise(y, ROOTS):
                diffs.append(f"{key}: {x!r} != {y!r}")
        elif x != y and not (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y)):
            if not any(w in key.lower() for w in ("time", "host", "pid", "elapsed", "wall", "date")):
                diffs.append(f"{key}: {x!r} != {y!r}")
    for state in (sa, sb):  # the global python/numpy RNGs: never seeded nor used by a step, arbitrary per process
        if isinstance(state.get("rng"), dict):
            state["rng"].pop("python", None)
            state["rng"].pop("numpy", None)
    walk(sa, sb, "")
    return diffs


def compare_file(a: Path, b: Path) -> list[str]:
    if a.suffix in (".pth", ".pt"):
        return compare_pth(a, b)
    if a.suffix == ".npz":
        za, zb = np.load(a, allow_pickle=True), np.load(b, allow_pickle=True)
        if set(za.files) != set(zb.files):
            return [f"npz keys {za.files} != {zb.files}"]
        out = []
        for k in za.files:
            x, y = za[k], zb[k]
            if x.dtype.kind in "US":
                x = np.array([normalise(str(v), ROOTS) for v in x.ravel()])
                y = np.array([normalise(str(v), ROOTS) for v in y.ravel()])
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                out.append(f"npz[{k}] differs")
        return out
    if a.suffix == ".npy":
        return [] if np.array_equal(np.load(a), np.load(b), equal_nan=True) else ["npy differs"]
    if a.suffix in (".png", ".jpg", ".onnx"):
        return [] if a.read_bytes() == b.read_bytes() else ["bytes differ (image/graph)"]
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    if raw_a == raw_b:
        return []
    try:
        ta, tb = raw_a.decode("utf-8", "backslashreplace"), raw_b.decode("utf-8", "backslashreplace")
    except Exception:
        return ["binary bytes differ"]
    if "\0" in ta[:4096]:
        return ["binary bytes differ"]
    na, nb = normalise(ta, ROOTS).splitlines(), normalise(tb, ROOTS).splitlines()
    if a.suffix == ".json":
        try:
            ja, jb = drop_volatile(json.loads(ta)), drop_volatile(json.loads(tb))
            if ja == jb:
                return []
            return [f"JSON differs: {first_json_diff(ja, jb, '')}"]
        except Exception:
            pass
    if na == nb:
        return []
    for i, (x, y) in enumerate(zip(na, nb, strict=False)):
        if x != y:
            return [f"line {i + 1}: REF {x[:220]!r}\n      NEW {y[:220]!r}"]
    return [f"line counts {len(na)} != {len(nb)}"]


ROOTS: list[Path] = []
VOLATILE_KEYS = ("seconds", "elapsed", "time", "host", "pid", "date", "per_s", "_s_", "throughput")


def first_json_diff(a, b, key: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{key}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if a[k] != b[k]:
                return first_json_diff(a[k], b[k], f"{key}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            if u != v:
                return first_json_diff(u, v, f"{key}[{i}]")
    return f"{key}: REF {str(a)[:200]} NEW {str(b)[:200]}"


def drop_volatile(obj):
    if isinstance(obj, dict):
        return {k: drop_volatile(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE_KEYS)}
    if isinstance(obj, list):
        return [drop_volatile(v) for v in obj]
    return normalise(obj, ROOTS) if isinstance(obj, str) else obj


def compare_dirs(ref: Path, new: Path) -> list[str]:
    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                and not p.name.startswith("events.out.tfevents")}
    fa, fb = files(ref), files(new)
    problems = [f"only in reference: {p}" for p in sorted(fa - fb)] + [f"only in new: {p}" for p in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        if rel.name.startswith("events.out.tfevents"):
            continue
        for d in compare_file(ref / rel, new / rel):
            problems.append(f"{rel}: {d}")
    return problems


def main() -> int:
    global BC, REF_TREE, SHARED, DATA
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="checkout of the commit before the change")
    ap.add_argument("--tree", type=Path, default=Path("."), help="the changed checkout")
    ap.add_argument("--work", type=Path, required=True, help="folder for the data subsets and both trees' outputs")
    ap.add_argument("--data", type=Path, default=SHARED, help="the shared real faces (celeba112, lfw112, photos)")
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(SCENARIOS))
    ap.add_argument("--refresh-ref", action="store_true", help="re-run the reference scenarios")
    args = ap.parse_args()
    BC, REF_TREE, SHARED = args.work.resolve(), args.ref.resolve(), args.data.resolve()
    DATA = BC / "data"
    if not (SHARED / "celeba112" / "train.list").is_file():
        ap.error(f"--data {SHARED}: no celeba112/train.list there")
    tree = args.tree.resolve()
    prepare_data()
    names = args.only or list(SCENARIOS)
    order = list(SCENARIOS)
    names = sorted(set(names), key=order.index)
    label = tree.name if tree != REF_TREE else "ref"  # the outputs' folder: WORK/out/LABEL
    new_root = BC / "out" / label
    ROOTS.extend([REF_TREE, tree, BC / "ref_out", new_root, DATA, SHARED])
    lock = BC / "ref_out.lock"
    failed = 0
    for name in names:
        ref_dir = BC / "ref_out" / name
        if args.refresh_ref or not (ref_dir / "cmd0.rc").exists():
            while True:
                try:
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL)
                    os.close(fd)
                    break
                except FileExistsError:
                    time.sleep(5)
            try:
                if args.refresh_ref or not (ref_dir / "cmd0.rc").exists():
                    print(f"reference run: {name}", flush=True)
                    run_scenario(REF_TREE, name, ref_dir, lambda m: print(m, flush=True))
            finally:
                os.unlink(lock)
        if tree == REF_TREE:
            continue
        print(f"run: {name}", flush=True)
        run_scenario(tree, name, new_root / name, lambda m: print(m, flush=True))
        problems = compare_dirs(ref_dir, new_root / name)
        print(f"{'IDENTICAL' if not problems else 'DIFFERENT'}: {name}")
        for p in problems[:40]:
            print(f"    {p}")
        failed += bool(problems)
    print(f"behaviour check of {tree}: {len(names) - failed} of {len(names)} scenarios identical", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
