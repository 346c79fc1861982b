"""Every entry point fails with one line naming the file at fault, no traceback unless --debug/MAGFACE_DEBUG."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import cli
from utils.logger import get_logger, run_handlers

REPO = Path(__file__).resolve().parents[1]


def run_entry(argv: list[str], cwd: Path, debug_env: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    env["PYTHONPATH"] = str(REPO)
    if debug_env:
        env[cli.DEBUG_ENV] = "1"
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _entry_points(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command line with a bad input, text the one line must hold)."""
    missing = str(tmp / "missing.list")
    ckpt = str(tmp / "missing.pth")
    return {
        "gen_feat": (["-m", "inference.gen_feat", "--inf_list", missing, "--feat_list", str(tmp / "f.list"),
                      "--resume", ckpt], "missing.list"),
        "gen_feat_as_file": ([str(REPO / "inference" / "gen_feat.py"), "--inf_list", missing, "--feat_list",
                              str(tmp / "f.list"), "--resume", ckpt], "missing.list"),
        "export_onnx": (["-m", "inference.export_onnx", "--resume", ckpt, "--out", str(tmp / "m.onnx")], "missing.pth"),
        "toy_example": (["-m", "inference.toy_example", "--resume", ckpt, "--images", str(tmp)], "missing.pth"),
        "eval.verification": (["-m", "eval.verification", "--feat-list", missing, "--pair-list", missing],
                              "missing.list"),
        "eval.ijb": (["-m", "eval.ijb", "--feat_list", missing, "--base_dir", str(tmp), "--type", "b"],
                     "ijbb_face_tid_mid.txt"),
        "eval.quality": (["-m", "eval.quality", "--feat-list", missing, "--pair-list", missing], "missing.list"),
        "eval.bin_io": (["-m", "eval.bin_io", "--img-list", missing, "--pair-list", missing, "--out",
                         str(tmp / "x.bin")], "missing.list"),
        "faces.align": (["-m", "faces.align", "--landmarks", missing, "--src-root", str(tmp), "--out",
                         str(tmp / "aligned")], "missing.list"),
        "pack_rec": (["-m", "dataloader.pack_rec", "--train_list", missing, "--out", str(tmp / "rec")], "missing.list"),
        "run.demo": (["-m", "run.demo", "--arch", "no_such_arch", "--out", str(tmp / "demo")], "no_such_arch"),
        "eval.cluster": (["-m", "eval.cluster", "--feat-list", missing, "--label-list", missing], "missing.list"),
        "eval.damage": (["-m", "eval.damage", "score", "--set", str(tmp / "noset"), "--feat-list", missing],
                        "damage.csv"),
        "inference.assess": (["-m", "inference.assess", str(tmp / "photo.jpg"), "--resume", ckpt, "--out",
                              str(tmp / "assessed")], "missing.pth"),
        "inference.calibrate": (["-m", "inference.calibrate", "--resume", ckpt, "--feat-list", missing],
                                "missing.list"),
        "dataloader.prepare": (["-m", "dataloader.prepare", "--photos", str(tmp / "no_photos"), "--out",
                                str(tmp / "prepared")], "no_photos"),
        "run.train": (["-m", "run.train", "--arch", "iresnet18_w16", "--train_list", missing, "--pth-save-fold",
                       str(tmp / "run"), "--device", "cpu"], "missing.list"),
    }


@pytest.mark.slow
def test_every_entry_point_fails_in_one_line(tmp_path):
    for name, (argv, needle) in _entry_points(tmp_path).items():
        result = run_entry(argv, tmp_path)
        # the trainers log (to stdout, and their log file) once their logger is set up; the others use stderr
        stream = result.stdout if name.startswith("run.train") else result.stderr
        err = [line for line in stream.splitlines() if "error" in line.lower()]
        assert result.returncode == 2, (name, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, (name, result.stderr)
        assert len(err) == 1 and needle in err[0] and "error:" in err[0], (name, result.stdout, result.stderr)
        if stream is result.stderr:
            assert result.stderr.strip() == err[0], (name, result.stderr)


def test_gen_feat_missing_image_names_the_line_and_debug_shows_the_traceback(lfw_dir, tmp_path):
    listed = (lfw_dir / "img.list").read_text().split()[:2]
    (tmp_path / "img.list").write_text(f"{lfw_dir / listed[0]}\n{lfw_dir / listed[1]}\nimages/gone.jpg\n")
    argv = ["-m", "inference.gen_feat", "--inf_list", "img.list", "--feat_list", "f.list", "--resume", "none.pth"]
    # the list is read before the checkpoint: the missing image is the first fault
    quiet = run_entry(argv, tmp_path)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()]
    assert "img.list:3" in quiet.stderr and "gone.jpg" in quiet.stderr
    for loud in (run_entry(argv + ["--debug"], tmp_path), run_entry(argv, tmp_path, debug_env=True)):
        assert loud.returncode != 0 and "Traceback" in loud.stderr and "img.list:3" in loud.stderr
    assert not (tmp_path / "f.list").exists()


def test_run_cli_codes_and_debug(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    # no run's logger set up (tests/conftest.py removes what an earlier test's trainer left behind)
    assert not run_handlers()

    def bad_input(argv):
        raise ValueError(f"data.list:7: bad label ({argv})")

    def bug(argv):
        return [][1]

    assert cli.run_cli(bad_input, ["--x"], "tool") == 2
    assert capsys.readouterr().err == "tool: error: data.list:7: bad label (['--x'])\n"
    assert cli.run_cli(bug, [], "tool") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tool: error: IndexError: list index out of range (at ")
    assert "test_cli_errors.py:" in err and "--debug" in err and "\n" not in err
    assert cli.run_cli(lambda argv: 3, [], "tool") == 3
    assert cli.run_cli(lambda argv: {"done": True}, [], "tool") == 0
    with pytest.raises(ValueError, match="bad label"):
        cli.run_cli(bad_input, ["--debug"], "tool")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(IndexError):
        cli.run_cli(bug, [], "tool")


def test_run_cli_reports_to_the_log_once_a_logger_is_set_up(capsys, monkeypatch):
    """A trainer's failure line goes to its log handlers (console and file), not a second time to stderr."""
    records = []

    class Keep(logging.Handler):
        magface_run = True  # as setup_logger marks its own

        def emit(self, record):
            records.append(record.getMessage())

    monkeypatch.setattr(get_logger(), "handlers", [Keep()])
    assert cli.run_cli(lambda argv: int("x"), [], "train") == 2  # bad input
    assert len(records) == 1 and records[0].startswith("train: error: invalid literal")
    assert capsys.readouterr().err == ""


def test_error_label_is_red_only_on_a_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli.error_label(Tty()).startswith("\x1b[") and "error:" in cli.error_label(Tty())
    assert cli.error_label(io.StringIO()) == "error:"
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli.error_label(Tty()) == "error:"


def test_split_debug_keeps_everything_else(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.split_debug(["--a", "1", "--debug", "--b"]) == (["--a", "1", "--b"], True)
    assert cli.split_debug(["--a", "--", "--debug"])[1] is False


def test_one_precision_table():
    import torch

    from utils.precision import DTYPES, amp_dtype

    assert amp_dtype("none") is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    assert DTYPES["fp32"] is torch.float32
    with pytest.raises(ValueError, match="--amp 'fp32': expected none, bf16 or fp16"):
        amp_dtype("fp32")
