"""UnifiedBatchNorm2d (docs/variants.md#ubn) through the equivalences and invariants of
docs/variants.md#tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from normbench.variants.ubn import ABLATION_PRESETS, UnifiedBatchNorm2d, average_pairwise_cosine

DT = torch.float64
EPS = 1e-5
PLAIN = {"norm_rect": False, "affine_rect": False}
SIG1 = 1.0 / (1.0 + math.exp(-1.0))


def _np_pairwise_cosine(feats: np.ndarray) -> float:
    """Mean of cos(f_i, f_j) over ordered pairs i != j, by explicit loops."""
    b = feats.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            if i != j:
                den = max(np.linalg.norm(feats[i]), 1e-8) * max(np.linalg.norm(feats[j]), 1e-8)
                total += float(feats[i] @ feats[j]) / den
    return total / (b * (b - 1))


def _random_batch(seed: int, batch: int = 6, condensed: bool = False) -> torch.Tensor:
    """Zero-mean noise (similarity ~ 0) or a shared pattern plus small noise (~ 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 3, 3, generator=g, dtype=DT)
    if condensed:
        x = torch.randn(1, 4, 3, 3, generator=g, dtype=DT) * 3 + 0.1 * x
    return x


def _compare_with_bn(ours: nn.Module, scale: float = 1.0, steps: int = 3) -> nn.BatchNorm2d:
    """Train `ours` and nn.BatchNorm2d side by side; outputs and grads of x must agree."""
    ref = nn.BatchNorm2d(4, dtype=DT)
    for step in range(steps):
        x = _random_batch(step) * 2 + step
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), scale * ref(x2)
        torch.testing.assert_close(y1, y2)
        w = torch.randn_like(x)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == steps
    return ref


def test_all_switches_off_equals_batchnorm() -> None:
    ours = UnifiedBatchNorm2d(4, fct=False, **PLAIN, dtype=DT)
    ref = _compare_with_bn(ours)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    ours.eval(), ref.eval()
    x = _random_batch(9)
    torch.testing.assert_close(ours(x), ref(x))


def test_fct_with_tau_minus_inf_equals_batchnorm() -> None:
    ours = UnifiedBatchNorm2d(4, tau=-math.inf, **PLAIN, dtype=DT)
    _compare_with_bn(ours)
    assert int(ours.frozen_steps) == 0 and bool(ours.condensed)


@pytest.mark.parametrize("sim_init", ["first_batch", "zero"])
def test_fct_with_tau_plus_inf_freezes_from_the_first_batch(sim_init) -> None:
    # s_hat is set by step 2 before the decision of step 3, so it is never "unset" here.
    layer = UnifiedBatchNorm2d(4, decide="step", tau=math.inf, sim_init=sim_init, **PLAIN, dtype=DT)
    mean0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    for step in range(3):
        x = (_random_batch(step) * 3 + 1).requires_grad_()
        y = layer(x)
        torch.testing.assert_close(y, x / math.sqrt(1 + EPS))
        y.sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, 1 / math.sqrt(1 + EPS)))
    assert torch.equal(layer.running_mean, mean0) and torch.equal(layer.running_var, var0)
    assert int(layer.num_batches_tracked) == 0
    assert int(layer.frozen_steps) == 3 and int(layer.sim_count) == 3
    assert not bool(layer.condensed)


def test_batch_of_one_first_is_bn_while_similarity_unset() -> None:
    """B = 1 skips step 2, so s_hat is still unset and step 3 says condensed
    (docs/variants.md#ubn)."""
    layer = UnifiedBatchNorm2d(4, decide="step", tau=math.inf, **PLAIN, dtype=DT)
    x = _random_batch(0, batch=1)
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(layer(x), (x - mu) / torch.sqrt(var + EPS))
    assert int(layer.sim_count) == 0 and int(layer.num_batches_tracked) == 1
    assert float(layer.running_sim) == 0.0 and bool(layer.condensed)
    layer(_random_batch(1))  # B = 6: s_hat set, s_hat > inf is False -> frozen
    assert int(layer.num_batches_tracked) == 1 and int(layer.frozen_steps) == 1


def test_rectifications_without_fct_are_sigmoid_one_times_bn_at_init() -> None:
    ours = UnifiedBatchNorm2d(4, fct=False, dtype=DT)
    assert ours.weight.shape == (4, 1, 3, 3)
    _compare_with_bn(ours, scale=SIG1)


def _ubn_reference(x, params, affine_rect, stats=None):
    """docs/variants.md#ubn steps 1, 4, 5, 6 on full tensors (autograd gives the reference
    gradients)."""
    cw, sw, sb, weight, bias = params
    x_c = x + cw[None, :, None, None] * x.mean(dim=(2, 3), keepdim=True)
    if stats is None:  # batch statistics of x_c
        mu, var = x_c.mean(dim=(0, 2, 3)), x_c.var(dim=(0, 2, 3), unbiased=False)
    else:
        mu, var = stats
    x_hat = (x_c - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + EPS)
    logit = sw[None, :, None, None] * x_hat.mean(dim=(2, 3), keepdim=True)
    x_s = x_hat * torch.sigmoid(logit + sb[None, :, None, None])
    if affine_rect:
        return nn.functional.conv2d(x_s, weight, bias, padding=1, groups=x.shape[1])
    return x_s * weight[None, :, None, None] + bias[None, :, None, None]


@pytest.mark.parametrize("branch", ["condensed", "frozen", "eval"])
@pytest.mark.parametrize("affine_rect", [True, False])
@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_gradients_match_autograd_of_the_formulas(branch, affine_rect, offset) -> None:
    """Random parameters and buffers; every gradient against autograd of the spec's formulas."""
    tau = {"condensed": -math.inf, "frozen": math.inf, "eval": 0.15}[branch]
    layer = UnifiedBatchNorm2d(4, decide="step", tau=tau, affine_rect=affine_rect, dtype=DT)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5 + 0.3)
        layer.running_mean.copy_(torch.randn(4, generator=g, dtype=DT) + offset)
        layer.running_var.copy_(torch.rand(4, generator=g, dtype=DT) + 0.5)
    stats = None if branch == "condensed" else (layer.running_mean.clone(), layer.running_var)
    layer.train(branch != "eval")
    x = (_random_batch(4) * 2 + offset).requires_grad_()
    names = ["center_weight", "scale_weight", "scale_bias", "weight", "bias"]
    ref_params = [getattr(layer, n).detach().clone().requires_grad_() for n in names]
    y_ref = _ubn_reference(x, ref_params, affine_rect, stats)
    w = torch.randn_like(y_ref)
    expected = torch.autograd.grad((y_ref * w).sum(), [x, *ref_params])
    y = layer(x)
    torch.testing.assert_close(y, y_ref)
    got = torch.autograd.grad((y * w).sum(), [x, *(getattr(layer, n) for n in names)])
    for name, a, b in zip(["x", *names], got, expected, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
    assert int(layer.frozen_steps) == (branch == "frozen")


@pytest.mark.parametrize("branch", ["frozen", "eval"])
def test_running_statistics_without_norm_rect_backpropagate(branch) -> None:
    """No calibration and a conv affine: the fused scale is a constant, yet x gets gradients."""
    layer = UnifiedBatchNorm2d(4, decide="step", tau=math.inf, norm_rect=False, dtype=DT)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=DT))
        layer.running_mean.copy_(torch.randn(4, generator=g, dtype=DT))
        layer.running_var.copy_(torch.rand(4, generator=g, dtype=DT) + 0.5)
    layer.train(branch == "frozen")
    x = _random_batch(6).requires_grad_()
    x_hat = (x - layer.running_mean[None, :, None, None]) / torch.sqrt(
        layer.running_var[None, :, None, None] + EPS
    )
    kernel = layer.weight.detach().clone().requires_grad_()
    y_ref = nn.functional.conv2d(x_hat, kernel, layer.bias.detach(), padding=1, groups=4)
    w = torch.randn_like(y_ref)
    expected = torch.autograd.grad((y_ref * w).sum(), [x, kernel])
    y = layer(x)
    torch.testing.assert_close(y, y_ref)
    got = torch.autograd.grad((y * w).sum(), [x, layer.weight])
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert int(layer.frozen_steps) == (branch == "frozen")


def test_fast_cosine_equals_gram_form_with_a_zero_sample() -> None:
    torch.manual_seed(3)
    feats = torch.randn(6, 2, 3, 5, dtype=DT) + 0.3
    feats[2] = 0.0
    u = feats.reshape(6, -1)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-8)
    gram = u @ u.T
    expected = (gram.sum() - gram.trace()) / (6 * 5)
    torch.testing.assert_close(average_pairwise_cosine(feats), expected)
    assert average_pairwise_cosine(feats).item() == pytest.approx(
        _np_pairwise_cosine(feats.reshape(6, -1).numpy()), rel=1e-12
    )
    with pytest.raises(ValueError, match=r"B >= 2.*\(1, 4\)"):
        average_pairwise_cosine(torch.randn(1, 4))


@pytest.mark.parametrize(
    ("options", "first"),
    [({}, True), ({"sim_init": "zero"}, False), ({"sim_features": "gap"}, True)],
)
def test_running_similarity_is_the_hand_ema(options, first) -> None:
    alpha = 0.25
    layer = UnifiedBatchNorm2d(4, alpha=alpha, tau=-math.inf, dtype=DT, **options)
    s_hat = 0.0
    for step in range(4):
        x = _random_batch(step, condensed=step % 2 == 1)
        feats = x.mean(dim=(2, 3)) if options.get("sim_features") == "gap" else x.reshape(6, -1)
        s_b = _np_pairwise_cosine(feats.numpy())
        s_hat = s_b if (step == 0 and first) else (1 - alpha) * s_hat + alpha * s_b
        layer(x)
        assert layer.running_sim.item() == pytest.approx(s_hat, rel=1e-10, abs=1e-12)
    assert int(layer.sim_count) == 4


def test_centered_source_uses_the_rbn_centered_input() -> None:
    layer = UnifiedBatchNorm2d(4, sim_source="centered", dtype=DT)
    with torch.no_grad():
        layer.center_weight.copy_(torch.tensor([-1.0, 2.0, 0.5, -0.3], dtype=DT))
    x = _random_batch(5, condensed=True)
    x_c = x + layer.center_weight.detach().reshape(1, 4, 1, 1) * x.mean(dim=(2, 3), keepdim=True)
    layer(x)
    expected = _np_pairwise_cosine(x_c.reshape(6, -1).numpy())
    assert layer.running_sim.item() == pytest.approx(expected, rel=1e-10)


def test_step_decision_uses_the_updated_similarity() -> None:
    layer = UnifiedBatchNorm2d(4, decide="step", tau=0.5, alpha=0.9, **PLAIN, dtype=DT)
    layer(_random_batch(0, condensed=True))  # s_hat ~ 1 > tau: BN
    assert bool(layer.condensed) and int(layer.num_batches_tracked) == 1
    layer(_random_batch(1))  # s_hat = 0.1 s_hat + 0.9 s_B ~ 0.1 < tau: frozen
    assert layer.running_sim.item() < 0.5
    assert not bool(layer.condensed) and int(layer.num_batches_tracked) == 1
    assert int(layer.frozen_steps) == 1


def test_epoch_mode_decides_only_in_end_epoch() -> None:
    layer = UnifiedBatchNorm2d(4, decide="epoch", tau=0.5, alpha=0.5, **PLAIN, dtype=DT)
    for step in range(3):  # epoch 1: plain BN whatever s_hat says
        layer(_random_batch(step))
        assert bool(layer.condensed) and int(layer.num_batches_tracked) == step + 1
    assert layer.running_sim.item() < 0.5
    layer.end_epoch()
    assert not bool(layer.condensed)
    for step in range(6):  # condensed batches push s_hat above tau, the flag stays
        layer(_random_batch(10 + step, condensed=True))
        assert not bool(layer.condensed) and int(layer.num_batches_tracked) == 3
    assert layer.running_sim.item() > 0.5 and int(layer.frozen_steps) == 6
    layer.end_epoch()
    assert bool(layer.condensed)
    layer(_random_batch(20))
    assert int(layer.num_batches_tracked) == 4


def test_end_epoch_is_a_no_op_in_step_mode_and_before_any_similarity() -> None:
    step = UnifiedBatchNorm2d(4, decide="step", tau=math.inf)
    step.end_epoch()
    assert bool(step.condensed)
    epoch = UnifiedBatchNorm2d(4, decide="epoch", tau=math.inf)
    epoch.end_epoch()  # s_hat unset: keep the flag
    assert bool(epoch.condensed)


def test_min_updates_forces_batch_statistics_first() -> None:
    layer = UnifiedBatchNorm2d(4, decide="step", tau=math.inf, min_updates=2, **PLAIN, dtype=DT)
    for _ in range(2):
        layer(_random_batch(0))
        assert bool(layer.condensed)
    layer(_random_batch(1))
    assert not bool(layer.condensed)
    assert int(layer.num_batches_tracked) == 2 and int(layer.frozen_steps) == 1


def test_eval_uses_running_statistics_and_changes_nothing() -> None:
    layer = UnifiedBatchNorm2d(4, dtype=DT)
    for step in range(2):
        layer(_random_batch(step))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    x = _random_batch(7, batch=3)
    rm, rv = before["running_mean"].reshape(1, 4, 1, 1), before["running_var"].reshape(1, 4, 1, 1)
    torch.testing.assert_close(layer(x), SIG1 * (x - rm) / torch.sqrt(rv + EPS))
    layer(_random_batch(8, batch=1))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_diagnostics_after_a_few_steps() -> None:
    layer = UnifiedBatchNorm2d(4, decide="step", tau=math.inf, min_updates=1, alpha=0.5, dtype=DT)
    s_hat = None
    for step in range(3):
        x = _random_batch(step)
        s_b = _np_pairwise_cosine(x.reshape(6, -1).numpy())
        s_hat = s_b if s_hat is None else 0.5 * s_hat + 0.5 * s_b
        layer(x)
    diag = layer.diagnostics()
    keys = {"tau", "running_sim", "batch_steps", "frozen_steps", "condensed"}
    assert set(diag) == keys | {"num_batches_tracked"}
    assert diag["tau"] == math.inf  # the threshold it ran with, for the reports
    assert all(type(v) is float for v in diag.values())
    assert diag["running_sim"] == pytest.approx(s_hat, rel=1e-10)
    assert (diag["batch_steps"], diag["frozen_steps"]) == (1.0, 2.0)
    assert (diag["condensed"], diag["num_batches_tracked"]) == (0.0, 1.0)


def test_batch_of_one_skips_the_similarity() -> None:
    layer = UnifiedBatchNorm2d(4, dtype=DT)
    layer(_random_batch(0))
    sim, count = layer.running_sim.clone(), int(layer.sim_count)
    layer(_random_batch(1, batch=1))
    assert torch.equal(layer.running_sim, sim) and int(layer.sim_count) == count


def test_parameters_buffers_and_presets() -> None:
    layer = UnifiedBatchNorm2d(8, kernel_size=5)
    assert layer.weight.shape == (8, 1, 5, 5) and layer.bias.shape == (8,)
    assert layer.weight[:, 0, 2, 2].eq(1).all() and layer.weight.sum() == 8
    for name in ("center_weight", "scale_weight", "scale_bias"):
        assert getattr(layer, name).shape == (8,)
    buffers = dict(layer.named_buffers())
    stats = {"running_mean", "running_var", "num_batches_tracked"}
    assert set(buffers) == stats | {"running_sim", "sim_count", "condensed", "frozen_steps"}
    assert buffers["running_sim"].dtype == torch.float32
    assert buffers["condensed"].dtype == torch.bool
    plain = UnifiedBatchNorm2d(8, **ABLATION_PRESETS["bn_stats_rect"])
    assert plain.weight.shape == (8,) and plain.center_weight is None and plain.fct
    assert "kernel_size=5" in repr(layer) and "decide='epoch'" in repr(layer)


def test_channels_last_matches_contiguous() -> None:
    a, b = UnifiedBatchNorm2d(4), UnifiedBatchNorm2d(4)
    x = _random_batch(0).float()
    torch.testing.assert_close(a(x), b(x.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(a.running_sim, b.running_sim)


@pytest.mark.parametrize(
    "options",
    [
        {"decide": "batch"},
        {"tau": float("nan")},
        {"alpha": 2.0},
        {"kernel_size": 2},
        {"sim_source": "output"},
        {"sim_features": "pool"},
        {"sim_init": "one"},
        {"min_updates": -1},
        {"fct": "yes"},
        {"momentum": 2.0},
    ],
)
def test_invalid_options_raise(options) -> None:
    with pytest.raises(ValueError, match="UnifiedBatchNorm2d"):
        UnifiedBatchNorm2d(4, **options)


def test_bf16_input_with_fp32_parameters_keeps_dtype() -> None:
    layer = UnifiedBatchNorm2d(4)
    x = _random_batch(0).to(torch.bfloat16).requires_grad_()
    y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.running_sim.dtype == torch.float32
    expected = UnifiedBatchNorm2d(4)(x.detach().float())
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
    assert layer.running_sim.item() == pytest.approx(
        _np_pairwise_cosine(x.detach().double().reshape(6, -1).numpy()), rel=1e-5
    )
