"""IEBN: Instance Enhancement Batch Normalization (Liang, Huang, Liang & Yang; AAAI 2020;
arXiv 1908.04008). Official code: gbup-group/IEBN, `models/cifar/iebn_resnet.py`,
`_BatchAttNorm` / `BAN2d` (docs/variants.md#iebn).

Implements, in training and in eval (docs/variants.md#iebn):

    a = sigmoid(w ⊙ GAP(x) + b)                  per (n, c), from the *raw* input x
    y = BNcore(x) ⊙ (γ ⊙ a) + β

with BNcore batch norm without affine (batch statistics in training, running ones in eval;
docs/variants.md#bncore). The gate always comes from the instance itself, in eval too.

Parameters (all (C,)): `weight` γ = 1, `bias` β = 0, `weight_readjust` w = 0, `bias_readjust`
b = −1, so at init IEBN = sigmoid(−1)·BN ≈ 0.2689·BN (docs/variants.md#pitfalls). Buffers as BN.

Implementation [choice]: the output is written as y = (x − m)·A + Y with (N, C) coefficients
A = γ·a·invstd and Y = β + (m − μ)·A, from the per-instance moments of x (two-pass mean m and
biased variance over (H, W)); the batch statistics follow by the law of total variance, the
buffers by the rule of docs/variants.md#bncore (counter, momentum None as 1/count, unbiased running
variance with n = N·H·W). That is BNcore exactly (up to rounding), without `F.batch_norm`:
`normbench.variants._fused` does one statistics pass and one affine pass forward, two passes
backward (hand-derived input gradient, autograd on the (N, C) coefficients), and allocates
two full-size tensors per step as BN does; on CPU it runs at about the speed of
`nn.BatchNorm2d`, where BN plus a full-size gate multiply took about twice as long.

Deviations from the official code:

* Parameters are (C,) instead of (1, C, 1, 1) (docs/variants.md#contract point 8); reshape when
  copying.
* The official forward bypasses `_BatchNorm.forward`, so its `num_batches_tracked` never moves
  and momentum None is unsupported; here the counter increments and momentum None is a
  cumulative average (docs/variants.md#iebn, ours).
* Statistics and the gate are computed in fp32 for fp16/bf16 input (docs/variants.md#iebn pitfall);
  the output has the input dtype.
* Placement is the harness's business: the official CIFAR ResNet keeps the downsample norm a
  plain BN.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ._core import RunningStatsNorm, check_batch_statistics, check_input, values_per_channel
from ._fused import fused_instance_affine


class IEBN2d(RunningStatsNorm):
    """BN whose per-channel scale is gated per instance by sigmoid(w·GAP(x) + b)."""

    paper = (
        "Instance Enhancement Batch Normalization: an Adaptive Regulator of Batch Noise "
        "(AAAI 2020), arXiv 1908.04008"
    )
    batch_dependent = True
    global_stats = True
    # The official CIFAR ResNet (gbup-group/IEBN) keeps nn.BatchNorm2d in the downsample
    # shortcut: a suite that names no placement uses this one (normbench.models.placement).
    default_placement = "except-shortcut"

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_features, **kw))
        self.bias = nn.Parameter(torch.empty(num_features, **kw))
        self.weight_readjust = nn.Parameter(torch.empty(num_features, **kw))
        self.bias_readjust = nn.Parameter(torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ 1, β 0, w 0, b −1 (the official initial values) and fresh running statistics."""
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()
            self.weight_readjust.zero_()
            self.bias_readjust.fill_(-1.0)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if self.training:
            check_batch_statistics(self, x, values_per_channel(x))
        params = (self.weight, self.bias, self.weight_readjust, self.bias_readjust)
        return fused_instance_affine(x, partial(self._coefficients, x), *params)

    def _coefficients(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_readjust: torch.Tensor,
        bias_readjust: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c), from the moments of x (N, C)."""
        # μ, invstd (C,): batch (train) or running (eval)
        mu, invstd = self.channel_stats(x, mean, var)
        gate = torch.sigmoid(weight_readjust * mean + bias_readjust)
        # y = (x − μ)·invstd·γ·a + β = (x − mean)·A + Y, with A, Y (N, C)
        scale = weight * gate * invstd
        return scale, bias + (mean - mu) * scale
