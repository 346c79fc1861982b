"""The single-process trainer on real faces: it learns, both launch styles work, its files are readable,
and bad data stops it before training with the file and line named."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest
import torch

from models import build_backbone
from models.checkpoint import load_backbone
from run import train as train_entry
from tests.training import (
    ARCH,
    child_env,
    run_python,
    train_args,
    write_list,
)

LOSS_LINE = re.compile(r"global step (\d+) lr \S+ loss (\S+)")


pytestmark = pytest.mark.usefixtures("one_thread_and_restore")


def step_losses(log: Path) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(log.read_text())}


def test_loss_falls_on_real_faces(celeba_dir, tmp_path):
    """48 steps on 10 identities: the mean loss of the last 6 steps is well below that of the first 6.

    (With the easy margin the first step has no margin yet, so the loss rises for a few steps before
    it falls; the first six steps still average well above the last six.)
    """
    data = write_list(celeba_dir, tmp_path / "train.list", identities=10, per_identity=16)
    out = tmp_path / "run"
    args = train_args(data, out, classes=10, batch=16, epochs=8,
                      extra=("--lr", "0.01", "--max-steps", "48", "--embedding-size", "128"))
    train_entry.main(args)
    losses = step_losses(out / "train.log")
    assert sorted(losses) == list(range(1, 49))
    first = sum(losses[s] for s in range(1, 7)) / 6
    last = sum(losses[s] for s in range(43, 49)) / 6
    assert last < 0.75 * first, f"loss did not fall: first steps {first:.3f}, last steps {last:.3f}"


def seed_style_load(path: Path, arch: str, embedding_size: int, input_size: int) -> torch.nn.Module:
    """What the seed's tools do: plain torch.load, strip 'module.features.', strict load."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    backbone = {k[len("module.features."):]: v for k, v in state.items() if k.startswith("module.features.")}
    assert set(state) - {f"module.features.{k}" for k in backbone} == {"module.fc.weight"}
    model = build_backbone(arch, embedding_size, input_size=input_size)
    model.load_state_dict(backbone, strict=True)
    return model.eval()


@pytest.mark.parametrize("launch", [["run/train.py"], ["-m", "run.train"]], ids=["script", "module"])
def test_cli_starts_and_writes_readable_checkpoints(celeba_dir, tmp_path, launch):
    """--help and a 2-step run at the released 112x112 resolution, launched both ways."""
    helped = run_python([*launch, "--help"], timeout=120)
    assert helped.returncode == 0 and "--last-fc-size" in helped.stdout and "--resume" in helped.stdout
    data = write_list(celeba_dir, tmp_path / "train.list", identities=4, per_identity=4)
    out = tmp_path / "run"
    args = train_args(data, out, classes=4, batch=4, epochs=3, extra=("--max-steps", "2", "--input-size", "112"))
    done = run_python([*launch, *args], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    # --max-steps mid-epoch writes a released-layout file named by its global step, not like a finished epoch
    assert sorted(p.name for p in out.glob("*.pth")) == ["last.pth", "step_00000002.pth"]
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == ARCH and config["max_steps"] == 2 and config["world_size"] == 1
    model, _, info = load_backbone(out / "step_00000002.pth")
    seed_model = seed_style_load(out / "step_00000002.pth", ARCH, 64, 112)
    assert info["arch"] == ARCH and info["embedding_size"] == 64
    faces = torch.from_numpy(cv2.imread(str(celeba_dir / "images/7201/001085.jpg"))).permute(2, 0, 1)[None]
    x = faces.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(model(x), seed_model(x), rtol=0, atol=0)
    head = torch.load(out / "step_00000002.pth", weights_only=True)["state_dict"]["module.fc.weight"]
    assert head.shape == (64, 4)
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["position"] == {"epoch": 0, "step_in_epoch": 2, "global_step": 2}
    torch.testing.assert_close(state["state_dict"]["module.fc.weight"], head, rtol=0, atol=0)


def _bad_list(celeba_dir: Path, tmp_path: Path, bad_line: str, at: int = 3) -> Path:
    good = write_list(celeba_dir, tmp_path / "good.list", identities=2, per_identity=4).read_text().splitlines()
    good.insert(at - 1, bad_line)
    out = tmp_path / "bad.list"
    out.write_text("\n".join(good) + "\n")
    return out


def _fails_before_training(args: list[str], error: type[Exception], *needles: str) -> str:
    with pytest.raises(error) as info:
        train_entry.main(args)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_missing_image_stops_before_training(celeba_dir, tmp_path):
    missing = tmp_path / "nowhere" / "gone.jpg"
    data = _bad_list(celeba_dir, tmp_path, f"{missing} 0 1 0")
    out = tmp_path / "run"
    _fails_before_training(train_args(data, out, classes=2, batch=4), FileNotFoundError, f"{data}:3", str(missing))
    assert not list(out.glob("*.pth"))


def test_label_outside_fc_size_stops_before_training(celeba_dir, tmp_path):
    face = celeba_dir / "images/7201/001085.jpg"
    data = _bad_list(celeba_dir, tmp_path, f"{face} 0 7 0", at=5)
    out = tmp_path / "run"
    _fails_before_training(train_args(data, out, classes=2, batch=4), ValueError, f"{data}:5", "identity 7",
                           "--last-fc-size")


def test_unreadable_image_stops_before_any_update(celeba_dir, tmp_path):
    """A corrupt file is found when its batch is loaded: the error names it and its line, no step runs."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    data = _bad_list(celeba_dir, tmp_path, f"{broken} 0 1 0", at=1)
    out = tmp_path / "run"
    # batch 9 = the whole list: the broken file is in the first batch whatever the shuffle
    _fails_before_training(train_args(data, out, classes=2, batch=9), ValueError, str(broken),
                           f"line 1 of {data}")
    assert "global step" not in (out / "train.log").read_text()
    assert not list(out.glob("*.pth"))


def test_cli_reports_bad_data_in_one_line(celeba_dir, tmp_path):
    """The command line turns the error into one 'error:' line and exit status 2 (no traceback)."""
    missing = tmp_path / "gone.jpg"
    data = _bad_list(celeba_dir, tmp_path, f"{missing} 0 1 0")
    code = train_entry.cli(train_args(data, tmp_path / "run", classes=2, batch=4))
    assert code == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"train.py: error: {data}:3: image {missing} does not exist" in log
    done = run_python(["run/train.py", *train_args(data, tmp_path / "run2", classes=2, batch=4)], 120,
                      child_env())
    assert done.returncode == 2 and "Traceback" not in done.stdout
    assert f"error: {data}:3: image {missing} does not exist" in done.stdout
