"""RMSNorm2d: Root Mean Square Layer Normalization over the channels of each position (Zhang &
Sennrich, NeurIPS 2019, arXiv 1910.07467). Reference implementation: timm's `RmsNorm2d`
(docs/variants.md#rmsnorm2d).

Implements, in training and in eval alike:

    y[n, :, h, w] = γ ⊙ x[n, :, h, w] / sqrt(mean_c x[n, c, h, w]² + eps)

No centring, no bias (`.bias` is None, as in timm and the paper's default), no buffers.
Defaults as timm's: eps = 1e-6, γ = 1.

Implementation [choice]: torch's fused `F.rms_norm` on the channels-last view, as LN2d
(`layernorm2d.py`): no copy for channels_last input, the output in the input's memory
format, statistics in fp32 (the kernel's accumulation type) under autocast. timm computes the
same function with composite ops on dim 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._core import ContractNorm, check_input
from ._fused import statistics_precision
from .layernorm2d import affine_in, channels_first, channels_last_view


class RMSNorm2d(ContractNorm):
    """Per-position RMSNorm over C for (N, C, H, W) input (timm's RmsNorm2d)."""

    paper = "Root Mean Square Layer Normalization (NeurIPS 2019), arXiv 1910.07467"
    batch_dependent = False

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-6,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)  # momentum: contract only
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = None

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        (weight,) = affine_in(x, self.weight)
        with statistics_precision(x):
            y = F.rms_norm(channels_last_view(x), (self.num_features,), weight, self.eps)
        return channels_first(y, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
