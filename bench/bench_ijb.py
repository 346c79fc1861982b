"""Wall time of the IJB 1:1 protocol at IJB-C size on synthetic data.

IJB-C: ~469k images, ~23k templates, 15.6M impostor and 19.6k genuine template pairs. Features are
random identity centres plus noise with random magnitudes, so the run is realistic in sizes, not in
accuracy. Scoring goes through ``eval.ijb.evaluate_ijb``, the function the CLI calls; with
``--write-meta`` the meta files are also written to a temporary folder and read back by the CLI's
reader, to time that too.

    python -m bench.bench_ijb [--json out.json] [--write-meta]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.ijb import evaluate_ijb, load_protocol
from utils.atomic import write_json


def synthetic_protocol(
    n_images: int, n_templates: int, n_ids: int, n_impostor: int, n_genuine: int, dim: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Arrays shaped like IJB-C: templates of one identity, media within templates, template pairs."""
    rng = np.random.default_rng(seed)
    tmpl_id = rng.integers(0, n_ids, n_templates)
    img_t = np.sort(np.concatenate([np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)]))
    medias = rng.integers(0, 4, n_images) + 4 * img_t  # a few media per template, ids unique per template
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    feats = rng.standard_normal((n_images, dim), dtype=np.float32)
    feats *= 1.5
    feats += centres[tmpl_id[img_t]]
    feats *= rng.uniform(10, 40, (n_images, 1)).astype(np.float32)
    a, b = rng.integers(0, n_templates, (2, int(n_impostor * 1.01) + 100))
    keep = tmpl_id[a] != tmpl_id[b]
    imp1, imp2 = a[keep][:n_impostor], b[keep][:n_impostor]
    order = np.argsort(tmpl_id, kind="stable")
    start = np.searchsorted(tmpl_id[order], np.arange(n_ids))
    count = np.bincount(tmpl_id, minlength=n_ids)
    ids = rng.choice(np.flatnonzero(count >= 2), n_genuine)
    i = rng.integers(0, count[ids])
    j = (i + rng.integers(1, count[ids])) % count[ids]
    gen1, gen2 = order[start[ids] + i], order[start[ids] + j]
    t1 = np.concatenate([gen1, imp1])
    t2 = np.concatenate([gen2, imp2])
    labels = np.concatenate([np.ones(len(gen1), np.int64), np.zeros(len(imp1), np.int64)])
    return {"feats": feats, "templates": img_t, "medias": medias, "t1": t1, "t2": t2, "labels": labels}


def write_meta(folder: Path, data: dict[str, np.ndarray], kind: str = "c") -> None:
    meta = folder / "meta"
    meta.mkdir(parents=True)
    with open(meta / f"ijb{kind}_face_tid_mid.txt", "w") as f:
        f.write("".join(f"{i}.jpg {t} {m}\n" for i, (t, m) in
                        enumerate(zip(data["templates"].tolist(), data["medias"].tolist(), strict=True))))
    with open(meta / f"ijb{kind}_template_pair_label.txt", "w") as f:
        rows = np.stack([data["t1"], data["t2"], data["labels"]], axis=1)
        for s in range(0, len(rows), 1_000_000):
            f.write("".join(f"{a} {b} {c}\n" for a, b, c in rows[s:s + 1_000_000].tolist()))


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "scipy", "scikit-learn", "torch"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), **versions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=469_375)
    p.add_argument("--templates", type=int, default=23_124)
    p.add_argument("--ids", type=int, default=3_531)
    p.add_argument("--impostor", type=int, default=15_638_932)
    p.add_argument("--genuine", type=int, default=19_557)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--aggregation", default="mean")
    p.add_argument("--write-meta", action="store_true", help="also time writing/reading the meta files")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    data = synthetic_protocol(args.images, args.templates, args.ids, args.impostor, args.genuine, args.dim)
    gen_s = time.perf_counter() - t0
    read_s = None
    if args.write_meta:
        with tempfile.TemporaryDirectory() as tmp:
            write_meta(Path(tmp), data)
            t0 = time.perf_counter()
            templates, medias, t1, t2, labels = load_protocol(tmp, "c")
            read_s = time.perf_counter() - t0
        assert np.array_equal(t1, data["t1"]) and np.array_equal(templates, data["templates"])
    t0 = time.perf_counter()
    report = evaluate_ijb(data["feats"], data["templates"], data["medias"], data["t1"], data["t2"],
                          data["labels"], args.aggregation)
    total_s = time.perf_counter() - t0
    result = {
        "machine": machine(), "num_images": args.images, "num_templates": report["num_templates"],
        "num_pairs": report["num_pairs"], "num_genuine": report["num_genuine"],
        "aggregation": args.aggregation, "generate_seconds": gen_s, "read_meta_seconds": read_s,
        "stage_seconds": report["seconds"], "stage_cpu_seconds": report["cpu_seconds"],
        "protocol_seconds": total_s, "load_average_1min": os.getloadavg()[0],
        "score_plus_roc_seconds": report["seconds"]["scores"] + report["seconds"]["roc"],
        "tar_at_far": report["tar_at_far"],
    }
    m = result["machine"]
    print(f"machine: {m['cpu']} x{m['cores']}, numpy {m['numpy']}, scipy {m['scipy']}, "
          f"scikit-learn {m['scikit-learn']}, torch {m['torch']}")
    print(f"{report['num_pairs']:,} pairs ({report['num_genuine']:,} genuine), "
          f"{report['num_templates']:,} templates, {args.images:,} images x {args.dim}")
    if read_s is not None:
        print(f"read meta files: {read_s:.2f} s")
    for label, sec in (("wall", report["seconds"]), ("cpu ", report["cpu_seconds"])):
        print(f"{label}: templates {sec['templates']:.2f} s | scores {sec['scores']:.2f} s | "
              f"ROC+TAR {sec['roc']:.2f} s | scoring + ROC {sec['scores'] + sec['roc']:.2f} s")
    print(f"whole protocol (wall) {total_s:.2f} s; 1-min load average {result['load_average_1min']:.1f} "
          f"on {m['cores']} cores")
    if args.json:
        write_json(args.json, result, nan_as_null=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
