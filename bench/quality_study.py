"""Quality study: which training makes the magnitude of damaged faces fall?

    python -m bench.quality_study --runs /tmp/study_runs [--only base6,ua40] [--out DIR]
    python -m bench.quality_study --runs /tmp/ft_runs --seeds 0,1,2 --only pretrained,ftpub,ftdeg   # issue #22

Two families of configurations. The first (issue #11, ``CONFIGS`` with the demo base) trains a small iResNet
from scratch. The second (issue #22, base ``mobilefacenet``) starts from the converged, shipped
``raw/pretrained/mobilefacenet.pth``: ``pretrained`` scores that model as it is (its own feature norm, the
ArcFace-style baseline), the others fine-tune it with MagFace. With ``--seeds`` every configuration runs once per
seed S, as RUNS/NAME_sS with ``--seed S``, and is scored on its own damaged set (``eval.damage`` seed S), beside
the baselines on the same pairs: the pretrained model's norm, SER-FIQ on the pretrained model
(``inference.serfiq``), image sharpness and a random order; the table gives mean and spread over the seeds.

For each named configuration (``CONFIGS``: the demo recipe plus extra ``run.train`` flags) it trains on
raw/demo_data/celeba (or reuses RUNS/NAME when a finished checkpoint is there), embeds the 2,400 clean
demo LFW pairs (10-fold accuracy, magface protocol) and a damaged copy of them (second face of each pair
damaged, built once by ``eval.damage``), and appends one JSON row per configuration to OUT/rows.jsonl
(rewritten atomically after each configuration, so a crash loses nothing; finished names are skipped)
and the markdown table OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from bench.common import format_machine, machine_info
from faces.face_list import read_image_list
from run.recipes import MOBILEFACENET_START, PRETRAINED, QUALITY_FINETUNE_EPOCHS, QUALITY_FINETUNE_FLAGS
from utils.atomic import atomic_write
from utils.feature_io import load_feature_file
from utils.table import format_markdown

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "raw" / "demo_data"
OUT = REPO / "bench" / "results" / "quality_study_2026-12-03"
DEMO = ["--arch", "iresnet18_w32", "--input-size", "56", "--embedding-size", "128", "--batch-size", "64",
        "--lr", "0.1", "--schedule", "cosine", "--warmup-epochs", "1", "--seed", "0"]
UA40 = ["--l_a", "10", "--u_a", "40", "--lambda_g", "100"]  # feasibility bound lambda_min = 79.6
# fine-tuning the ArcFace model arc6 with the seed's recipe [l_a, u_a, l_m, u_m, lambda_g] = [1, 51, 0.45, 1, 5]
FT_SEED = ["--pretrained", "{runs}/arc6/00006.pth", "--l_a", "1", "--u_a", "51", "--l_margin", "0.45",
           "--u_margin", "1", "--lambda_g", "5", "--lr", "0.02", "--warmup-epochs", "0.25"]


def with_flag(flags: list[str], name: str, value: str) -> list[str]:
    """A copy of ``flags`` with the value after ``name`` replaced."""
    i = flags.index(name)
    return [*flags[:i + 1], value, *flags[i + 2:]]


# name -> (epochs, extra flags, what it tests). "{runs}" in a flag is replaced by the runs folder.
CONFIGS: dict[str, tuple[int, list[str], str]] = {
    "base6": (6, [], "the demo recipe (l_a 10, u_a 110, lambda_g 35)"),
    "ua40": (6, UA40, "[l_a, u_a] narrowed to [10, 40] so short training uses the margin range"),
    "arc6": (6, ["--l_margin", "0.5", "--u_margin", "0.5", "--lambda_g", "0"], "constant margin (ArcFace)"),
    "ua40deg": (6, [*UA40, "--degrade-prob", "0.5"], "ua40 + every damage kind on half the faces"),
    "ftarc": (2, FT_SEED, "arc6 fine-tuned 2 epochs with the seed's recipe [1, 51, 0.45, 1, 5]"),
    "ftarc4": (4, FT_SEED, "ftarc, 4 epochs of fine-tuning"),
    "ftarc4deg": (4, [*FT_SEED, "--degrade-prob", "0.5"],
                  "ftarc4 + every damage kind on half the fine-tuning faces"),
    "ftarc8": (8, FT_SEED, "ftarc, 8 epochs of fine-tuning"),
    "ftarc8deg": (8, [*FT_SEED, "--degrade-prob", "0.5"], "ftarc8 + every damage kind on half the faces"),
    "ftarc8s1": (8, [*FT_SEED, "--seed", "1"], "ftarc8 with training seed 1 (run-to-run spread)"),
    "ftarc8g35": (8, with_flag(FT_SEED, "--lambda_g", "35"),
                  "ftarc8 with lambda_g 35 (7x the seed's pull of the regulariser on the magnitude)"),
    "ftua25": (2, ["--pretrained", "{runs}/arc6/00006.pth", "--l_a", "5", "--u_a", "25", "--l_margin", "0.45",
                   "--u_margin", "1", "--lambda_g", "50", "--lr", "0.02", "--warmup-epochs", "0.25"],
               "arc6 fine-tuned with [l_a, u_a] = [5, 25] around its magnitudes (lambda_min 45.8)"),
    "naive6": (6, ["--degrade-prob", "0.5", "--degrade-kinds", "blur,downscale,noise,jpeg"],
               "the naive augmentation of the issue (demo bounds)"),
    "ua40mild": (6, [*UA40, "--degrade-prob", "0.3", "--degrade-max-severity", "0.6"],
                 "ua40 + milder damage (30 %, severity <= 0.6)"),
    "ua40e12": (12, UA40, "ua40 trained twice as long"),
}
COLUMNS = ["name", "epochs", "accuracy", "spearman", "per_kind", "erc_1e-2", "erc_1e-3", "train_s"]

# --- issue #22: MagFace fine-tuned from the converged MobileFaceNet ------------------------------------------
MFN = [*MOBILEFACENET_START, "--seed", "0"]
FT_BASE = ["--lr", "0.01", "--freeze-depth", "12"]
# the seed's fine-tune rule: l_a below, u_a above the pretrained magnitudes (7.6 .. 25 on the damaged demo LFW),
# u_m 1; lambda_g 35 >= lambda_min 25.5
FT_SEED_RULE = [*FT_BASE, "--l_a", "5", "--u_a", "40", "--l_margin", "0.45", "--u_margin", "1", "--lambda_g", "35"]
FT_CONFIGS: dict[str, tuple[int, list[str], str]] = {
    "pretrained": (0, [], "the pretrained MobileFaceNet as shipped: its own feature norm (softmax-trained)"),
    "ftpub": (2, [*FT_BASE, "--backbone-lr-mult", "0.1"], "MagFace fine-tune, published loss [10, 110, 0.45, 0.8, "
              "35], backbone lr x0.1"),
    "ftseed": (2, FT_SEED_RULE, "MagFace fine-tune, the seed's fine-tune rule [5, 40, 0.45, 1, 35]"),
    "ftdeg": (QUALITY_FINETUNE_EPOCHS, with_flag(QUALITY_FINETUNE_FLAGS, "--degrade-kinds", "all"),
              "[10, 30, 0.45, 0.8, 150], cosine, the benchmark's 7 damage kinds on half the faces"),
    "ftwide": (QUALITY_FINETUNE_EPOCHS, QUALITY_FINETUNE_FLAGS,
               "the shipped recipe: ftdeg with 10 damage kinds (+ motion blur, low contrast, colour cast)"),
    "ftwide_r03": (QUALITY_FINETUNE_EPOCHS, [*QUALITY_FINETUNE_FLAGS, "--sample-rate", "0.3"],
                   "ftwide with class sampling: each step's softmax over 30% of the classes (issue #29)"),
    "ftheld": (2, with_flag(QUALITY_FINETUNE_FLAGS, "--degrade-kinds", "blur,noise,dark,occlusion"),
               "ftdeg (2 epochs) trained on 4 damage kinds: downscale, jpeg, bright held out"),
}
ALL_CONFIGS = CONFIGS | FT_CONFIGS
BASELINES = ("pretrained_norm", "serfiq", "sharpness", "random")


def train_config(name: str, runs: Path, workers: int, seed: int | None = None) -> tuple[Path, float]:
    """Train ``name`` into RUNS/NAME (RUNS/NAME_sS with a seed), or reuse a finished run there;
    (checkpoint, training seconds). A 0-epoch configuration is the pretrained model itself."""
    from run import train as train_entry

    epochs, extra, _ = ALL_CONFIGS[name]
    if epochs == 0:
        return PRETRAINED, 0.0
    folder = runs / (name if seed is None else f"{name}_s{seed}")
    ckpt = folder / f"{epochs:05d}.pth"
    if not (folder / "DONE").exists() or not ckpt.exists():
        num_classes = 1 + max(int(line.split()[2]) for line in (DATA / "celeba" / "train.list").open())
        base = MFN if name in FT_CONFIGS else DEMO
        train_entry.main([*base, "--train_list", str(DATA / "celeba" / "train.list"), "--last-fc-size",
                          str(num_classes), "--epochs", str(epochs), "--workers", str(workers), "--device", "cpu",
                          "--print-freq", "25", "--pth-save-epoch", str(epochs), "--pth-save-fold", str(folder),
                          "--tensorboard", "0", "--overwrite", *[f.replace("{runs}", str(runs)) for f in extra],
                          *(["--seed", str(seed)] if seed is not None else [])])
        (folder / "DONE").touch()
    return ckpt, log_seconds(folder / "train.log")


def baseline_score_files(damaged_set: Path, folder: Path) -> list[Path]:
    """Score files of the pretrained model's norm and of SER-FIQ on it, for every face of ``damaged_set``; each
    has a NAME_originals.txt beside it with the same score of the undamaged demo LFW faces (absolute paths),
    for the pairwise property, computed once in the parent folder and linked."""
    from inference.serfiq import score_list

    folder.mkdir(parents=True, exist_ok=True)
    img_list = damaged_set / "img.list"
    norm, serfiq = folder / "pretrained_norm.txt", folder / "serfiq.txt"
    if not norm.exists():
        with atomic_write(norm, "w") as f:
            f.writelines(f"{p} {m:.6f}\n" for p, m in pretrained_magnitudes(img_list, folder / "norm.npz"))
    if not serfiq.exists():
        score_list(str(PRETRAINED), str(img_list), str(serfiq))
    shared = folder.parent / "baselines_originals"
    shared.mkdir(exist_ok=True)
    if not (shared / "pretrained_norm_originals.txt").exists():
        with atomic_write(shared / "pretrained_norm_originals.txt", "w") as f:
            f.writelines(f"{Path(DATA / 'lfw' / p).resolve()} {m:.6f}\n"
                         for p, m in pretrained_magnitudes(DATA / "lfw" / "img.list", shared / "norm.npz"))
    if not (shared / "serfiq_originals.txt").exists():
        values = score_list(str(PRETRAINED), str(DATA / "lfw" / "img.list"), str(shared / "serfiq_listed.txt"))
        _, resolved = read_image_list(DATA / "lfw" / "img.list")
        with atomic_write(shared / "serfiq_originals.txt", "w") as f:
            f.writelines(f"{r} {v:.6f}\n" for r, v in zip(resolved, values, strict=True))
    for name in ("pretrained_norm_originals.txt", "serfiq_originals.txt"):
        if not (folder / name).exists():
            (folder / name).symlink_to(shared / name)
    return [norm, serfiq]


def log_seconds(log: Path) -> float:
    """Wall time of a run: from its first to its last time-stamped log line."""
    stamps = [datetime.strptime(m.group(0), "%Y-%m-%d %H:%M:%S")
              for m in (re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in log.open()) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else float("nan")


def pretrained_magnitudes(img_list: Path, feats: Path) -> list[tuple[str, float]]:
    """(listed path, magnitude) of every face of ``img_list`` under the pretrained model."""
    from inference import gen_feat

    gen_feat.extract(str(PRETRAINED), str(img_list), str(feats),
                     gen_feat.FeatOptions(device="cpu", dtype="fp32", print_freq=10**6))
    listed, _ = read_image_list(img_list)
    return list(zip(listed, load_feature_file(feats).magnitudes.tolist(), strict=True))


def score(ckpt: Path, damaged_set: Path, work: Path, score_files: list[Path] | tuple = ()) -> dict:
    """Clean 10-fold accuracy and the damaged-set report (magnitude, random, sharpness) of one checkpoint."""
    from eval import damage, verification
    from inference import gen_feat
    from utils.atomic import finite_or_none

    work.mkdir(parents=True, exist_ok=True)
    clean, dmg, verif = work / "clean.npz", work / "dmg.npz", work / "verif.json"
    for img_list, feats in ((DATA / "lfw" / "img.list", clean), (damaged_set / "img.list", dmg)):
        if not feats.exists():
            gen_feat.extract(str(ckpt), str(img_list), str(feats),
                             gen_feat.FeatOptions(device="cpu", dtype="fp32", print_freq=100000))
    clean_report = verification.run(feat_list=str(clean), pair_list=str(DATA / "lfw" / "pair.list"))
    verification.publish(clean_report, verif)
    report, scores, table = damage.score_set(damaged_set, dmg, score_files=score_files)
    originals = {"magnitude": dict(zip(read_image_list(DATA / "lfw" / "img.list")[1],
                                       load_feature_file(clean).magnitudes.tolist(), strict=True))}
    originals |= {Path(f).stem: read_path_scores(Path(f).with_name(Path(f).stem + "_originals.txt"))
                  for f in score_files}
    pairwise = {name: below_original(damaged_set, table, scores[name], originals.get(name))
                for name in ("magnitude", *(Path(f).stem for f in score_files), "sharpness")}
    return {"verification": finite_or_none(clean_report), "damage": report, "below_original": pairwise}


def read_path_scores(path: Path) -> dict[str, float]:
    """A 'path score' file over the demo LFW faces, keyed by resolved path."""
    return {str(Path(p).resolve()): float(v) for p, v in (line.split() for line in path.read_text().splitlines())}


def damage_sources(damaged_set: Path) -> list[str]:
    """The resolved path of the undamaged original of every row of an ``eval.damage`` set (its ``source`` column)."""
    import csv

    with open(damaged_set / "damage.csv", newline="") as f:
        return [str(Path(row["source"]).resolve()) for row in csv.DictReader(f)]


def below_original(damaged_set: Path, table, damaged: np.ndarray, originals: dict[str, float] | None) -> dict:
    """The property a user expects of a quality score: the fraction of damaged faces that score below their own
    undamaged original, per kind and overall (``originals``: score of each source face; None = sharpness, computed
    here from the source images)."""
    from eval.quality import laplacian_sharpness

    sources = damage_sources(damaged_set)
    rows = np.flatnonzero(table.damaged)
    if originals is None:
        originals = {src: laplacian_sharpness(cv2.imread(src)) for src in {sources[r] for r in rows}}
    lower = np.array([damaged[r] < originals[sources[r]] for r in rows])
    kinds = table.kind[rows]
    return {"overall": float(lower.mean()), **{str(k): float(lower[kinds == k].mean()) for k in sorted(set(kinds))}}


def make_row(name: str, ckpt: Path, train_s: float, scored: dict, machine: str, seed: int | None = None) -> dict:
    epochs, extra, what = ALL_CONFIGS[name]
    rep, ver = scored["damage"], scored["verification"]
    row = {} if seed is None else {"seed": seed, "spearman_all": {k: v["overall"] for k, v in rep["spearman"].items()},
                                   "below_original": scored["below_original"]}
    return row | {
        "name": name, "epochs": epochs, "flags": " ".join(extra), "what": what,
        "checkpoint": str(ckpt).replace(str(REPO) + "/", ""),
        "accuracy": ver["accuracy_mean"], "accuracy_std": ver["accuracy_std"],
        "spearman": rep["spearman"]["magnitude"], "spearman_random": rep["spearman"].get("random"),
        "median_magnitude_by_band": rep["median_by_band"]["magnitude"],
        "erc_area": {fmr: {k: v["area"] for k, v in curves.items()} for fmr, curves in rep["erc"].items()},
        "train_s": round(train_s, 1), "machine": machine,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def export_reference(ckpt: Path, out: Path, runs: Path) -> None:
    """The backbone alone (no classifier, no optimizer), loadable by models.checkpoint.load_backbone.

    Paths in the recorded config are made portable: the repository becomes relative and the runs folder
    ``{runs}``, so the shipped file names no folder of the machine that trained it.
    """
    from models.checkpoint import load_backbone, read_checkpoint, save_released

    model, conv, info = load_backbone(ckpt)
    config = dict(read_checkpoint(ckpt).get("config") or {})
    for key, value in config.items():
        if isinstance(value, str):
            config[key] = value.replace(str(REPO) + "/", "").replace(str(runs.resolve()), "{runs}")
    save_released(out, model, None, int(info["epoch"] or 0), info["arch"], config=config, convention=conv)


def calibrate_anchored(ckpt: Path, damaged_set: Path, min_severity: float = 0.5) -> Path:
    """The 0-100 scale of an exported model, beside it: the demo LFW faces' median magnitude -> 80, that of the
    faces of ``damaged_set`` damaged at severity >= ``min_severity`` -> 20
    (``inference.quality_scale.fit_anchored``)."""
    from eval.damage_set import read_damage_table
    from inference.calibrate import reference_magnitudes
    from inference.quality_scale import file_sha256, fit_anchored, save_calibration, side_file

    table = read_damage_table(damaged_set / "damage.csv")
    rows = np.flatnonzero(table.damaged & (table.severity >= min_severity))
    severe = damaged_set / f"severity_ge_{min_severity:g}.list"
    with atomic_write(severe, "w") as f:
        f.writelines(f"{table.paths[r]}\n" for r in rows)
    good = reference_magnitudes(str(ckpt), str(DATA / "lfw" / "img.list"), device="cpu")
    bad = reference_magnitudes(str(ckpt), str(severe), device="cpu")
    source = f"raw/demo_data/lfw/img.list + eval.damage set {damaged_set.name}, severity >= {min_severity:g}"
    calibration = fit_anchored(good, bad, source, file_sha256(ckpt))
    save_calibration(calibration, side_file(ckpt))
    print(f"calibration: centre {calibration.centre:.3f}, width {calibration.width:.3f} ({calibration.rule})")
    return side_file(ckpt)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_rows(out: Path, rows: list[dict]) -> None:
    """rows.jsonl and table.md, each written atomically (a crash keeps the previous complete file)."""
    with atomic_write(out / "rows.jsonl", "w") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    machines = sorted({f"- {r['name']}: {r['machine']}" for r in rows})
    seeded = [r for r in rows if "seed" in r]
    table = seed_table(seeded) if seeded else markdown_table(rows)
    with atomic_write(out / "table.md", "w") as f:
        f.write(table + "\n" + "\n".join(machines) + "\n")


TABLE_HEADER = ("config", "epochs", "clean acc.", "Spearman (overall)", "per kind",
                "ERC area mag / random, FMR 1e-2", "FMR 1e-3", "train s")


def study_row(r: dict) -> list[str]:
    """A row's cells: one ERC cell per FMR, largest first."""
    kinds = ", ".join(f"{k} {v:+.2f}" for k, v in r["spearman"].items() if k != "overall")
    erc = [" / ".join(f"{r['erc_area'][f].get(s, float('nan')):.3f}" for s in ("magnitude", "random"))
           for f in sorted(r["erc_area"], key=lambda k: -float(k))]
    return [f"{r['name']} ({r['what']})", str(r["epochs"]), f"{100 * r['accuracy']:.2f} %",
            f"{r['spearman']['overall']:+.3f}", kinds, *erc, f"{r['train_s']:.0f}"]


def markdown_table(rows: list[dict]) -> str:
    return format_markdown(TABLE_HEADER, [study_row(r) for r in rows]) + "\n"


SEED_HEADER = ("config", "seeds", "clean acc. (demo pairs)", "rho magnitude vs severity", "rho per kind (mean)",
               "damaged below its original: magnitude (min kind)", "pretrained norm", "SER-FIQ", "sharpness",
               "ERC area, FMR 1e-2: magnitude", "pretrained norm", "SER-FIQ", "sharpness", "random", "train s")


def mean_spread(values: list[float], scale: float = 1.0, fmt: str = "{:+.3f}") -> str:
    """'mean +- sd' over seeds (sample sd; a single value alone)."""
    v = np.asarray(values, dtype=np.float64) * scale
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} +- {v.std(ddof=1):.3f}"


def seed_table(rows: list[dict]) -> str:
    """One line per configuration: mean +- sd over its seeds; ERC areas with the fine-tuned model's comparisons
    and each score as the rejection order, at FMR 1e-2."""
    cells = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        kinds = [k for k in group[0]["spearman"] if k != "overall"]
        per_kind = ", ".join(f"{k} {np.mean([r['spearman'][k] for r in group]):+.2f}" for k in kinds)
        erc = [mean_spread([r["erc_area"]["1e-02"].get(s, float("nan")) for r in group], fmt="{:.4f}")
               for s in ("magnitude", *BASELINES)]
        below = [f"{100 * np.mean([r['below_original'][s]['overall'] for r in group]):.1f} %"
                 for s in ("magnitude", "pretrained_norm", "serfiq", "sharpness")]
        worst = min(kinds, key=lambda k: np.mean([r["below_original"]["magnitude"][k] for r in group]))
        below[0] += f" ({worst} {100 * np.mean([r['below_original']['magnitude'][worst] for r in group]):.1f} %)"
        cells.append([f"{name} ({group[0]['what']})", ",".join(str(r["seed"]) for r in group),
                      mean_spread([r["accuracy"] for r in group], 100.0, "{:.2f}") + " %",
                      mean_spread([r["spearman"]["overall"] for r in group]), per_kind, *below, *erc,
                      f"{np.mean([r['train_s'] for r in group]):.0f}"])
    return format_markdown(SEED_HEADER, cells) + "\n"


def run_seeds(names: list[str], seeds: list[int], runs: Path, out: Path, workers: int, machine: str) -> list[dict]:
    """Each configuration once per seed, each on the damaged set of that seed beside the baselines."""
    from eval.damage_set import make_damaged_set

    rows = read_rows(out / "rows.jsonl")
    for seed in seeds:
        damaged_set = make_damaged_set(DATA / "lfw" / "img.list", DATA / "lfw" / "pair.list",
                                       runs / f"damaged_lfw_s{seed}", seed=seed)
        files = baseline_score_files(damaged_set, runs / f"baselines_s{seed}")
        for name in names:
            if any(r["name"] == name and r.get("seed") == seed for r in rows):
                print(f"{name} seed {seed}: done already, skipped")
                continue
            t0 = time.perf_counter()
            ckpt, train_s = train_config(name, runs, workers, seed)
            scored = score(ckpt, damaged_set, runs / f"{name}_s{seed}" / "score", files)
            rows.append(make_row(name, ckpt, train_s, scored, machine, seed))
            write_rows(out, rows)
            print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f}s")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="folder for the training runs (outside the repository)")
    p.add_argument("--out", default=str(OUT), help="where rows.jsonl and table.md go")
    p.add_argument("--only", default="", help="comma list of configuration names (default: all)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--damaged-set", default="", help="an existing eval.damage set of the demo LFW pairs "
                   "(default: build RUNS/damaged_lfw)")
    p.add_argument("--seeds", default="", help="comma list of seeds: each configuration trains once per seed "
                   "(RUNS/NAME_sS) and is scored on the damaged set of that seed, beside the baselines")
    p.add_argument("--export", nargs=2, metavar=("NAME", "PTH"), help="write NAME's backbone (NAME_sS for a "
                   "seeded run) to PTH and stop")
    args = p.parse_args(argv)
    if args.export:
        name = args.export[0]
        epochs = ALL_CONFIGS[name.rsplit("_s", 1)[0] if name not in ALL_CONFIGS else name][0]
        runs = Path(args.runs)
        export_reference(runs / name / f"{epochs:05d}.pth", Path(args.export[1]), runs)
        if name.rsplit("_s", 1)[0] in FT_CONFIGS:  # the pretrained-start models ship with the anchored scale
            from eval.damage_set import make_damaged_set

            seed = int(name.rsplit("_s", 1)[1]) if "_s" in name else 0
            damaged = make_damaged_set(DATA / "lfw" / "img.list", DATA / "lfw" / "pair.list",
                                       runs / f"damaged_lfw_s{seed}", seed=seed)
            calibrate_anchored(Path(args.export[1]), damaged)
        return 0
    names = [n for n in args.only.split(",") if n] or list(FT_CONFIGS if args.seeds else CONFIGS)
    unknown = [n for n in names if n not in ALL_CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(ALL_CONFIGS)}")
    from eval.damage_set import make_damaged_set

    runs, out = Path(args.runs).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = format_machine(machine_info())
    print(machine)
    if args.seeds:
        rows = run_seeds(names, [int(s) for s in args.seeds.split(",")], runs, out, args.workers, machine)
        print(seed_table([r for r in rows if "seed" in r]))
        return 0
    damaged_set = Path(args.damaged_set) if args.damaged_set else \
        make_damaged_set(DATA / "lfw" / "img.list", DATA / "lfw" / "pair.list", runs / "damaged_lfw")
    rows = read_rows(out / "rows.jsonl")
    for name in names:
        if any(r["name"] == name for r in rows):
            print(f"{name}: done already, skipped")
            continue
        t0 = time.perf_counter()
        ckpt, train_s = train_config(name, runs, args.workers)
        rows.append(make_row(name, ckpt, train_s, score(ckpt, damaged_set, runs / name), machine))
        write_rows(out, rows)
        print(f"{name}: {time.perf_counter() - t0:.0f}s\n{markdown_table(rows[-1:])}")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
