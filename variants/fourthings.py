"""FourThings: Summers & Dinneen, "Four Things Everyone Should Know to Improve Batch
Normalization" (ICLR 2020, arXiv 1906.03548), docs/variants.md#fourthings.

Port of `normalization_layer` in ceciliaresearch/four_things_batch_norm (`normalization.py`,
TF1): the batch/group combination with inference example weighing.

Training, per contiguous block of epg samples x cpg channels (G = C / cpg groups):

    mu = mean of x over the block, var = biased variance over the block
    y = gamma_c * (x - mu) / sqrt(var + eps) + beta_c

and the raw moments of the whole batch update the buffers per channel, whatever the grouping:
running_mean <- (1-m) running_mean + m E[x], running_sq_mean <- (1-m) running_sq_mean + m E[x^2].

Eval, per sample and channel group, with alpha = eval_example_weight:

    mu = (1-alpha) mu_mov + alpha mu_ex,  s = (1-alpha) s_mov + alpha s_ex,  var = s - mu^2

where mu_mov, s_mov average the buffers over the group's channels and mu_ex, s_ex are the
sample's own moments over the group's channels and positions.

Options [spec choice]: `examples_per_group=None` is the whole batch; otherwise epg = min(epg, N)
and a short last group is allowed. At most one of `channels_per_group` (cpg = min(cpg, C)) and
`channel_groups` (cpg = max(C // channel_groups, 1)); with neither, cpg = 1; C % cpg == 0 is
required. `eval_example_weight` alpha in [0, 1], default 0 (standard inference). Momentum
follows the contract (0.1; the official decay 0.99 is momentum 0.01), None = cumulative average
with the counter `num_batches_tracked`.

Deviations from the official code:
* Training statistics come from per-instance two-pass moments (mean and biased variance over
  H, W) by the law of total variance, not the cancelling E[x^2] - E[x]^2; the block variance
  is the same biased quantity, and y = (x - m)·A + Y per (n, c) is one fused affine pass
  (`normbench.variants._fused`, hand-derived input gradient). The buffers' raw moments use
  E[x^2] = var + mean^2 with the whole batch's two-pass variance, again the same quantity.
* Eval writes var = (1-a) var_mov + a var_ex + a(1-a)(mu_mov - mu_ex)^2 (algebraically s - mu^2)
  with var_ex two-pass, and clamps it at 0 (the official one-pass form can go negative -> NaN).
* No weight decay on beta and gamma - 1 ("thing #3"): the released code applies none either.
* A `num_batches_tracked` counter exists for momentum None (the official decay is fixed).
* A one-element group raises a clear ValueError in training (officially it outputs beta).
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.variants._chunked import chunk_sizes
from normbench.variants._core import (
    ContractNorm,
    check_batch_statistics,
    check_input,
    factor_tensor,
    register_affine,
    register_bn_buffers,
)
from normbench.variants._fused import (
    block_affine,
    block_moments,
    fused_instance_affine,
    statistics_ranks,
)
from normbench.variants._options import check_float, check_optional_int


def channels_per_group_for(
    layer: str, num_features: int, channels_per_group: int | None, channel_groups: int | None
) -> int:
    """The official cpg rule (docs/variants.md#fourthings), with a ValueError when C % cpg != 0."""
    if channels_per_group is not None and channel_groups is not None:
        raise ValueError(
            f"{layer}: set at most one of `channels_per_group` and `channel_groups`, but got "
            f"channels_per_group={channels_per_group!r}, channel_groups={channel_groups!r}"
        )
    if channels_per_group is not None:
        cpg = min(channels_per_group, num_features)
    elif channel_groups is not None:
        cpg = max(num_features // channel_groups, 1)
    else:
        cpg = 1
    if num_features % cpg:
        raise ValueError(
            f"{layer}: num_features % channels_per_group == 0 must hold, but got "
            f"num_features={num_features}, channels_per_group={cpg}"
        )
    return cpg


class FourThingsNorm2d(ContractNorm):
    """Batch/group normalization with raw-moment buffers and inference example weighing.

    Constructor contract: `FourThingsNorm2d(num_features, *, examples_per_group=None,
    channels_per_group=None, channel_groups=None, eval_example_weight=0.0, eps=1e-5,
    momentum=0.1, device=None, dtype=None)`.
    """

    paper = (
        "Four Things Everyone Should Know to Improve Batch Normalization (ICLR 2020), "
        "arXiv 1906.03548"
    )
    batch_dependent = True
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {
        "channel_groups": "G",
        "channels_per_group": "cpg",
        "examples_per_group": "epg",
        "eval_example_weight": "alpha",
    }
    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_sq_mean: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        examples_per_group: int | None = None,
        channels_per_group: int | None = None,
        channel_groups: int | None = None,
        eval_example_weight: float = 0.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        name = type(self).__name__
        check_optional_int(name, "examples_per_group", examples_per_group, minimum=1)
        check_optional_int(name, "channels_per_group", channels_per_group, minimum=1)
        check_optional_int(name, "channel_groups", channel_groups, minimum=1)
        alpha = check_float(name, "eval_example_weight", eval_example_weight, low=0.0, high=1.0)
        self.examples_per_group = examples_per_group
        self.channels_per_group = channels_per_group_for(
            name, num_features, channels_per_group, channel_groups
        )
        self.channel_groups = channel_groups  # as given; num_groups is the effective G
        self.num_groups = num_features // self.channels_per_group
        self.eval_example_weight = alpha
        register_affine(self, num_features, device, dtype)
        # Raw moments E[x] and E[x^2] (initialised to 0 and 1), not a mean and a variance.
        register_bn_buffers(self, num_features, device, dtype, var_name="running_sq_mean")

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if self.training:
            return self._train_forward(x)
        return self._eval_forward(x)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        whole = n * statistics_ranks()  # the batch of every rank with global statistics
        epg = self._examples_per_group(whole)
        check_batch_statistics(
            self, x, min(chunk_sizes(whole, epg)) * self.channels_per_group * h * w
        )
        return fused_instance_affine(x, self._coefficients, self.weight, self.bias)

    def _examples_per_group(self, n: int) -> int:
        return n if self.examples_per_group is None else min(self.examples_per_group, n)

    def _coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c), from the per-instance moments (N, C).

        Block statistics (epg samples × cpg channels) by the law of total variance; the
        buffers get the whole batch's raw moments per channel, E[x²] = σ²_c + μ_c².
        """
        with torch.no_grad():
            batch_mean, batch_var, _ = block_moments(mean, var, mean.shape[0], 1)
            self._update_moments(batch_mean[0], batch_var[0])
        n = mean.shape[0]  # the whole batch (every rank's with global statistics)
        epg = self._examples_per_group(n)
        mu, block_var, expand = block_moments(mean, var, epg, self.channels_per_group)
        return block_affine(mean, mu, block_var, expand, weight, bias, self.eps)

    def _update_moments(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Whole-batch raw moments per channel into the buffers (official UPDATE_OPS)."""
        factor = factor_tensor(self, self.momentum)
        sq_mean = var + mean * mean  # E[x^2], without the one-pass cancellation
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_sq_mean.lerp_(sq_mean.to(self.running_sq_mean.dtype), factor)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        cpg, g, alpha = self.channels_per_group, self.num_groups, self.eval_example_weight
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        # Moving moments averaged over each group's channels: (G,).
        mu_mov = self.running_mean.to(stats_dtype).reshape(g, cpg).mean(dim=1)
        s_mov = self.running_sq_mean.to(stats_dtype).reshape(g, cpg).mean(dim=1)
        var_mov = s_mov - mu_mov * mu_mov
        if alpha > 0.0:
            # Each example's moments over its group's channels and positions: (N, G).
            var_ex, mu_ex = torch.var_mean(
                x.to(stats_dtype).reshape(n, g, cpg * h * w), dim=2, correction=0
            )
            mu = (1.0 - alpha) * mu_mov + alpha * mu_ex
            diff = mu_mov - mu_ex
            var = (1.0 - alpha) * var_mov + alpha * var_ex + alpha * (1.0 - alpha) * diff * diff
        else:
            mu, var = mu_mov.expand(n, g), var_mov.expand(n, g)
        # (N, G) -> (N, C): every channel of a group shares its statistics.
        mu = mu.repeat_interleave(cpg, dim=1)
        inv_std = torch.rsqrt(var.clamp_min(0.0) + self.eps).repeat_interleave(cpg, dim=1)
        scale = self.weight * inv_std
        shift = self.bias - mu * scale
        # y = (x - mu) * gamma / std + beta = x * scale + shift, per (n, c).
        return torch.addcmul(
            shift.to(x.dtype).reshape(n, c, 1, 1), x, scale.to(x.dtype).reshape(n, c, 1, 1)
        )

    def extra_repr(self) -> str:
        epg = "N (whole batch)" if self.examples_per_group is None else self.examples_per_group
        return (
            f"{self.num_features}, examples_per_group={epg}, channels_per_group="
            f"{self.channels_per_group}, num_groups={self.num_groups} (channel_groups="
            f"{self.channel_groups}), eval_example_weight={self.eval_example_weight}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )
