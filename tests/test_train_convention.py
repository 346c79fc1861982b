"""The input convention chosen for training reaches the batches and travels with every checkpoint."""
from __future__ import annotations

import pytest
import torch

from models.checkpoint import load_backbone
from run import train
from run.engine import StepConfig, prepare_batch
from utils.convention import INSIGHTFACE, MAGFACE


def test_prepare_batch_applies_convention():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1])
    base = dict(device=torch.device("cpu"), batch_size=2)
    x_mag, _ = prepare_batch(images, labels, StepConfig(**base, convention=MAGFACE), global_step=0)
    x_ins, _ = prepare_batch(images, labels, StepConfig(**base, convention=INSIGHTFACE), global_step=0)
    # same flips (same seed and step): insightface = RGB order, 2 * (x/255) - 1
    torch.testing.assert_close(x_ins, 2 * x_mag.flip(1) - 1)


@pytest.mark.usefixtures("one_thread_and_restore")
def test_trained_checkpoints_record_convention(tmp_path):
    out = tmp_path / "run"
    result = train.main(["--arch", "iresnet18_w16", "--embedding-size", "32", "--synthetic", "64",
                         "--last-fc-size", "8", "--batch-size", "16", "--max-steps", "2", "--device", "cpu",
                         "--workers", "0", "--pth-save-fold", str(out), "--input-convention", "insightface",
                         "--tensorboard", "0", "--epochs", "1"])
    for path in (result["checkpoints"][-1], out / "last.pth"):
        assert load_backbone(path)[1] == INSIGHTFACE
