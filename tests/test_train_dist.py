"""run/train_dist.py under torchrun (2 gloo processes on the CPU): it trains end to end and its epoch
checkpoint is a released-layout file with the whole [D, C] head that load_backbone and gen_feat read."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.distributed import DistNetworkError

from models.checkpoint import load_backbone
from models.magface import init_rows
from run.failures import explain_dist_error
from tests.training import child_env, run_python, state_dict_of, torchrun, train_args, write_list
from utils.convention import MAGFACE, to_model_input

CLASSES = 5

@pytest.mark.slow
def test_torchrun_two_ranks_end_to_end(celeba_dir, tmp_path):
    data = write_list(celeba_dir, tmp_path / "train.list", identities=CLASSES, per_identity=8)
    out = tmp_path / "run"
    args = train_args(data, out, classes=CLASSES, batch=8, epochs=2,
                      extra=("--input-size", "112", "--max-steps", "7", "--seed", "5"))
    done = torchrun(2, args, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "world size 2, 4/rank x 5 steps/epoch" in done.stdout
    assert sorted(p.name for p in out.glob("*.pth")) == ["00001.pth", "last.pth", "step_00000007.pth"]

    epoch_file = state_dict_of(out / "step_00000007.pth")
    head = epoch_file["module.fc.weight"]
    assert head.shape == (64, CLASSES) and torch.isfinite(head).all()
    torch.testing.assert_close(state_dict_of(out / "last.pth")["module.fc.weight"], head, rtol=0, atol=0)
    # both ranks' shards (classes 0-2 on rank 0, 3-4 on rank 1) were gathered and have trained
    initial = init_rows(0, CLASSES, 64, seed=5)
    moved = (head.t() - initial).norm(dim=1)
    assert (moved > 1e-4).all(), f"some classes kept their initial weights: {moved}"

    model, conv, info = load_backbone(out / "step_00000007.pth")
    assert info["arch"] == "iresnet18_w16" and info["epoch"] == 2 and conv == MAGFACE
    faces = [line.split()[0] for line in data.read_text().splitlines()[:6]]
    inf_list = tmp_path / "inf.list"
    inf_list.write_text("\n".join(faces) + "\n")
    feats = tmp_path / "feats.npz"
    dumped = run_python(["-m", "inference.gen_feat", "--resume", str(out / "step_00000007.pth"), "--inf_list",
                         str(inf_list), "--feat_list", str(feats), "--device", "cpu", "--workers", "0",
                         "--dtype", "fp32"],
                        timeout=300, env=child_env())
    assert dumped.returncode == 0, dumped.stdout[-3000:]

    images = torch.stack([torch.from_numpy(cv2.imread(f)).permute(2, 0, 1) for f in faces])
    with torch.no_grad():
        expected = model(to_model_input(images, MAGFACE)).numpy()
    got = np.load(feats)["features"]
    # after 7 steps the features reach 1e7 to 1e10 and gen_feat's folded BN rounds differently: compare each
    # row's magnitude and direction (measured within 3e-7 of its norm), not an element near zero on its own
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1, keepdims=True), norms, rtol=1e-5)
    np.testing.assert_allclose(got / norms, expected / norms, rtol=0, atol=1e-5)


GLOO_TIMEOUT = ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 8000ms "
                "for send operation to complete")
GLOO_LOST = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
             "[127.0.0.1]:41903")


def test_dist_failures_are_explained_in_one_line():
    hung = explain_dist_error(RuntimeError(GLOO_TIMEOUT), rank=0, timeout_s=8)
    assert str(hung).startswith("rank 0: a collective operation did not complete within --dist-timeout 8 s")
    assert GLOO_TIMEOUT in str(hung)
    lost = explain_dist_error(RuntimeError(GLOO_LOST), rank=1, timeout_s=1800)
    assert str(lost).startswith("rank 1: lost the connection to another rank, which probably died")
    joining = explain_dist_error(DistNetworkError("client socket has timed out"), 3, 30, joined=False)
    assert "could not join the process group within --dist-timeout 30 s" in str(joining)
    # errors that are not about the process group are left alone
    assert explain_dist_error(RuntimeError("DataLoader timed out after 5 seconds"), 0, 8) is None
    assert explain_dist_error(ValueError("bad training image"), 0, 8) is None


def test_each_torchrun_attempt_gets_its_own_store_namespace(monkeypatch):
    """torchrun's static rendezvous keeps one agent store across --max-restarts; keys written by a dead
    attempt (gloo's peer addresses) must not be visible to the next attempt."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    from tests.training import free_port
    from utils.dist import attempt_store

    port = free_port()
    agent = TCPStore("127.0.0.1", port, world_size=1, is_master=True, timeout=timedelta(seconds=10))  # noqa: F841
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # workers are clients of the agent's store
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = attempt_store(0, 1, timedelta(seconds=10))
    first.set("rank_1_address", "stale")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = attempt_store(0, 1, timedelta(seconds=10))
    assert not second.check(["rank_1_address"])
    second.set("rank_1_address", "fresh")
    assert first.get("rank_1_address") == b"stale" and second.get("rank_1_address") == b"fresh"
