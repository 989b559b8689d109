"""GN: Group Normalization (Wu & He, ECCV 2018, arXiv 1803.08494).

Implements y = γ_c · (x − μ_{n,g}) / sqrt(σ²_{n,g} + eps) + β_c, where x is viewed as
(N, G, (C/G)·H·W) and each (sample, group) is normalised by its mean and biased variance
(docs/variants.md#gn), on torch's fused `F.group_norm` (a subclass of `torch.nn.GroupNorm`, so
torchvision's ResNet init loop sets γ←1, β←0, the same values).

Options and deviations [choice]:

* `num_groups=32` is the paper's default. If C % num_groups ≠ 0, G = gcd(num_groups, C) (e.g. 16
  for a 16-channel CIFAR stage) instead of torch's error; `extra_repr` shows the effective G.
* `channels_per_group`, when given, overrides `num_groups`: G = C / channels_per_group, and
  C % channels_per_group = 0 is required (ValueError otherwise).
* `momentum` is accepted for the constructor contract and ignored: GN has no running
  statistics, train equals eval. `eps` is used as given.
* A one-element group (C/G = 1 and H·W = 1) outputs β without an error (docs/variants.md#gn), except
  that torch's `F.group_norm` raises ValueError when moreover N = 1 (N·(C/G)·H·W = 1).
* Off the CPU the layer normalises from the per-instance moments (`normbench.variants._fused`):
  `F.group_norm` runs in fp32 under autocast (an fp32 copy of the input and an fp32 output)
  and its CUDA kernel drops channels_last. Same function, up to rounding; the output keeps the
  input's dtype and memory format.
* G = C is IN with affine; G = 1 is LayerNorm over (C, H, W) with a per-channel affine.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._core import FxLeaf, check_input
from ._fused import accelerator_path, block_affine, block_moments, fused_instance_affine
from ._options import check_common, check_int, groups_dividing_widths


def effective_groups(
    num_features: int,
    num_groups: int,
    channels_per_group: int | None,
    *,
    name: str = "GroupNorm2d",
) -> int:
    """The number of groups GN uses for `num_features` channels (gcd fallback,
    docs/variants.md#gn); `name` is the layer the error messages name."""
    if channels_per_group is not None:
        check_int(name, "channels_per_group", channels_per_group, minimum=1)
        if num_features % channels_per_group != 0:
            raise ValueError(
                f"{name}: num_features % channels_per_group == 0 must hold, but got "
                f"(num_features={num_features}, channels_per_group={channels_per_group})"
            )
        return num_features // channels_per_group
    check_int(name, "num_groups", num_groups, minimum=1)
    return math.gcd(num_groups, num_features)


class GroupNorm2d(FxLeaf, nn.GroupNorm):
    """`nn.GroupNorm` taking C first (`norm_layer(C)`) with a gcd fallback for the groups."""

    paper = "Group Normalization (ECCV 2018), arXiv 1803.08494"
    batch_dependent = False
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {"num_groups": "G", "channels_per_group": "cpg"}

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, widths: frozenset[int] | None = None
    ) -> dict[str, str]:
        """normbench's option hook: an explicit `num_groups` must divide every norm width."""
        if options.get("channels_per_group") is not None:  # overrides num_groups
            return {}
        return groups_dividing_widths(options, widths)

    def __init__(
        self,
        num_features: int,
        *,
        num_groups: int = 32,
        channels_per_group: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_common(type(self).__name__, num_features, eps, momentum)
        groups = effective_groups(num_features, num_groups, channels_per_group)
        super().__init__(groups, num_features, eps=eps, affine=True, device=device, dtype=dtype)
        self.num_features = num_features
        self.channels_per_group = channels_per_group
        self.momentum = momentum  # contract only: GN has no running statistics

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_channels)
        if not accelerator_path(x):
            return nn.GroupNorm.forward(self, x)
        return fused_instance_affine(
            x, self._coefficients, self.weight, self.bias, across_ranks=False
        )

    def _coefficients(
        self, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c) from the per-instance moments (N, C):
        each sample's group statistics by the law of total variance over its channels."""
        cpg = self.num_channels // self.num_groups
        mu, group_var, expand = block_moments(mean, var, 1, cpg)  # (N, G) each
        return block_affine(mean, mu, group_var, expand, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, num_groups={self.num_groups}, "
            f"channels_per_group={self.num_channels // self.num_groups}, eps={self.eps}"
        )
