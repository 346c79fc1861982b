"""The same-card race script's logic on the CPU (bench/race_arcface.py): staging, config, parsing, stopping.

arcface_torch itself is not in the repository; a stand-in ``train_v2.py`` written here reads the staged config
the way theirs does (``configs/<name>`` imported as a module after ``configs.base``) and prints rate lines in
their format without end, so the race must stop it. Our side is the real ``run.train``, tiny, on the CPU.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from bench import race_arcface

FAKE_TRAIN = '''
import importlib, itertools, sys, time
import easydict  # stand-in when missing
import mxnet  # noqa: F401  stand-in when missing
sys.path.insert(0, ".")
cfg = importlib.import_module(sys.argv[1].replace("/", "."))
c = cfg.config
assert isinstance(c, easydict.EasyDict) and c.rec == "synthetic" and c.val_targets == []
print(f"config network={c.network} batch={c.batch_size} classes={c.num_classes} fp16={c.fp16}", flush=True)
for step in itertools.count():
    print(f"Training: 2026 INFO Speed {1000 + step:.2f} samples/sec   Loss {40 - step / 10:.4f}   "
          f"LearningRate 0.100000   Epoch: 0   Global Step: {step * c.frequent}   Required: 1 hours", flush=True)
    time.sleep(0.02)
'''


def _fake_arcface(root: Path) -> Path:
    src = root / "arcface_torch"
    (src / "configs").mkdir(parents=True)
    (src / "configs" / "__init__.py").write_text("")
    (src / "train_v2.py").write_text(FAKE_TRAIN)
    return src


def test_their_rate_line_and_ours_parse() -> None:
    theirs = ("Training: 2026-12-07 10:00:01 INFO Speed 2413.87 samples/sec   Loss 41.2012   LearningRate 0.100000   "
              "Epoch: 0   Global Step: 20   Fp16 Grad Scale: 65536   Required: 9 hours")
    found = race_arcface.THEIR_RATE.search(theirs)
    assert found and (found.group(1), found.group(2)) == ("2413.87", "41.2012")
    ours = ("2026-12-07 15:04:09 [rank 0] INFO epoch 0 [3/6] global step 3 lr 0.10000 loss 35.7884 L_id 32.2891 "
            "lambda_g*L_g 3.4992 acc 31.25% mag 7.83 [5.16, 12.72] margin 0.4504 18.5 img/s ETA 00:00:15")
    found = race_arcface.OUR_RATE.search(ours)
    assert found and (found.group(1), found.group(2)) == ("35.7884", "18.5")
    assert race_arcface.summarise([1.0, 100.0, 3.0, 5.0, 4.0], [9.0, 8.0, 7.5], warmup=2) == (4.0, "9.000 -> 7.500")


def test_a_silent_program_is_stopped_at_the_time_limit(tmp_path: Path) -> None:
    silent = "import time; print('Speed 5.00 samples/sec   Loss 1.0000', flush=True); time.sleep(60)"
    cmd = [sys.executable, "-c", silent]
    t0 = time.monotonic()
    rates, losses, status = race_arcface.read_rates(cmd, tmp_path, dict(os.environ), race_arcface.THEIR_RATE, 1, 2,
                                                    wanted=3, timeout_s=2.0, log_path=tmp_path / "log.txt")
    assert (rates, losses, status) == ([5.0], [1.0], "timeout")
    assert time.monotonic() - t0 < 30  # not the program's 60 s


def test_a_folder_without_train_v2_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no train_v2.py"):
        race_arcface.stage_arcface(tmp_path, tmp_path / "copy", "", "python")


@pytest.mark.slow
def test_race_runs_both_and_stops_theirs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _fake_arcface(tmp_path)
    out = tmp_path / "race.json"
    rows = race_arcface.main(["--arcface-dir", str(src), "--archs", "r18", "--batch-size", "4", "--classes", "50",
                              "--embedding-size", "32", "--no-fp16", "--frequent", "1", "--warmup-reports", "1",
                              "--reports", "3", "--device", "cpu", "--timeout", "240", "--work-dir",
                              str(tmp_path / "work"), "--json", str(out), "--ours-extra", "--input-size", "56"])
    row = rows[0]
    assert row["status"] == "ok", row
    assert row["arcface_img_s"] == 1002.0  # median of 1001, 1002, 1003 after one warm-up report
    assert row["arcface_loss"] == "40.000 -> 39.700"
    assert row["ours_img_s"] > 0 and row["ratio"] == pytest.approx(row["ours_img_s"] / 1002.0)
    log = (tmp_path / "work" / "r18" / "arcface.log").read_text()
    assert "config network=r18 batch=4 classes=50 fp16=False" in log
    assert len(re.findall("Speed", log)) == 4  # stopped at the fourth report, not left running
    assert len(re.findall(r"img/s", (tmp_path / "work" / "r18" / "ours.log").read_text())) >= 4
    assert json.loads(out.read_text())["results"][0]["arch"] == "r18"
    assert "ratio" in capsys.readouterr().out
