"""Same-card race: insightface arcface_torch's ``train_v2.py`` against our ``run.train``, same settings, one run.

    git clone --depth 1 <insightface repository> /tmp/insightface           # beforehand: nothing is fetched here
    python -m bench.race_arcface --arcface-dir /tmp/insightface/recognition/arcface_torch --archs r50,r100 \
        --json race.json

For each backbone both trainers run on synthetic data, one process on the visible GPU, the same batch, class
count (85,742 as MS1MV2), embedding size and precision (arcface_torch's fp16 default; ours ``--amp fp16``),
each from its own command line as a user would type it. Their code runs from a temporary copy with a config
module written for the race (``rec = "synthetic"``, no validation sets); two stand-ins let it start without
packages that the synthetic path never uses (``easydict``: a dict with attribute access, only when missing;
``mxnet``: an empty module, only when missing). Throughput is the median of the reported rates after
``--warmup-reports`` reports: "Speed X samples/sec" lines for theirs, "X img/s" for ours; their run is
stopped once it has given enough. Printed: both rates, ours / theirs, and the first and last reported loss
of each (their synthetic set is one image of one class, ours random images: the losses are not comparable,
only their finiteness is).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.common import csv_arg, format_machine, machine_info, print_results, row_line

ARCHS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100"}
THEIR_RATE = re.compile(r"Speed ([\d.]+) samples/sec\s+Loss ([\d.naif]+)")
OUR_RATE = re.compile(r" loss ([\d.naif]+) .* ([\d.]+) img/s")
COLUMNS = ("arch", "batch", "classes", "precision", "arcface_img_s", "ours_img_s", "ratio", "arcface_loss",
           "ours_loss", "status")
EASYDICT_STANDIN = '''"""Stand-in for easydict, written by bench.race_arcface: a dict whose keys are attributes."""


class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value
'''
MXNET_STANDIN = '"""Empty stand-in for mxnet, written by bench.race_arcface: the synthetic path never calls it."""\n'


def race_config(arch: str, batch: int, classes: int, embedding: int, fp16: bool, reports: int, frequent: int,
                output: Path) -> str:
    """The arcface_torch config module of one race (read by their ``utils.utils_config.get_config``)."""
    images = batch * frequent * (reports + 2) * 10  # the schedule's length only; the run is stopped earlier
    return "\n".join([
        '"""Written by bench.race_arcface: synthetic data, no validation, the race\'s sizes."""',
        "from easydict import EasyDict as edict",
        "",
        "config = edict()",
        "config.margin_list = (1.0, 0.5, 0.0)",
        f"config.network = {arch!r}",
        "config.resume = False",
        f"config.output = {str(output)!r}",
        f"config.embedding_size = {embedding}",
        "config.sample_rate = 1.0",
        f"config.fp16 = {fp16}",
        "config.momentum = 0.9",
        "config.weight_decay = 5e-4",
        f"config.batch_size = {batch}",
        "config.lr = 0.1",
        "config.verbose = 10 ** 9",
        f"config.frequent = {frequent}",
        "config.dali = False",
        'config.rec = "synthetic"',
        f"config.num_classes = {classes}",
        f"config.num_image = {images}",
        "config.num_epoch = 1",
        "config.warmup_epoch = 0",
        "config.val_targets = []",
        "",
    ])


def _missing(module: str, python: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode != 0


def stage_arcface(src: Path, dest: Path, config_text: str, python: str) -> dict[str, str]:
    """Copy their code to ``dest``, add the race config and the stand-ins it lacks; returns the environment."""
    if not (src / "train_v2.py").is_file() or not (src / "configs").is_dir():
        raise FileNotFoundError(f"--arcface-dir {src}: no train_v2.py and configs/ there (give the "
                                "recognition/arcface_torch folder of an insightface checkout)")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "work_dirs", "__pycache__"))
    (dest / "configs" / "magface_race.py").write_text(config_text)
    standins = dest / "_race_standins"
    standins.mkdir()
    for module, text in (("easydict", EASYDICT_STANDIN), ("mxnet", MXNET_STANDIN)):
        if _missing(module, python):
            (standins / f"{module}.py").write_text(text)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(standins), os.environ.get("PYTHONPATH")])))


def read_rates(cmd: list[str], cwd: Path, env: dict[str, str], pattern: re.Pattern, rate_group: int,
               loss_group: int, wanted: int, timeout_s: float, log_path: Path) -> tuple[list[float], list[float], str]:
    """Run ``cmd``, collect (rate, loss) from its output until ``wanted`` reports, then stop it (its whole process
    group). Returns the rates, the losses and how it ended ("ok", "exit N", "timeout"). The time limit holds
    even when the program falls silent: a timer stops the group, which ends its output."""
    rates: list[float] = []
    losses: list[float] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        timed_out = threading.Event()
        timer = threading.Timer(timeout_s, lambda: (timed_out.set(), _stop_group(proc)))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                found = pattern.search(line)
                if found:
                    rates.append(float(found.group(rate_group)))
                    losses.append(float(found.group(loss_group)))
                if len(rates) >= wanted:
                    return rates, losses, "ok"
            code = proc.wait()
            if timed_out.is_set():
                return rates, losses, "timeout"
            return rates, losses, "ok" if code == 0 and len(rates) >= wanted else f"exit {code}"
        finally:
            timer.cancel()
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``proc`` (a trainer and its loader workers), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def summarise(rates: list[float], losses: list[float], warmup: int) -> tuple[float, str]:
    measured = rates[warmup:]
    rate = statistics.median(measured) if measured else float("nan")
    loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
    return rate, loss


def race_one(arch: str, args: argparse.Namespace, work: Path) -> dict:
    wanted = args.warmup_reports + args.reports
    row: dict = {"arch": arch, "batch": args.batch_size, "classes": args.classes,
                 "precision": "fp16" if args.fp16 else "fp32"}
    out = work / arch
    out.mkdir(parents=True)
    env = stage_arcface(Path(args.arcface_dir), out / "arcface_torch",
                        race_config(arch, args.batch_size, args.classes, args.embedding_size, args.fp16, wanted,
                                    args.frequent, out / "arcface_out"), args.python)
    theirs = [args.torchrun, "--standalone", "--nproc_per_node", "1", "train_v2.py", "configs/magface_race"]
    rates, losses, status = read_rates(theirs, out / "arcface_torch", env, THEIR_RATE, 1, 2, wanted, args.timeout,
                                       out / "arcface.log")
    row["arcface_img_s"], row["arcface_loss"] = summarise(rates, losses, args.warmup_reports)
    ours = [args.python, "-m", "run.train", "--synthetic", str(args.batch_size * args.frequent * (wanted + 1)),
            "--arch", ARCHS.get(arch, arch), "--batch-size", str(args.batch_size), "--last-fc-size", str(args.classes),
            "--embedding-size", str(args.embedding_size), "--max-steps", str(args.frequent * wanted),
            "--print-freq", str(args.frequent), "--device", args.device, "--pth-save-fold", str(out / "ours"),
            "--overwrite", *(["--amp", "fp16"] if args.fp16 else []), *args.ours_extra]
    our_rates, our_losses, our_status = read_rates(ours, Path.cwd(), dict(os.environ), OUR_RATE, 2, 1, wanted,
                                                   args.timeout, out / "ours.log")
    row["ours_img_s"], row["ours_loss"] = summarise(our_rates, our_losses, args.warmup_reports)
    row["ratio"] = row["ours_img_s"] / row["arcface_img_s"] if row["arcface_img_s"] > 0 else float("nan")
    row["status"] = "ok" if status == our_status == "ok" else f"arcface {status}, ours {our_status}"
    return row


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arcface-dir", required=True, help="recognition/arcface_torch of an insightface checkout")
    p.add_argument("--archs", type=csv_arg, default="r50,r100", help=f"arcface_torch names: {sorted(ARCHS)}")
    p.add_argument("--batch-size", type=int, default=128, help="per GPU (arcface_torch's ms1mv2 configs: 128)")
    p.add_argument("--classes", type=int, default=85742)
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="both in fp16 autocast (arcface_torch's default); --no-fp16: both fp32")
    p.add_argument("--frequent", type=int, default=10, help="steps between two reported rates")
    p.add_argument("--warmup-reports", type=int, default=3, help="reports left out (start-up, compilation)")
    p.add_argument("--reports", type=int, default=10, help="reports the median is taken over")
    p.add_argument("--device", default="cuda", help="our trainer's --device")
    p.add_argument("--ours-extra", nargs=argparse.REMAINDER, default=[],
                   help="more flags for our run.train (last on the line), e.g. --compile on")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per trainer run")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--torchrun", default=str(Path(sys.executable).with_name("torchrun")))
    p.add_argument("--work-dir", default=None, help="keep the runs' folders and logs here (default: a temporary one)")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        raise SystemExit(f"race_arcface: --archs {unknown}: arcface_torch names are {sorted(ARCHS)}")
    info = machine_info()
    print(format_machine(info), flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="race_arcface_"))
    rows = []
    for arch in args.archs:
        try:
            row = race_one(arch, args, work)
        except (OSError, ValueError) as e:
            row = {"arch": arch, "status": f"FAILED {e}"[:300]}
        rows.append(row)
        print(row_line(row), flush=True)
    print_results(f"same-card race, synthetic data, one process; logs under {work}", info, rows, COLUMNS,
                  args.json, args)
    return rows


if __name__ == "__main__":
    main()
