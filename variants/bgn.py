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
* G = C: `F.batch_norm` on x with the affine fused; this is BN, buffers included (and the
  memory format kept).
* Spatial groups (G > C), in either memory format: every group and channel boundary in the
  (C, H, W) order is a multiple of L = gcd(M, H·W), so the runs of L consecutive positions of
  one channel (segments) each lie in one group and one channel, whether a group is a band of
  whole rows, splits rows or straddles two channels. y is a per-(n, segment) affine of x on a
  view of it ((N, C·H·W/L, L, 1), or (N·H·W/L, C, L, 1) for channels_last), as for channel
  groups. An input in neither layout (other strides) takes `F.batch_norm` on the (N, G, M)
  reshape, then the affine.

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
    batch_norm_training,
    check_batch_statistics,
    check_input,
    per_channel,
    register_affine,
    register_bn_buffers,
    update_running_stats,
    values_per_channel,
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
            check_batch_statistics(self, x, values_per_channel(x) * c // self.num_groups)
        if self.num_groups < c:  # channel groups: a per-(n, c) affine of x
            coefficients = partial(self._coefficients, h * w)
            return fused_instance_affine(x, coefficients, self.weight, self.bias)
        length = math.gcd(per_sample // self.num_groups, h * w)
        layouts = (torch.contiguous_format, torch.channels_last)
        if self.num_groups > c and any(x.is_contiguous(memory_format=f) for f in layouts):
            return self._segments(x, length)
        return self._batch_norm_view(x)

    def _segments(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """Spatial groups (G > C) on a view of x whose instances are segments: runs of
        `length` = gcd(M, H·W) consecutive positions of one channel, so each segment lies in
        one group and one channel (a group of M values may split rows or straddle channels;
        every group and channel boundary is a multiple of `length` in the (C, H, W) order).
        y is then a per-(n, segment) affine of x, one statistics pass and one affine pass as
        for channel groups (no reshaping copy, the memory format kept).

        Contiguous x: the view (N, S, L, 1), S = C·H·W / L segments per sample, segment
        s = c·P + p (P = H·W / L per channel). channels_last x: positions have one stride
        (C), so the view (N·P, C, L, 1) (the segments of a sample become rows)."""
        n, c, h, w = x.shape
        per_channel = h * w // length  # P
        last = not x.is_contiguous()
        if last:  # (N, H, W, C) -> (N, P, L, C) -> (N·P, C, L, 1): a view
            flat = x.permute(0, 2, 3, 1).reshape(n, per_channel, length, c)
            view = flat.permute(0, 1, 3, 2).reshape(n * per_channel, c, length, 1)
        else:  # (N, C, H, W) -> (N, S, L, 1): a view
            view = x.view(n, c * per_channel, length, 1)
        coefficients = partial(
            self._segment_coefficients, per_channel, last, c * h * w // self.num_groups
        )
        y = fused_instance_affine(view, coefficients, self.weight, self.bias)
        if last:
            y = y.reshape(n, per_channel, c, length).permute(0, 1, 3, 2).reshape(n, h, w, c)
            return y.permute(0, 3, 1, 2)
        return y.view(n, c, h, w)

    def _segment_coefficients(
        self,
        per_channel: int,
        last: bool,
        group_size: int,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) per (row, column) of `_segments`'s view from its moments: as (N, S) with
        s = c·P + p, BN's statistics per group of M / L consecutive segments over the samples
        (M = `group_size` values), then back to the view's layout."""
        p = per_channel
        rows = mean.shape[0] // p if last else mean.shape[0]  # samples (every rank's)

        def to_segments(t: torch.Tensor) -> torch.Tensor:  # (N·P, C) -> (N, S)
            return t.view(rows, p, -1).transpose(1, 2).reshape(rows, -1) if last else t

        def from_segments(t: torch.Tensor) -> torch.Tensor:  # (N, S) -> (N·P, C)
            return t.view(rows, -1, p).transpose(1, 2).reshape(rows * p, -1) if last else t

        c = weight.shape[0]
        gamma, beta = (t[:, None].expand(c, p).reshape(-1) for t in (weight, bias))  # (S,)
        m, v = to_segments(mean), to_segments(var)
        per_group = m.shape[1] // self.num_groups  # M / L segments
        scale, at_mean = self._group_affine(m, v, per_group, rows * group_size, gamma, beta)
        return from_segments(scale), from_segments(at_mean)

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
        return self._group_affine(mean, var, cpg, n * cpg * plane, weight, bias)

    def _group_affine(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        cpg: int,
        count: int,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) (N, C') when groups of `cpg` contiguous columns of the moments (N, C') pool
        over all N rows: batch statistics (and the buffer update, `count` values per group)
        in training, the running ones in eval."""
        mu, group_var, expand = block_moments(mean, var, mean.shape[0], cpg)  # (1, G) each
        if self.training:
            update_running_stats(self, mu[0], group_var[0], count, self.momentum)
        else:
            mu, group_var = self.running_mean[None], self.running_var[None]
        return block_affine(mean, mu, group_var, expand, weight, bias, self.eps)

    def _batch_norm_view(self, x: torch.Tensor) -> torch.Tensor:
        """G = C (BN on x itself, affine fused, any memory format) or spatial groups
        (`F.batch_norm` on the (N, G, M) view, then the per-channel affine)."""
        n, c, h, w = x.shape
        fused = self.num_groups == c
        # (N, C, H, W) -> (N, G, M); reshape, not view: the input may be channels_last.
        xg = x if fused else x.reshape(n, self.num_groups, c * h * w // self.num_groups)
        weight, bias = (self.weight, self.bias) if fused else (None, None)
        if self.training and global_scope():  # every rank's batch: through the moments
            y = batch_norm_instances(
                self,
                x if fused else xg.unsqueeze(3),  # (N, G, M, 1): a group is an instance channel
                update_running=True,
                momentum=self.momentum,
                eps=self.eps,
                weight=weight,
                bias=bias,
            )
        elif self.training:
            y = batch_norm_training(self, xg, weight, bias, momentum=self.momentum, eps=self.eps)
        else:
            y = F.batch_norm(
                xg, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
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
