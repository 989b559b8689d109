"""BGN: Batch Group Normalization (Zhou et al., arXiv 2012.02782, 2020), spec §10.

No official implementation is public; this follows the spec's reading of the abstract:

    view x (N, C, H, W) as (N, G, M), M = C*H*W/G, row-major over (C, H, W)
    mu_g, sigma2_g = mean and biased variance over (n, m)
    y = gamma_c * (x - mu_g(c)) / sqrt(sigma2_g(c) + eps) + beta_c

For G | C, group g holds channels [g*C/G, (g+1)*C/G). It runs `F.batch_norm` on the (N, G, M)
reshape with (G,) running buffers, so eps, momentum (None = cumulative average, 0 = frozen),
the unbiased running variance with n = N*M and `num_batches_tracked` are torch's. G = C is BN,
buffers included. Eval normalises with the running statistics.

Options [spec choice]: `num_groups=32`; the effective G is gcd(num_groups, C), so a channel is
never split. With `allow_spatial_groups=True` a num_groups > C is kept as is: groups then split
positions (row-major, so when C does not divide G a group can straddle a channel boundary), the
input needs C*H*W % G == 0, and the statistics depend on the resolution.

Deviations: none from the spec; the paper's own G values are not available.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from normbench.variants._core import (
    check_batch_statistics,
    check_input,
    per_channel,
    update_factor,
)
from normbench.variants._options import check_bool, check_common, check_int
from torch import nn


def effective_groups(num_features: int, num_groups: int, allow_spatial_groups: bool) -> int:
    """G after the gcd fallback (kept as given when spatial groups are allowed and G > C)."""
    if allow_spatial_groups and num_groups > num_features:
        return num_groups
    return math.gcd(num_groups, num_features)


class BatchGroupNorm2d(nn.Module):
    """Batch norm whose statistics pool C/G channels (or positions) per group across the batch.

    Constructor contract: `BatchGroupNorm2d(num_features, *, num_groups=32,
    allow_spatial_groups=False, eps=1e-5, momentum=0.1, device=None, dtype=None)`.
    """

    paper = "Batch Group Normalization (arXiv 2020), arXiv 2012.02782"
    batch_dependent = True

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
        super().__init__()
        name = type(self).__name__
        check_common(name, num_features, eps, momentum)
        check_int(name, "num_groups", num_groups, minimum=1)
        check_bool(name, "allow_spatial_groups", allow_spatial_groups)
        self.num_features = num_features
        self.requested_groups = num_groups
        self.allow_spatial_groups = allow_spatial_groups
        self.num_groups = effective_groups(num_features, num_groups, allow_spatial_groups)
        self.eps = eps
        self.momentum = momentum
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        g = self.num_groups
        self.register_buffer("running_mean", torch.zeros(g, **factory))
        self.register_buffer("running_var", torch.ones(g, **factory))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        n, c, h, w = x.shape
        per_sample = c * h * w
        if per_sample % self.num_groups:
            raise ValueError(
                f"{type(self).__name__}: C*H*W = {per_sample} must be divisible by "
                f"num_groups = {self.num_groups} (spatial groups), but got input of shape "
                f"{tuple(x.shape)}"
            )
        m = per_sample // self.num_groups
        factor = 0.0
        if self.training:
            check_batch_statistics(self, x, n * m)
            factor = update_factor(self, self.momentum)
        # (N, C, H, W) -> (N, G, M); reshape, not view: the input may be channels_last.
        x3 = x.reshape(n, self.num_groups, m)
        # G = C is BN: the affine then fuses into the kernel.
        fused = self.num_groups == c
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
        y = y.reshape(n, c, h, w)
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
