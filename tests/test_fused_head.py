"""The fused (chunked) head equals the dense MagFaceHead: loss, every output and every gradient, in fp32
and under bf16 autocast, for chunk sizes that do and do not divide the class count; training with it
gives the dense run's losses and the same checkpoint layout; the compile-mode options reach torch.compile."""
from __future__ import annotations

import itertools

import pytest
import torch

from models import MagFaceConfig, MagFaceHead, build_backbone
from models.fused import ChunkedMagFaceHead
from run import build
from run import train as train_entry
from run.config import TrainConfig
from run.engine import Progress, StepConfig, train_one_epoch
from tests.training import train_args, write_list
from utils.dist import DistInfo

C, D = 37, 16


def _pair(chunk: int, **kw) -> tuple[MagFaceHead, ChunkedMagFaceHead]:
    dense = MagFaceHead(D, C, MagFaceConfig(**kw))
    fused = ChunkedMagFaceHead(D, C, MagFaceConfig(**kw), chunk=chunk)
    fused.load_state_dict(dense.state_dict())
    return dense, fused


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(7, D, generator=g)
    f = f / f.norm(dim=1, keepdim=True) * torch.tensor([5.0, 12.0, 40.0, 80.0, 109.0, 150.0, 60.0]).unsqueeze(1)
    labels = torch.tensor([0, 36, 5, 5, 17, 36, 9])  # first, last, repeated classes
    return f, labels


def _run(head, f, labels):
    f = f.clone().requires_grad_()
    out = head(f, labels)
    out["loss"].backward()
    return out, f.grad, head.weight.grad


@pytest.mark.parametrize("chunk,margin,easy", [(1, "arc", True), (8, "arc", True), (C, "arc", False),
                                               (100, "cos", True), (5, "arc", False)])
def test_fused_head_equals_dense(chunk: int, margin: str, easy: bool) -> None:
    dense, fused = _pair(chunk, variant=margin, easy_margin=easy)
    f, labels = _inputs()
    with torch.no_grad():  # sample 2 points away from its class: theta + m > pi on the non-easy branch
        f[2] = -fused.weight[5] / fused.weight[5].norm() * 40.0 + 0.01 * f[2]
    out_d, gf_d, gw_d = _run(dense, f, labels)
    out_f, gf_f, gw_f = _run(fused, f, labels)
    for key in ("loss", "loss_id", "loss_g", "loss_g_weighted", "x_norm", "m_a", "accuracy"):
        torch.testing.assert_close(out_f[key], out_d[key], rtol=1e-5, atol=1e-5)
    # fp32 sums in another order: entries that cancel get an absolute tolerance relative to the largest
    torch.testing.assert_close(gf_f, gf_d, rtol=1e-4, atol=1e-5 * float(gf_d.abs().max()))
    torch.testing.assert_close(gw_f, gw_d, rtol=1e-4, atol=1e-5 * float(gw_d.abs().max()))
    assert gw_f.abs().sum() > 0 and gf_f.abs().sum() > 0


def test_fused_head_accuracy_counts_hits() -> None:
    dense, fused = _pair(4)
    f = fused.weight[[3, 20, 30]].detach() * 1000.0  # each sample on its class: all correct
    assert fused(f, torch.tensor([3, 20, 30]))["accuracy"] == 1.0
    assert fused(f, torch.tensor([4, 20, 30]))["accuracy"] == pytest.approx(2 / 3)
    assert dense(f, torch.tensor([4, 20, 30]))["accuracy"] == pytest.approx(2 / 3)


def test_fused_head_under_bf16_autocast_gives_the_dense_backbone_gradients() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("iresnet18_w16", D, input_size=56)
    dense, fused = _pair(10)
    x, labels = torch.rand(4, 3, 56, 56), torch.tensor([1, 2, 30, 2])
    grads, losses = [], []
    for head in (dense, fused):
        backbone.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(backbone(x), labels)
        assert out["loss"].dtype == torch.float32  # head, margin and regulariser stay fp32
        out["loss"].backward()
        losses.append(out["loss"].detach())
        grads.append([p.grad.clone() for p in itertools.chain(backbone.parameters(), head.parameters())])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)


def test_fused_head_errors() -> None:
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        ChunkedMagFaceHead(D, C, chunk=0)
    _, fused = _pair(8)
    f, _ = _inputs()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 37\)"):
        fused(f, torch.tensor([0, 1, 2, 3, 4, 5, 37]))
    out = fused(f.requires_grad_(), torch.zeros(7, dtype=torch.long))
    out["loss"].backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagate it once"):
        out["loss"].backward()
    with pytest.raises(ValueError, match="--head-impl"):
        TrainConfig(synthetic=8, head_impl="chunks").validate()
    with pytest.raises(ValueError, match="--head-chunk must be positive"):
        TrainConfig(synthetic=8, head_chunk=0).validate()
    cfg = TrainConfig(synthetic=8, head_impl="fused", last_fc_size=C, embedding_size=D)
    with pytest.raises(ValueError, match="single-process training"):
        build.build_head(cfg, DistInfo(0, 2, 0, "gloo"), torch.device("cpu"))


def _losses(log) -> list[float]:
    return [float(line.split(" loss ")[1].split()[0]) for line in log.read_text().splitlines() if " loss " in line
            and "step" in line and "epoch" in line and "done" not in line]


@pytest.mark.usefixtures("one_thread_and_restore")
def test_training_with_the_fused_head_matches_dense_and_keeps_the_checkpoint(celeba_dir, tmp_path) -> None:
    data = write_list(celeba_dir, tmp_path / "train.list", 5, per_identity=8)
    runs = {}
    for impl in ("dense", "fused"):
        out = tmp_path / impl
        train_entry.main([*train_args(data, out, 5, epochs=1), "--head-impl", impl, "--head-chunk", "2"])
        runs[impl] = out
    dense_losses, fused_losses = _losses(runs["dense"] / "train.log"), _losses(runs["fused"] / "train.log")
    assert len(dense_losses) == 5
    # The first steps agree to float rounding; at batch 8 and lr 0.1 rounding differences grow ~50x per
    # step (a dense run whose head is scaled by 1 + 1e-6 drifts from the dense run just as far), so the
    # later steps are only compared loosely. The head tests above hold the exact contract.
    assert fused_losses[:2] == pytest.approx(dense_losses[:2], rel=1e-5)
    assert fused_losses == pytest.approx(dense_losses, rel=2e-2)
    for name in ("last.pth", "00001.pth"):
        a, b = (torch.load(runs[i] / name, weights_only=True) for i in ("dense", "fused"))
        assert a.keys() == b.keys()
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, value in a["state_dict"].items():
            assert (b["state_dict"][key].shape, b["state_dict"][key].dtype) == (value.shape, value.dtype), key
    # a dense run's last.pth resumes with the fused head (a speed option, not a hyper-parameter)
    train_entry.main([*train_args(data, runs["dense"], 5, epochs=2), "--head-impl", "fused", "--resume", "auto"])
    assert (runs["dense"] / "00002.pth").is_file()


def test_compile_mode_reaches_torch_compile(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(build.torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    for mode, expected in (("default", None), ("reduce-overhead", "reduce-overhead"),
                           ("max-autotune", "max-autotune")):
        cfg = TrainConfig(arch="iresnet18_w16", embedding_size=D, last_fc_size=C, synthetic=8, device="cpu",
                          compile="on", compile_mode=mode)
        cfg.validate()
        build.build_run(cfg, DistInfo())
        assert seen[-1] == expected
        assert not build.uses_cudagraphs(cfg, torch.device("cpu"))
        assert build.uses_cudagraphs(cfg, torch.device("cuda")) == (mode != "default")
    with pytest.raises(ValueError, match="--compile-mode must be one of"):
        TrainConfig(synthetic=8, compile_mode="fast").validate()


def test_the_loop_marks_each_step_for_cuda_graphs(monkeypatch) -> None:
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    backbone, head = build_backbone("iresnet18_w16", D, input_size=56), MagFaceHead(D, C)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01)
    batches = [(torch.randint(0, 255, (2, 3, 112, 112), dtype=torch.uint8), torch.tensor([1, 2]), 0)] * 3
    for flag, expected in ((False, 0), (True, 3)):
        cfg = StepConfig(torch.device("cpu"), batch_size=2, steps_per_epoch=3, total_steps=3, lr_fn=lambda s: 0.01,
                         cudagraph_steps=flag)
        train_one_epoch(backbone, head, [opt], torch.amp.GradScaler("cpu", enabled=False), batches, 0, 0, cfg,
                        Progress())
        assert len(marks) == expected


def test_speed_options_are_not_hyper_parameters() -> None:
    """A run resumed with another head implementation or compile mode is the same optimisation, and a
    checkpoint written before these options existed resumes without a complaint."""
    from run.config import config_differences

    saved = TrainConfig(synthetic=8).to_dict()
    now = TrainConfig(synthetic=8, head_impl="fused", head_chunk=4096, compile_mode="reduce-overhead")
    assert config_differences(saved, now) == []
    old = {k: v for k, v in saved.items() if k not in ("head_impl", "head_chunk", "compile_mode")}
    assert config_differences(old, now) == []
    assert config_differences(saved, TrainConfig(synthetic=8, lr=0.2)) == ["lr: checkpoint 0.1 -> now 0.2"]
