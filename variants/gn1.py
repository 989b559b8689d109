"""GN1: Group Normalization with one group (Wu & He, ECCV 2018, arXiv 1803.08494, G = 1).
Reference implementation: timm's `GroupNorm1` (docs/variants.md#gn1).

Implements y = γ_c · (x − μ_n) / sqrt(σ²_n + eps) + β_c with μ_n, σ²_n the mean and biased
variance of each sample over all of (C, H, W): LayerNorm over (C, H, W) with a per-channel
affine (the PoolFormer / ConvNeXt-isotropic "LayerNorm" of timm). eps = 1e-5 as timm's and
torch's GroupNorm. It is `gn` with `num_groups=1`, registered under its own name so a suite
row reads as the layer it is; torch's fused `F.group_norm` computes it.
"""

from __future__ import annotations

import torch

from .gn import GroupNorm2d


class GroupNorm1(GroupNorm2d):
    """GroupNorm with a single group: per-sample statistics over (C, H, W)."""

    paper = "Group Normalization (ECCV 2018), arXiv 1803.08494 (one group)"

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, num_groups=1, eps=eps, momentum=momentum, device=device, dtype=dtype
        )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"
