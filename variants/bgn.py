"""BGN: Batch Group Normalization (Zhou et al., arXiv 2012.02782, 2020), docs/variants.md#bgn.

No official implementation is public; this follows the spec's reading of the abstract:

    view x (N, C, H, W) as (N, G, M), M = C*H*W/G, row-major over (C, H, W)
    mu_g, sigma2_g = mean and biased variance over (n, m)
    y = gamma_c * (x - mu_g(c)) / sqrt(sigma2_g(c) + eps) + beta_c

For G | C, group g holds channels [g*C/G, (g+1)*C/G). The (G,) running buffers follow torch's
rules: eps, momentum (None = cumulative average, 0 = frozen), the unbiased running variance
with n = N*M and `num_batches_tracked`. Eval normalises with the running statistics.

Implementation [choice], by case:

* G < C, G | C (the default): per (n, c) the output is an affine map of x,
  y = (x − m_nc)·A_nc + Y_nc, with A = γ_c/sqrt(σ²_g(c) + eps) and Y = β_c + (m_nc − μ_g(c))·A.
  The group statistics come from the per-instance moments (two-pass mean m_nc and biased
  variance v_nc over H, W) by the law of total variance, σ²_g = mean v_nc + mean (m_nc − μ_g)²
  over the group's (n, c): exact, and free of E[x²] − E[x]² cancellation. One statistics pass
  and one affine pass (`normbench.variants._fused`, with a hand-derived backward) instead of
  `F.batch_norm` on a reshape plus a separate affine: about BN's cost on CPU.
* G = C: `F.batch_norm` with the affine fused; this is BN, buffers included.
* Spatial groups (G > C): `F.batch_norm` on the (N, G, M) reshape, then the affine.

Options [spec choice]: `num_groups=32`; the effective G is gcd(num_groups, C), so a channel is
never split. With `allow_spatial_groups=True` a num_groups > C is kept as is: groups then split
positions (row-major, so when C does not divide G a group can straddle a channel boundary), the
input needs C*H*W % G == 0, and the statistics depend on the resolution.

Deviations: none from the spec; the paper's own G values are not available.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.variants._core import (
    ContractNorm,
    batch_norm_instances,
    check_batch_statistics,
    check_input,
    per_channel,
    register_affine,
    register_bn_buffers,
    update_factor,
    update_running_stats,
)
from normbench.variants._fused import (
    block_affine,
    block_moments,
    fused_instance_affine,
    global_scope,
)
from normbench.variants._options import check_bool, check_int, groups_dividing_widths


def effective_groups(num_features: int, num_groups: int, allow_spatial_groups: bool) -> int:
    """G after the gcd fallback (kept as given when spatial groups are allowed and G > C)."""
    if allow_spatial_groups and num_groups > num_features:
        return num_groups
    return math.gcd(num_groups, num_features)


class BatchGroupNorm2d(ContractNorm):
    """Batch norm whose statistics pool C/G channels (or positions) per group across the batch.

    Constructor contract: `BatchGroupNorm2d(num_features, *, num_groups=32,
    allow_spatial_groups=False, eps=1e-5, momentum=0.1, device=None, dtype=None)`.
    """

    paper = "Batch Group Normalization (arXiv 2020), arXiv 2012.02782"
    batch_dependent = True
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {"num_groups": "G"}

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, widths: frozenset[int] | None = None
    ) -> dict[str, str]:
        """normbench's option hook: an explicit `num_groups` must divide every norm width
        (unless spatial groups are allowed, where G > C splits positions)."""
        if options.get("allow_spatial_groups") is True:
            return {}
        return groups_dividing_widths(options, widths)

    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        num_groups: int = 32,
        allow_spatial_groups: bool = False,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        name = type(self).__name__
        check_int(name, "num_groups", num_groups, minimum=1)
        check_bool(name, "allow_spatial_groups", allow_spatial_groups)
        self.requested_groups = num_groups
        self.allow_spatial_groups = allow_spatial_groups
        self.num_groups = effective_groups(num_features, num_groups, allow_spatial_groups)
        register_affine(self, num_features, device, dtype)
        register_bn_buffers(self, self.num_groups, device, dtype)  # (G,) statistics

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        n, c, h, w = x.shape
        per_sample = c * h * w
        if per_sample % self.num_groups:
            raise ValueError(
                f"{type(self).__name__}: C*H*W = {per_sample} must be divisible by "
                f"num_groups = {self.num_groups} (spatial groups), but got input of shape "
                f"{tuple(x.shape)}"
            )
        if self.training:
            check_batch_statistics(self, x, n * per_sample // self.num_groups)
        if self.num_groups < c:  # channel groups: a per-(n, c) affine of x
            coefficients = partial(self._coefficients, h * w)
            return fused_instance_affine(x, coefficients, self.weight, self.bias)
        return self._batch_norm_view(x)

    def _coefficients(
        self,
        plane: int,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y from the per-instance moments (N, C), G | C.

        Group statistics over (n, channels of the group, H, W) by the law of total variance:
        σ²_g = mean var_nc + mean (mean_nc − μ_g)², over the group's (n, c); exact.
        """
        n, c = mean.shape
        cpg = c // self.num_groups
        mu, group_var, expand = block_moments(mean, var, [n], cpg)  # (1, G) each
        if self.training:
            update_running_stats(self, mu[0], group_var[0], n * cpg * plane, self.momentum)
        else:
            mu, group_var = self.running_mean[None], self.running_var[None]
        return block_affine(mean, mu, group_var, expand, weight, bias, self.eps)

    def _batch_norm_view(self, x: torch.Tensor) -> torch.Tensor:
        """G = C (BN, affine fused) or spatial groups: `F.batch_norm` on the (N, G, M) view."""
        n, c, h, w = x.shape
        # (N, C, H, W) -> (N, G, M); reshape, not view: the input may be channels_last.
        x3 = x.reshape(n, self.num_groups, c * h * w // self.num_groups)
        fused = self.num_groups == c
        if self.training and global_scope():  # every rank's batch: through the moments
            y = batch_norm_instances(
                self,
                x3.unsqueeze(3),  # (N, G, M, 1): a group is an instance "channel"
                update_running=True,
                momentum=self.momentum,
                eps=self.eps,
                weight=self.weight if fused else None,
                bias=self.bias if fused else None,
            )
            return self._spatial_affine(y.reshape(n, c, h, w), fused)
        factor = update_factor(self, self.momentum) if self.training else 0.0
        y = F.batch_norm(
            x3,
            self.running_mean,
            self.running_var,
            self.weight if fused else None,
            self.bias if fused else None,
            self.training,
            factor,
            self.eps,
        )
        # (N, G, M) -> (N, C, H, W), then the per-channel affine.
        return self._spatial_affine(y.reshape(n, c, h, w), fused)

    def _spatial_affine(self, y: torch.Tensor, fused: bool) -> torch.Tensor:
        """The per-channel affine after the (N, G, M) normalisation (none if already fused)."""
        if fused:
            return y
        # Parameters cast to the input dtype: fp32 parameters must not promote a half output.
        gamma, beta = per_channel(self.weight).to(y.dtype), per_channel(self.bias).to(y.dtype)
        return torch.addcmul(beta, y, gamma)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups} "
            f"(requested {self.requested_groups}), allow_spatial_groups="
            f"{self.allow_spatial_groups}, eps={self.eps}, momentum={self.momentum}"
        )
