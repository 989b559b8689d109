"""Batch Renormalization (docs/variants.md#brn) against the semantics of Keras'
`BatchNormalization(renorm=True)` (tf-keras `layers/normalization/batch_normalization.py` at
commit dd0a7237b9b24132dba3f491f3c84b0094ab796e: `_renorm_correction_and_moments`, the
renorm branch of `call`, and the moving-stddev update), written here as an independent float64
computation with hand-derived gradients (no TensorFlow, no code under test), plus the clipping
bounds, the warm-up schedule, stop-gradient, and fp32 statistics under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from normbench.variants import BatchNorm2d, BatchRenorm2d, _region
from normbench.variants.brn import renorm_bounds

DT = torch.float64
C = 5


def c4(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1, 1)


def schedule(t: int, *, rmax: float, dmax: float, start: int, r_end: int, d_end: int):
    """The warm-up as docs/variants.md#brn states it, in Python floats."""

    def ramp(end: int) -> float:
        if end <= start:
            return 1.0 if t >= start else 0.0
        return min(max((t - start) / (end - start), 0.0), 1.0)

    return 1.0 + (rmax - 1.0) * ramp(r_end), dmax * ramp(d_end)


@dataclass
class KerasRenorm:
    """tf-keras BatchNormalization(renorm=True, renorm_clipping={rmin, rmax, dmax}) on NCHW
    (axis=1), float64. Keras momenta are decays: new = old − (old − value)·(1 − momentum)."""

    eps: float
    momentum: float  # Keras' (0.99 default)
    renorm_momentum: float  # Keras' (0.99 default)
    moving_mean: torch.Tensor = field(default_factory=lambda: torch.zeros(C, dtype=DT))
    moving_stddev: torch.Tensor = field(default_factory=lambda: torch.ones(C, dtype=DT))
    renorm_mean: torch.Tensor = field(default_factory=lambda: torch.zeros(C, dtype=DT))
    renorm_stddev: torch.Tensor = field(default_factory=lambda: torch.ones(C, dtype=DT))

    @staticmethod
    def _average(var: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
        return var - (var - value) * (1.0 - decay)

    def train(self, x, gamma, beta, g, *, rmin, rmax, dmax):
        """Output, dL/dx, dL/dγ, dL/dβ for the loss Σ y·g; then the moving averages move."""
        mean = x.mean(dim=(0, 2, 3))
        variance = ((x - c4(mean)) ** 2).mean(dim=(0, 2, 3))  # tf.nn.moments: biased
        stddev = torch.sqrt(variance + self.eps)
        renorm_stddev = torch.clamp(self.renorm_stddev, min=math.sqrt(self.eps))
        r = torch.clamp(stddev / renorm_stddev, min=rmin, max=rmax)
        d = torch.clamp((mean - self.renorm_mean) / renorm_stddev, min=-dmax, max=dmax)
        # scale, offset = r·γ, d·γ + β (`_compose_transforms`); tf.nn.batch_normalization
        xhat = (x - c4(mean)) / c4(torch.sqrt(variance + self.eps))
        y = xhat * c4(r * gamma) + c4(d * gamma + beta)
        # gradients with r, d under stop_gradient: BN's backward with scale r·γ
        gm = g.mean(dim=(0, 2, 3))
        gxm = (g * xhat).mean(dim=(0, 2, 3))
        dx = c4(r * gamma / stddev) * (g - c4(gm) - xhat * c4(gxm))
        dgamma = (g * (xhat * c4(r) + c4(d))).sum(dim=(0, 2, 3))
        dbeta = g.sum(dim=(0, 2, 3))
        self.renorm_mean = self._average(self.renorm_mean, mean, self.renorm_momentum)
        self.renorm_stddev = self._average(self.renorm_stddev, stddev, self.renorm_momentum)
        self.moving_mean = self._average(self.moving_mean, mean, self.momentum)
        self.moving_stddev = self._average(self.moving_stddev, stddev, self.momentum)
        return y, dx, dgamma, dbeta, r, d

    def infer(self, x, gamma, beta):
        moving_variance = torch.relu(self.moving_stddev**2 - self.eps)
        xhat = (x - c4(self.moving_mean)) / c4(torch.sqrt(moving_variance + self.eps))
        return xhat * c4(gamma) + c4(beta)


def _step_input(step: int) -> torch.Tensor:
    """Batches whose statistics drift, so r and d are clipped on some steps and not on others."""
    g = torch.Generator().manual_seed(step)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.5], dtype=DT)[None, :, None, None]
    shift = torch.tensor([0.0, 1.0, -2.0, 0.3, 5.0], dtype=DT)[None, :, None, None]
    return torch.randn(6, C, 4, 3, generator=g, dtype=DT) * scale * (1 + 0.3 * step) + shift


OPTIONS = {"rmax": 1.8, "dmax": 1.5, "relax_from": 1, "rmax_at": 4, "dmax_at": 3}


@pytest.mark.parametrize(
    ("momentum", "renorm_momentum", "coefficients"),
    [(0.1, 0.01, "eager"), (0.3, 0.2, "eager"), (0.5, 0.5, "eager"), (0.3, 0.2, "compiled")],
)
def test_training_and_inference_equal_keras_renorm(momentum, renorm_momentum, coefficients) -> None:
    """`coefficients` "compiled": the accelerator path's compiled region (`aot_eager` here)."""
    with _region.coefficient_mode(coefficients), _region.compiled_with("aot_eager"):
        _check_against_keras(momentum, renorm_momentum)


def _check_against_keras(momentum: float, renorm_momentum: float) -> None:
    eps = 1e-3
    ours = BatchRenorm2d(
        C, eps=eps, momentum=momentum, renorm_momentum=renorm_momentum, dtype=DT, **OPTIONS
    )
    keras = KerasRenorm(eps=eps, momentum=1 - momentum, renorm_momentum=1 - renorm_momentum)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(C, generator=g, dtype=DT) + 0.5)
        ours.bias.copy_(torch.randn(C, generator=g, dtype=DT))
    clipped = unclipped = 0
    for step in range(7):
        rmax_t, dmax_t = schedule(
            step, rmax=1.8, dmax=1.5, start=1, r_end=4, d_end=3
        )  # from the page, not from the code under test
        x = _step_input(step).requires_grad_()
        probe = torch.randn(x.shape, generator=g, dtype=DT)
        ours.zero_grad()
        y = ours(x)
        (y * probe).sum().backward()
        y_k, dx_k, dgamma_k, dbeta_k, r, d = keras.train(
            x.detach(), ours.weight.detach(), ours.bias.detach(), probe,
            rmin=1 / rmax_t, rmax=rmax_t, dmax=dmax_t,
        )  # fmt: skip
        at_bound = (r == rmax_t) | (r == 1 / rmax_t) | (d.abs() == dmax_t)
        clipped += int(at_bound.sum())
        unclipped += int((~at_bound).sum())
        torch.testing.assert_close(y, y_k, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(x.grad, dx_k, atol=1e-13, rtol=1e-11)
        torch.testing.assert_close(ours.weight.grad, dgamma_k, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(ours.bias.grad, dbeta_k, atol=1e-12, rtol=1e-12)
        for name, ref in (
            ("renorm_mean", keras.renorm_mean), ("renorm_std", keras.renorm_stddev),
            ("running_mean", keras.moving_mean), ("running_std", keras.moving_stddev),
        ):  # fmt: skip
            torch.testing.assert_close(getattr(ours, name), ref, atol=1e-14, rtol=1e-13)
        assert int(ours.num_batches_tracked) == step + 1
    assert clipped and unclipped  # both regimes were exercised
    ours.eval()
    x = _step_input(9)
    torch.testing.assert_close(
        ours(x), keras.infer(x, ours.weight, ours.bias), atol=1e-12, rtol=1e-11
    )


def _observed_r_d(layer: BatchRenorm2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r and d read off the output of a layer with γ = 1, β = 0: y = x̂·r + d per channel."""
    y = layer(x)
    var = x.var(dim=(0, 2, 3), correction=0)
    d = y.mean(dim=(0, 2, 3))
    r = y.std(dim=(0, 2, 3), correction=0) / torch.sqrt(var / (var + layer.eps))
    return r, d


def test_clipping_bounds_hold_at_every_step() -> None:
    layer = BatchRenorm2d(C, rmax=3.0, dmax=5.0, relax_from=2, rmax_at=10, dmax_at=6, dtype=DT)
    pinned_r = pinned_d = False
    for step in range(14):
        g = torch.Generator().manual_seed(step)
        wild = 100.0 if step % 2 else 0.01  # far above, then far below, the moving averages
        x = torch.randn(8, C, 3, 3, generator=g, dtype=DT) * wild + 50.0 * (step % 3 - 1)
        rmax_t, dmax_t = schedule(step, rmax=3.0, dmax=5.0, start=2, r_end=10, d_end=6)
        r, d = _observed_r_d(layer, x)
        tol = 1e-9
        assert torch.all(r <= rmax_t + tol) and torch.all(r >= 1 / rmax_t - tol), (step, r)
        assert torch.all(d.abs() <= dmax_t + tol), (step, d)
        if step < 2:  # plain BN until the relaxation starts
            torch.testing.assert_close(r, torch.ones(C, dtype=DT))
            torch.testing.assert_close(d, torch.zeros(C, dtype=DT), atol=1e-9, rtol=0)
        elif step >= 6:  # the end values pin r or d on some channel of these wild batches
            pinned_r |= bool(torch.any(((r - rmax_t).abs() < tol) | ((r - 1 / rmax_t).abs() < tol)))
            pinned_d |= bool(torch.any((d.abs() - dmax_t).abs() < tol))
    assert pinned_r and pinned_d


def test_warmup_never_exceeds_its_end_values() -> None:
    options = {"rmax": 3.0, "dmax": 5.0, "relax_from": 5000, "rmax_at": 40000, "dmax_at": 25000}
    steps = torch.tensor([0, 1, 4999, 5000, 5001, 20000, 24999, 25000, 39999, 40000, 40001,
                          10**6, 10**9, 2**62])  # fmt: skip
    previous = (0.0, -1.0)
    for t in steps:
        rmax_t, dmax_t = (float(v) for v in renorm_bounds(t, **options))
        expected = schedule(int(t), rmax=3.0, dmax=5.0, start=5000, r_end=40000, d_end=25000)
        assert rmax_t == pytest.approx(expected[0], abs=1e-6)
        assert dmax_t == pytest.approx(expected[1], abs=1e-6)
        assert 1.0 <= rmax_t <= 3.0 and 0.0 <= dmax_t <= 5.0, int(t)
        assert (rmax_t, dmax_t) >= previous  # non-decreasing
        previous = (rmax_t, dmax_t)
    assert renorm_bounds(torch.tensor(5000), **options) == (1.0, 0.0)  # BN until relax_from
    assert [float(v) for v in renorm_bounds(torch.tensor(2**62), **options)] == [3.0, 5.0]
    # no ramp (end == start): the end values from relax_from on
    jump = {**options, "rmax_at": 5000, "dmax_at": 5000}
    assert [float(v) for v in renorm_bounds(torch.tensor(4999), **jump)] == [1.0, 0.0]
    assert [float(v) for v in renorm_bounds(torch.tensor(5000), **jump)] == [3.0, 5.0]


def test_r_and_d_carry_no_gradient() -> None:
    """With r, d active, the input gradient is BN's with γ·r: nothing flows through r or d
    (a differentiable r would add terms through σ_B / σ and μ_B / σ)."""
    layer = BatchRenorm2d(C, relax_from=0, rmax_at=0, dmax_at=0, rmax=10.0, dmax=10.0, dtype=DT)
    x = (_step_input(3) * 3 + 1).requires_grad_()
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    r, _ = _observed_r_d(BatchRenorm2d(C, relax_from=0, rmax_at=0, dmax_at=0, rmax=10.0,
                                       dmax=10.0, dtype=DT), x.detach())  # fmt: skip
    assert torch.all((r - 1).abs() > 0.1)  # r really is active
    (layer(x) * probe).sum().backward()
    bn = BatchNorm2d(C, dtype=DT)
    with torch.no_grad():
        bn.weight.copy_(r)
    x2 = x.detach().clone().requires_grad_()
    (bn(x2) * probe).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-12, rtol=1e-10)


def test_before_relaxation_it_is_batch_norm() -> None:
    ours, bn = BatchRenorm2d(C, dtype=DT), BatchNorm2d(C, dtype=DT)
    for step in range(3):
        x = _step_input(step)
        torch.testing.assert_close(ours(x), bn(x), atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(ours.running_mean, bn.running_mean, atol=1e-14, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_statistics_stay_fp32_under_autocast(dtype: torch.dtype) -> None:
    """Activations of a few hundred: x² overflows fp16 (max 65504), so fp16 statistics would
    give inf/NaN; ours are fp32, equal to the fp32 layer fed the same rounded input."""
    options = {"relax_from": 0, "rmax_at": 2, "dmax_at": 2}
    layer, reference = BatchRenorm2d(C, **options), BatchRenorm2d(C, **options)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x = (torch.randn(8, C, 6, 6, generator=g) * 300 + 200).to(dtype)
        with torch.autocast("cpu", dtype=dtype):
            y = layer(x)
        assert y.dtype == dtype and torch.isfinite(y).all()
        expected = reference(x.float())
        torch.testing.assert_close(y.float(), expected, atol=2e-2, rtol=2e-2)
    for name, b in layer.named_buffers():
        assert b.dtype == (torch.long if name == "num_batches_tracked" else torch.float32)
        torch.testing.assert_close(b, dict(reference.named_buffers())[name], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rmax": 0.5}, "rmax"),
        ({"dmax": -1.0}, "dmax"),
        ({"relax_from": 10, "rmax_at": 5}, "rmax_at"),
        ({"relax_from": 10, "dmax_at": 5}, "dmax_at"),
        ({"renorm_momentum": 1.5}, "renorm_momentum"),
        ({"relax_from": -1}, "relax_from"),
    ],
)
def test_bad_options_are_refused(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchRenorm2d(C, **options)


def test_recalibration_recomputes_the_inference_pair_only() -> None:
    """`normbench evaluate`'s recalibration (cumulative averages over K batches): running_mean
    and running_std become the plain means of μ_B and σ_B; the renorm pair and the step
    counter (the warm-up's clock) come back unchanged."""
    from torch import nn

    from normbench.engine.evaluate import _recalibration_mode

    layer = BatchRenorm2d(C, relax_from=0, rmax_at=2, dmax_at=2, dtype=DT)
    for step in range(4):
        layer(_step_input(step))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    batches = [_step_input(10 + k) for k in range(3)]
    with _recalibration_mode(nn.Sequential(layer), [layer]), torch.no_grad():
        for x in batches:
            layer(x)
    eps = layer.eps
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches])
    stds = torch.stack([torch.sqrt(x.var(dim=(0, 2, 3), correction=0) + eps) for x in batches])
    torch.testing.assert_close(layer.running_mean, means.mean(0), atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(layer.running_std, stds.mean(0), atol=1e-13, rtol=1e-12)
    for name in ("renorm_mean", "renorm_std", "num_batches_tracked"):
        assert torch.equal(getattr(layer, name), before[name]), name
    assert layer.momentum == 0.1
