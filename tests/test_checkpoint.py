"""Checkpoint compatibility: the released layouts read unchanged, ours read back exactly, bad files explained."""
from __future__ import annotations

import pickle

import pytest
import torch

from models import build_backbone
from models.checkpoint import (
    atomic_save,
    backbone_state,
    guess_arch,
    head_weight,
    load_backbone,
    read_checkpoint,
    save_released,
)
from utils.convention import INSIGHTFACE, MAGFACE, InputConvention


def _randomised(name: str, emb: int = 512, seed: int = 0) -> torch.nn.Module:
    """A backbone with non-trivial BN statistics so a wrong buffer would change the output."""
    torch.manual_seed(seed)
    model = build_backbone(name, embedding_size=emb)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["iresnet18", "iresnet34", "iresnet50",
                                  pytest.param("iresnet100", marks=pytest.mark.slow),
                                  pytest.param("iresnet200", marks=pytest.mark.slow)])
def test_released_round_trip_every_depth(arch, tmp_path):
    model = _randomised(arch)
    head = torch.randn(10, 512)
    path = tmp_path / f"{arch}.pth"
    save_released(path, model, head, epoch=3, arch=arch)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"epoch", "arch", "state_dict", "optimizer"}
    assert all(k.startswith("module.features.") for k in raw["state_dict"] if k != "module.fc.weight")
    assert raw["state_dict"]["module.fc.weight"].shape == (512, 10)
    loaded, conv, info = load_backbone(path)
    assert info["arch"] == arch and info["epoch"] == 3 and conv == MAGFACE
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        diff = (loaded(x) - model(x)).abs().max().item()
    assert diff < 1e-5
    torch.testing.assert_close(head_weight(read_checkpoint(path)), head)


def _foreign_layouts(model: torch.nn.Module) -> dict[str, dict]:
    sd = model.state_dict()
    return {
        "dataparallel": {"epoch": 25, "arch": "iresnet18", "optimizer": {},
                         "state_dict": {f"module.features.{k}": v for k, v in sd.items()}
                         | {"module.fc.weight": torch.randn(512, 7)}},
        "ddp_split_fc": {"epoch": 25, "arch": "iresnet18", "optimizer": {},
                         "state_dict": {f"features.module.{k}": v for k, v in sd.items()}
                         | {"parallel_fc.weight": torch.randn(7, 512)}},
        "insightface": dict(sd),
    }


@pytest.mark.parametrize("layout", ["dataparallel", "ddp_split_fc", "insightface"])
def test_foreign_layouts_load_unchanged(layout, tmp_path):
    model = _randomised("iresnet18", seed=1)
    path = tmp_path / f"{layout}.pth"
    torch.save(_foreign_layouts(model)[layout], path)
    if layout == "insightface":
        with pytest.warns(UserWarning, match="insightface"):
            loaded, conv, info = load_backbone(path)
        assert info["arch"] == "iresnet18"  # guessed from the keys
        assert conv == MAGFACE
        _, conv2, _ = load_backbone(path, convention=INSIGHTFACE)
        assert conv2 == INSIGHTFACE
    else:
        loaded, conv, info = load_backbone(path)
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() < 1e-5


def test_convention_travels_with_checkpoint(tmp_path):
    model = build_backbone("iresnet18_w16", embedding_size=64)
    conv = InputConvention("RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    save_released(tmp_path / "c.pth", model, None, 0, "iresnet18_w16", convention=conv, config={"lr": 0.1})
    _, got, info = load_backbone(tmp_path / "c.pth")
    assert got == conv and info["embedding_size"] == 64 and info["config"] == {"lr": 0.1}


def test_narrow_working_resolution_round_trip(tmp_path):
    model = build_backbone("iresnet18_w16", embedding_size=32, input_size=56).eval()
    save_released(tmp_path / "n.pth", model, None, 0, "iresnet18_w16", config={"input_size": 56})
    loaded, _, info = load_backbone(tmp_path / "n.pth")
    assert info["input_size"] == 56
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_mismatch_names_keys_and_likely_arch(tmp_path):
    sd = _randomised("iresnet34").state_dict()
    torch.save({"arch": "iresnet50", "state_dict": {f"module.features.{k}": v for k, v in sd.items()}},
               tmp_path / "m.pth")
    with pytest.raises(ValueError) as err:
        load_backbone(tmp_path / "m.pth")
    msg = str(err.value)
    assert "looks like iresnet34" in msg and "missing keys" in msg and "layer3.6.bn1.weight" in msg


def test_misshaped_key_is_reported(tmp_path):
    sd = _randomised("iresnet18").state_dict()
    sd["fc.weight"] = torch.zeros(256, sd["fc.weight"].shape[1])
    sd["features.weight"] = torch.zeros(512)
    with pytest.raises(ValueError, match="mis-shaped keys"):
        model = build_backbone("iresnet18")
        from models.checkpoint import load_backbone_state

        load_backbone_state(model, sd, "x.pth")


def test_guess_arch_on_all_registered_depths():
    for name in ("iresnet18", "iresnet50", "iresnet18_w16"):
        assert guess_arch(build_backbone(name, embedding_size=128).state_dict()) == name


class _Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_code_carrying_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_checkpoint(path)


def test_truncated_empty_and_foreign_files(tmp_path):
    good = tmp_path / "good.pth"
    save_released(good, build_backbone("iresnet18_w16", embedding_size=32), None, 0, "iresnet18_w16")
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    with open(tmp_path / "list.pth", "wb") as f:
        pickle.dump([1, 2, 3], f)
    for name, pattern in [("trunc.pth", "truncated"), ("empty.pth", "empty"), ("text.pth", "text.pth"),
                          ("list.pth", "list.pth")]:
        with pytest.raises(ValueError, match=pattern):
            load_backbone(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


def test_atomic_save_keeps_previous_on_failure(tmp_path):
    path = tmp_path / "ck.pth"
    atomic_save({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("fail mid-write")

    with pytest.raises(RuntimeError, match="fail mid-write"):
        atomic_save({"a": torch.zeros(3), "b": Boom()}, path)
    torch.testing.assert_close(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def test_backbone_state_rejects_empty():
    with pytest.raises(ValueError, match="no state dict"):
        backbone_state({"epoch": 1})
