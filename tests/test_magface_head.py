"""MagFaceHead against the paper's formulas, written again here in float64 numpy, and its edge cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.magface import MagFaceConfig, MagFaceHead

S, L_A, U_A, L_M, U_M, LAMBDA_G = 64.0, 10.0, 110.0, 0.45, 0.8, 35.0

# 2-D toy: 4 classes (un-normalised weights), 4 samples whose magnitudes lie below, inside, above
# [l_a, u_a] and just above l_a; sample 3 sits 160 degrees from its class (theta + m > pi).
CLASS_DEG, CLASS_NORM = [0.0, 20.0, 45.0, 200.0], [2.0, 0.5, 1.0, 3.0]
SAMPLE_DEG, SAMPLE_NORM, LABELS = [8.0, 30.0, 100.0, 40.0], [5.0, 50.0, 200.0, 10.5], [0, 2, 3, 3]


def _polar(degrees: list[float], norms: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1) * np.asarray(norms)[:, None]


def _np_loss(f: np.ndarray, w: np.ndarray, y: np.ndarray, margin: str = "arc", easy: bool = True,
             l_m: float = L_M, u_m: float = U_M, lambda_g: float = LAMBDA_G) -> dict[str, float | np.ndarray]:
    """The MagFace loss from the paper's formulas, in float64, using angles rather than sin/cos."""
    x_norm = np.sqrt((f * f).sum(axis=1))
    a = np.clip(x_norm, L_A, U_A)
    m = (u_m - l_m) / (U_A - L_A) * (a - L_A) + l_m
    g = a / U_A**2 + 1.0 / a
    cos = np.clip((f / x_norm[:, None]) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T, -1, 1)
    rows = np.arange(len(y))
    cos_y = cos[rows, y]
    theta = np.arccos(cos_y)
    if margin == "cos":
        target = cos_y - m
    elif easy:
        target = np.where(cos_y > 0, np.cos(theta + m), cos_y)
    else:
        target = np.where(theta + m < np.pi, np.cos(theta + m), cos_y - np.sin(m) * m)
    logits = S * cos
    logits[rows, y] = S * target
    top = logits.max(axis=1)
    ce = top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[rows, y]
    return {"loss": ce.mean() + lambda_g * g.mean(), "loss_id": ce.mean(), "loss_g": g.mean(),
            "loss_g_weighted": lambda_g * g.mean(), "x_norm": x_norm, "m_a": m, "target": target}


def _numeric_grad(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        grad[idx] = (fn(x + step) - fn(x - step)) / (2 * h)
    return grad


def _run_head(f: np.ndarray, w: np.ndarray, y: np.ndarray, **kwargs) -> tuple[dict, np.ndarray, np.ndarray]:
    head = MagFaceHead(f.shape[1], w.shape[0], MagFaceConfig(**kwargs))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    x = torch.tensor(f, dtype=torch.float32, requires_grad=True)
    out = head(x, torch.from_numpy(y))
    out["loss"].backward()
    return out, x.grad.double().numpy(), head.weight.grad.double().numpy()


TOY_CASES = {
    "arc_easy": {},
    "arc_hard": {"easy_margin": False},
    "cos": {"variant": "cos", "l_margin": 0.35, "lambda_g": 150.0},
}


@pytest.mark.parametrize("case", list(TOY_CASES))
def test_loss_and_gradients_match_formulas(case: str) -> None:
    kwargs = TOY_CASES[case]
    f, w, y = _polar(SAMPLE_DEG, SAMPLE_NORM), _polar(CLASS_DEG, CLASS_NORM), np.array(LABELS)
    ref_kwargs = {"margin": kwargs.get("variant", "arc"), "easy": kwargs.get("easy_margin", True),
                  "l_m": kwargs.get("l_margin", L_M), "lambda_g": kwargs.get("lambda_g", LAMBDA_G)}
    ref = _np_loss(f, w, y, **ref_kwargs)
    out, f_grad, w_grad = _run_head(f, w, y, **kwargs)
    for key in ("loss", "loss_id", "loss_g", "loss_g_weighted", "x_norm", "m_a"):
        np.testing.assert_allclose(out[key].detach().double().numpy(), ref[key], rtol=2e-6, err_msg=key)
    ref_f_grad = _numeric_grad(lambda v: _np_loss(v, w, y, **ref_kwargs)["loss"], f)
    ref_w_grad = _numeric_grad(lambda v: _np_loss(f, v, y, **ref_kwargs)["loss"], w)
    np.testing.assert_allclose(f_grad, ref_f_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w_grad, ref_w_grad, rtol=1e-4, atol=1e-6)
    assert np.abs(ref_f_grad).min() > 1e-5  # every coordinate carries gradient: the check bites


def test_toy_values_by_hand() -> None:
    """m(a), g(a) and top-1 worked out on paper for the toy batch."""
    f, w, y = _polar(SAMPLE_DEG, SAMPLE_NORM), _polar(CLASS_DEG, CLASS_NORM), np.array(LABELS)
    out, _, _ = _run_head(f, w, y)
    # clamped magnitudes a = 10, 50, 110, 10.5
    np.testing.assert_allclose(out["m_a"].detach().numpy(), [0.45, 0.59, 0.8, 0.45175], rtol=1e-6)
    g = [10 / 12100 + 1 / 10, 50 / 12100 + 1 / 50, 110 / 12100 + 1 / 110, 10.5 / 12100 + 1 / 10.5]
    assert out["loss_g"].item() == pytest.approx(sum(g) / 4, rel=1e-6)
    # nearest classes: 8 deg -> class 0 (right), 30 -> class 1, 100 -> class 2, 40 -> class 2
    assert out["accuracy"].item() == pytest.approx(0.25)
    # sample 1: theta = 15 deg, so its Mag-ArcFace target cosine is cos(15 deg + 0.59 rad)
    ref = _np_loss(f, w, y)
    assert ref["target"][1] == pytest.approx(math.cos(math.radians(15) + 0.59), rel=1e-12)
    # sample 2 (theta = 100 deg) keeps cos(theta) with the easy margin; sample 3 hits the fallback
    assert ref["target"][2] == pytest.approx(math.cos(math.radians(100)), rel=1e-12)
    hard = _np_loss(f, w, y, easy=False)
    assert hard["target"][3] == pytest.approx(math.cos(math.radians(160)) - math.sin(0.45175) * 0.45175)


def _plain_margin_loss(f: torch.Tensor, w: torch.Tensor, y: torch.Tensor, m: float, kind: str,
                       easy: bool) -> torch.Tensor:
    """ArcFace / CosFace as their papers state them, with the angle taken by acos."""
    cos = F.normalize(f, dim=1) @ F.normalize(w, dim=1).T
    cos_y = cos.gather(1, y[:, None]).squeeze(1)
    if kind == "cos":
        target = cos_y - m
    else:
        theta = torch.acos(cos_y)
        keep = cos_y > 0 if easy else theta + m < math.pi
        fallback = cos_y if easy else cos_y - math.sin(m) * m
        target = torch.where(keep, torch.cos(theta + m), fallback)
    logits = cos.scatter(1, y[:, None], target[:, None])
    return F.cross_entropy(S * logits, y)


@pytest.mark.parametrize(("kind", "easy", "m"), [("arc", True, 0.5), ("arc", False, 0.5), ("cos", True, 0.35)])
def test_reduces_to_arcface_and_cosface(kind: str, easy: bool, m: float) -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(16, 8, generator=gen) * torch.linspace(1, 200, 16)[:, None]
    f[3] = -f[3]
    w = torch.randn(6, 8, generator=gen)
    y = torch.randint(0, 6, (16,), generator=gen)
    f[0] = -w[y[0]] * 40 + 0.3 * torch.randn(8, generator=gen)  # theta near pi: the fallback branch
    head = MagFaceHead(8, 6, MagFaceConfig(l_margin=m, u_margin=m, lambda_g=0.0, variant=kind, easy_margin=easy))
    with torch.no_grad():
        head.weight.copy_(w)
    x1, x2 = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    out = head(x1, y)
    out["loss"].backward()
    ref = _plain_margin_loss(x2, w2, y, m, kind, easy)
    ref.backward()
    torch.testing.assert_close(out["loss"], ref)
    torch.testing.assert_close(out["loss_id"], ref)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(head.weight.grad, w2.grad, rtol=1e-4, atol=1e-7)


def _assert_finite(out: dict, *grads: torch.Tensor) -> None:
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    for grad in grads:
        assert grad is not None and torch.isfinite(grad).all()


@pytest.mark.parametrize("kwargs", list(TOY_CASES.values()), ids=list(TOY_CASES))
def test_no_nan_at_extremes(kwargs: dict) -> None:
    torch.manual_seed(0)
    head = MagFaceHead(8, 5, MagFaceConfig(**kwargs))
    w = head.weight.detach()
    unit = F.normalize(w, dim=1)
    f = torch.stack([
        unit[0] * 50, -unit[1] * 50,  # |cos| = 1 with the target (and theta + m > pi)
        w[2].clone(), -w[3].clone(),   # exactly a class weight, and its negative
        torch.zeros(8),                # zero embedding
        unit[4] * 1e-3, unit[0] * 1e4,  # tiny and huge magnitudes
        torch.randn(8) * 30,
    ])
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 1])
    x = f.clone().requires_grad_(True)
    out = head(x, y)
    out["loss"].backward()
    _assert_finite(out, x.grad, head.weight.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_embeddings(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = MagFaceHead(16, 7)
    x = (torch.randn(6, 16) * 40).to(dtype).requires_grad_(True)
    y = torch.arange(6)
    out = head(x, y)
    out["loss"].backward()
    _assert_finite(out, x.grad, head.weight.grad)
    assert out["loss"].dtype == torch.float32 and x.grad.dtype == dtype
    ref = head(x.detach().float(), y)["loss"]
    torch.testing.assert_close(out["loss"], ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_cpu_autocast(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 16)
    head = MagFaceHead(16, 7)
    inputs = torch.randn(6, 12) * 20
    y = torch.arange(6)
    with torch.autocast("cpu", dtype=dtype):
        emb = layer(inputs)
        out = head(emb, y)
    assert emb.dtype == dtype  # autocast really was on
    out["loss"].backward()
    _assert_finite(out, layer.weight.grad, head.weight.grad)
    assert out["loss"].dtype == torch.float32 and out["m_a"].dtype == torch.float32


def test_feasibility_warning() -> None:
    with pytest.warns(UserWarning, match="feasibility bound 22.59"):
        MagFaceHead(8, 4, MagFaceConfig(lambda_g=20.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MagFaceHead(8, 4)
        MagFaceHead(8, 4, MagFaceConfig(variant="cos", l_margin=0.35, lambda_g=150.0))


def test_lambda_min_default() -> None:
    k = (U_M - L_M) / (U_A - L_A)
    expected = S * k * U_A**2 * L_A**2 / (U_A**2 - L_A**2)
    assert MagFaceConfig().lambda_min() == pytest.approx(expected)
    assert round(MagFaceConfig().lambda_min(), 2) == 22.59


def test_invalid_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="margin variant"):
        MagFaceConfig(variant="sphere")
    with pytest.raises(ValueError, match="l_a"):
        MagFaceConfig(l_a=20.0, u_a=10.0)
    with pytest.raises(ValueError, match="embeddings"):
        MagFaceHead(8, 4)(torch.randn(2, 7), torch.tensor([0, 1]))


def test_training_config_maps_onto_the_head_config() -> None:
    """TrainConfig takes its loss defaults from MagFaceConfig and hands every flag to the field it names."""
    from run.config import TrainConfig

    assert TrainConfig().head_config() == MagFaceConfig()
    flags = TrainConfig(l_a=1.0, u_a=51.0, l_margin=0.4, u_margin=1.0, lambda_g=5.0, arc_scale=32.0, margin="cos",
                        easy_margin=False)
    assert flags.head_config() == MagFaceConfig(1.0, 51.0, 0.4, 1.0, 5.0, 32.0, "cos", False)
