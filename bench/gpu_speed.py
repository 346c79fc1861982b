"""The GPU training levers of issue #15, measured on the real training step, and what fits in memory.

    python -m bench.gpu_speed --parts levers,curve,fit --json out.json   # on a GPU (bench/gpu_speed.sh)
    python -m bench.gpu_speed --smoke --json out.json                    # CPU, tiny sizes (a test)

Parts:
- ``levers``: for each backbone, images/s and peak memory of ``bench.bench_train.bench_one`` (the
  trainer's build_run + train_one_epoch over the RecordIO loader, 12 decode workers) for each lever:
  ``baseline`` (compile default mode, dense head: the 5,791 img/s configuration), ``fused_head``
  (--head-impl fused), ``cudagraphs`` (--compile-mode reduce-overhead), ``cudagraphs_fused``,
  ``autotune`` (max-autotune-no-cudagraphs, slow to compile), ``batch2x`` (baseline at twice the batch).
- ``curve``: the losses of the first --curve-steps steps of ``baseline`` and of the fastest batch-256
  lever of this run (else --curve-lever), same data order, same initialisation, lr --curve-lr.
- ``fit``: the largest class count whose training step fits at --batch-size with each head (dense,
  the sharded head on 1 rank, fused), by ``bench.class_fit.largest_fitting`` over ``step_fits``.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import tempfile
import traceback
from pathlib import Path

import torch

from bench.bench_train import bench_config, bench_one, build_bench_run, cleanup, datasets, ensure_rec
from bench.class_fit import HEAD_KINDS, largest_fitting, step_fits
from bench.common import csv_arg, format_machine, format_rows, machine_info, row_line
from models import build_backbone
from run.engine import train_one_epoch
from utils.atomic import write_json
from utils.precision import amp_dtype

LEVERS: dict[str, dict] = {
    "baseline": {},
    "fused_head": {"head_impl": "fused"},
    "cudagraphs": {"compile_mode": "reduce-overhead"},
    "cudagraphs_fused": {"compile_mode": "reduce-overhead", "head_impl": "fused"},
    "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "batch2x": {"batch_scale": 2},
}
COLUMNS = ("arch", "lever", "batch", "img_s", "step_ms", "data_wait_pct", "first_step_s", "peak_gpu_alloc_mb",
           "peak_rss_mb", "status")
SMOKE = dict(archs=["iresnet18_w16"], embedding_size=64, input_size=56, batch_size=8, classes=50, steps=2, warmup=1,
             workers=0, rec_images=32, curve_steps=3, fit_start=50, fit_limit=200, fit_quantum=1, device="cpu",
             compile="off", amp="none", fit_archs=["iresnet18_w16"], levers=["baseline", "fused_head", "batch2x"])


def lever_config(lever: str, batch: int) -> dict:
    """The TrainConfig fields a lever sets (``batch_scale`` multiplies --batch-size)."""
    extra = dict(LEVERS[lever])
    if "batch_scale" in extra:
        extra["batch_size"] = batch * extra.pop("batch_scale")
    return extra


def spec_of(args: argparse.Namespace, arch: str) -> dict:
    return {"arch": arch, "amp": args.amp, "cl": "on", "compile": args.compile}


def failed(spec: dict, error: Exception) -> dict:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return dict(spec, status=f"FAILED {type(error).__name__}: {first[:160]}", traceback=traceback.format_exc(limit=4))


def run_levers(args: argparse.Namespace, dataset, out_dir: str, save) -> list[dict]:
    rows = []
    for arch, lever in itertools.product(args.archs, args.levers):
        spec = spec_of(args, arch)
        try:
            row = bench_one(spec, dataset, args, args.workers, out_dir, lever_config(lever, args.batch_size))
            row["lever"] = lever
        except Exception as e:  # one failing lever (OOM, a compile error) must not stop the others
            row = failed(spec, e) | {"lever": lever}
        cleanup()
        rows.append(row)
        print(row_line(row), flush=True)
        save()
    return rows


def fastest_lever(rows: list[dict], batch: int, default: str) -> str:
    """The fastest lever at ``batch`` among the rows that ran (``default`` when none but the baseline did)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("batch") == batch and r["lever"] != "baseline"]
    return max(ok, key=lambda r: r["img_s"])["lever"] if ok else default


def loss_curve(arch: str, lever: str, args: argparse.Namespace, dataset, out_dir: str) -> list[float]:
    """Per-step losses of the first ``args.curve_steps`` steps (one host sync per step: not timed)."""
    cfg = bench_config(spec_of(args, arch), len(dataset), args, args.workers, out_dir,
                       lever_config(lever, args.batch_size))
    run, loader, state = build_bench_run(cfg, dataset, args.curve_steps, lr=args.curve_lr)
    batches, losses = iter(loader), []
    for _ in range(args.curve_steps):
        result = train_one_epoch(run.model, run.head, [run.opt_backbone, run.opt_head], run.scaler,
                                 itertools.islice(batches, 1), 0, 0, *state)
        losses.append(result.metrics["loss"])
    return losses


def run_curve(args: argparse.Namespace, dataset, out_dir: str, lever_rows: list[dict]) -> dict:
    arch = args.archs[0]
    other = fastest_lever([r for r in lever_rows if r.get("arch") == arch], args.batch_size, args.curve_lever)
    curves = {}
    for lever in ("baseline", other):
        curves[lever] = loss_curve(arch, lever, args, dataset, out_dir)
        cleanup()
    base, fast = curves["baseline"], curves[other]
    diffs = [abs(a - b) for a, b in zip(base, fast, strict=True)]
    print(f"loss curve {arch}: baseline vs {other}, {len(base)} steps, max |diff| {max(diffs):.4g}, "
          f"last {base[-1]:.4f} vs {fast[-1]:.4f}", flush=True)
    return {"arch": arch, "lr": args.curve_lr, "baseline": base, "lever": other, "losses": fast,
            "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs)}


def _fits(model, arch: str, kind: str, args: argparse.Namespace, device: torch.device, amp: torch.dtype | None,
          channels_last: bool, classes: int) -> bool:
    ok = step_fits(model, kind, classes, args.batch_size, args.embedding_size, device, amp, channels_last,
                   args.input_size)
    print(f"fit {arch} {kind} {classes} classes: {'fits' if ok else 'out of memory'}", flush=True)
    return ok


def run_fit(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    amp = amp_dtype(args.amp)
    results = []
    for arch in args.fit_archs:
        backbone = build_backbone(arch, args.embedding_size, 0.0, args.input_size).to(device)
        channels_last = device.type == "cuda"  # as the trainer's auto (channels-last BatchNorm is slow on CPU)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        model = torch.compile(backbone) if args.compile == "on" else backbone
        for kind in HEAD_KINDS:
            fits = functools.partial(_fits, model, arch, kind, args, device, amp, channels_last)
            found = largest_fitting(fits, args.fit_start, args.fit_limit, args.fit_rel_tol, args.fit_quantum)
            results.append({"arch": arch, "head": kind, "batch": args.batch_size, "compile": args.compile} | found)
        del model, backbone
        cleanup()
    return results


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", type=csv_arg, default="levers,curve,fit", help="levers, curve, fit (comma list)")
    p.add_argument("--archs", type=csv_arg, default="iresnet50")
    p.add_argument("--levers", type=csv_arg, default="baseline,fused_head,cudagraphs,cudagraphs_fused,batch2x",
                   help=f"any of {', '.join(LEVERS)}")
    p.add_argument("--amp", default="bf16", choices=("none", "bf16", "fp16"))
    p.add_argument("--compile", default="on", choices=("on", "off"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=int, default=85742)
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=12, help="RecordIO decode workers")
    p.add_argument("--rec-images", type=int, default=4096)
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "magface_bench"))
    p.add_argument("--device", default="auto")
    p.add_argument("--curve-steps", type=int, default=200)
    p.add_argument("--curve-lr", type=float, default=0.1)
    p.add_argument("--curve-lever", default="cudagraphs_fused", help="compared with baseline without a levers part")
    p.add_argument("--fit-archs", type=csv_arg, default="iresnet50")
    p.add_argument("--fit-start", type=int, default=85742)
    p.add_argument("--fit-limit", type=int, default=64_000_000)
    p.add_argument("--fit-rel-tol", type=float, default=0.03)
    p.add_argument("--fit-quantum", type=int, default=1024)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (overrides the sizes above)")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = [lever for lever in args.levers if lever not in LEVERS]
    if unknown or not set(args.parts) <= {"levers", "curve", "fit"}:
        raise ValueError(f"--levers {unknown} / --parts {args.parts}: levers are {list(LEVERS)}, parts are "
                         "levers, curve, fit")
    info = machine_info()
    print(format_machine(info), flush=True)
    out = {"machine": info, "args": vars(args), "levers": [], "curve": None, "fit": [], "complete": False}

    def save() -> None:
        if args.json:
            write_json(args.json, out, default=str)

    with tempfile.TemporaryDirectory() as out_dir:
        if {"levers", "curve"} & set(args.parts):
            dataset = datasets(["rec"], ensure_rec(Path(args.cache_dir), args.rec_images, args.classes),
                               args.classes)["rec"]
        if "levers" in args.parts:
            out["levers"] = run_levers(args, dataset, out_dir, save)
        if "curve" in args.parts:
            out["curve"] = run_curve(args, dataset, out_dir, out["levers"])
            save()
    if "fit" in args.parts:
        out["fit"] = run_fit(args)
    out["complete"] = True
    save()
    if out["levers"]:
        print(format_rows(out["levers"], COLUMNS))
    for r in out["fit"]:
        print(f"largest class count at batch {r['batch']}, {r['arch']}, {r['head']} head: {r['largest_fit']:,} "
              f"(first failure {r['smallest_fail']}; {len(r['probes'])} probes)")
    return out


if __name__ == "__main__":
    main()
