"""RBN: Representative Batch Normalization with Feature Calibration (Gao, Han, Li, Cheng &
Peng; CVPR 2021; no arXiv version). Official code: ShangHua-Gao/RBN, `rbn.py`,
`RepresentativeBatchNorm2d` (docs/variants.md#rbn).

Implements, in training and in eval (docs/variants.md#rbn):

    x_c = x + w_m ⊙ GAP(x)                        centering calibration
    x̂   = BNcore(x_c)                             batch (train) / running (eval) statistics of x_c
    g   = sigmoid(w_v ⊙ GAP(x̂) + b_v)             scaling calibration, on the normalised x̂
    y   = γ ⊙ g ⊙ x̂ + β     (g ⊙ x̂ when affine=False)

Parameters (all (C,)): `weight` γ = 1, `bias` β = 0 (None when affine=False), `center_weight`
w_m = 0, `scale_weight` w_v = 0, `scale_bias` b_v = 1. So at init RBN = sigmoid(1)·BN ≈ 0.7311·BN,
and the running mean records the mean of x_c, i.e. (1 + w_m)·μ_c. Buffers as BN; the counter
increments and momentum None is a cumulative average, as in the official subclass of BN.

Implementation [choice]: the output is written as y = (x − m)·A + Y with (N, C) coefficients,
from the per-instance moments of x (two-pass mean m and biased variance over (H, W)); the batch
statistics of x_c follow by the law of total variance, the buffers by the rule of
docs/variants.md#bncore (counter, momentum None as 1/count, unbiased running variance with
n = N·H·W). That is BNcore exactly (up to rounding), without `F.batch_norm`:
`normbench.variants._fused` does one statistics pass and one affine pass forward, two passes
backward (hand-derived input gradient, autograd on the (N, C) coefficients), as for IEBN,
instead of BN plus full-size gate and GAP passes.

Deviations from the official code:

* Step 1 is out of place. The official `input += ...` mutates the caller's tensor (wrong when x
  is also the residual shortcut) and breaks autograd when the producer saved its output
  (docs/variants.md#rbn, ours). Compare with the official module called on `x.clone()`.
* Parameters are (C,) instead of (1, C, 1, 1) (docs/variants.md#contract point 8).
* Statistics, GAPs and the gate are computed in fp32 for fp16/bf16 input; the output has the
  input dtype.
* The Jittor port's biased running variance and E[x²]−E[x]² are not reproduced; the PyTorch file
  is the reference.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ._core import RunningStatsNorm, check_input
from ._fused import fused_instance_affine
from ._options import check_bool


class RepresentativeBatchNorm2d(RunningStatsNorm):
    """BN with an instance-mean centering calibration and a sigmoid scaling calibration."""

    paper = (
        "Representative Batch Normalization with Feature Calibration (CVPR 2021), "
        "no arXiv id (CVF open access)"
    )
    batch_dependent = True
    global_stats = True

    def __init__(
        self,
        num_features: int,
        *,
        affine: bool = True,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.affine = check_bool(type(self).__name__, "affine", affine)
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_features, **kw))
            self.bias = nn.Parameter(torch.empty(num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.center_weight = nn.Parameter(torch.empty(num_features, **kw))
        self.scale_weight = nn.Parameter(torch.empty(num_features, **kw))
        self.scale_bias = nn.Parameter(torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ 1, β 0, w_m 0, w_v 0, b_v 1 (the official initial values), fresh statistics."""
        self.reset_running_stats()
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
                self.bias.zero_()
            self.center_weight.zero_()
            self.scale_weight.zero_()
            self.scale_bias.fill_(1.0)

    def options_repr(self) -> str:
        return f"affine={self.affine}"

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        calibration = (self.center_weight, self.scale_weight, self.scale_bias)
        affine = (self.weight, self.bias) if self.affine else ()
        coefficients = partial(self._coefficients, x)
        return fused_instance_affine(x, coefficients, *calibration, *affine)

    def _coefficients(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        center_weight: torch.Tensor,
        scale_weight: torch.Tensor,
        scale_bias: torch.Tensor,
        *affine: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c), from the moments of x (N, C).

        x_c = x + w_m·GAP(x) shifts each instance: its mean is (1 + w_m)·mean, its variance
        var, so BNcore's statistics of x_c follow (law of total variance), and
        GAP(x̂) = (mean_c − μ)·invstd is x̂ at the instance mean.
        """
        mean_c = mean + center_weight * mean  # no rounding of 1 + w_m in a low precision
        mu, invstd = self.channel_stats(x, mean_c, var)  # statistics of x_c, (C,)
        at_mean = (mean_c - mu) * invstd  # GAP(x̂), (N, C)
        gate = torch.sigmoid(scale_weight * at_mean + scale_bias)
        # y = x̂·g·γ + β, with x̂ = (x − mean)·invstd + GAP(x̂)
        scale = gate * invstd
        if not affine:  # affine=False: y = x̂·g
            return scale, (mean_c - mu) * scale
        weight, bias = affine
        scale = scale * weight
        return scale, (mean_c - mu) * scale + bias
