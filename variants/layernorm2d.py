"""LN2d: Layer Normalization over the channels of each position, as in ConvNeXt (Liu et al.,
"A ConvNet for the 2020s", CVPR 2022, arXiv 2201.03545; Layer Normalization: Ba, Kiros &
Hinton 2016, arXiv 1607.06450). Reference implementation: timm's `LayerNorm2d`
(docs/variants.md#layernorm2d).

Implements, in training and in eval alike:

    y[n, :, h, w] = γ ⊙ (x[n, :, h, w] − μ_{n,h,w}) / sqrt(σ²_{n,h,w} + eps) + β

with μ, σ² the mean and biased variance over the C channels of one position. No buffers, no
batch dependence. Defaults as timm's and ConvNeXt's: eps = 1e-6, γ = 1, β = 0.

Implementation [choice]: torch's fused `F.layer_norm` on the channels-last view
(N, H, W, C), as timm does. A channels_last input is that view already, so nothing is copied
(the path to use on a GPU: `train.channels_last`); a contiguous input is copied into that
order by the kernel and the output copied back, so the output keeps the input's memory format
(timm returns channels-last strides instead). Under autocast the kernel runs in the input's
dtype with its statistics in fp32 (its accumulation type); γ and β are cast to the input's
dtype, as autocast casts a conv's weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._core import ContractNorm, check_input, register_affine
from ._fused import statistics_precision


def channels_last_view(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the (N, H, W, C) view (no copy; contiguous when x is channels_last)."""
    return x.permute(0, 2, 3, 1)


def channels_first(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, C, H, W) in `like`'s memory format (a copy unless channels_last)."""
    y = y.permute(0, 3, 1, 2)
    # NOTE: `is_contiguous()` without a memory format (vmap cannot query channels_last)
    return y.contiguous() if like.is_contiguous() else y  # else: channels-last strides


def affine_in(x: torch.Tensor, *params: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The parameters in x's dtype for a fused kernel that takes one dtype (bf16/fp16 input)."""
    return [None if p is None else p.to(x.dtype) for p in params]


class LayerNorm2d(ContractNorm):
    """Per-position LayerNorm over C for (N, C, H, W) input (ConvNeXt's, timm's LayerNorm2d)."""

    paper = (
        "A ConvNet for the 2020s (CVPR 2022), arXiv 2201.03545; Layer Normalization "
        "(arXiv preprint 2016), arXiv 1607.06450"
    )
    batch_dependent = False

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)

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
        register_affine(self, num_features, device, dtype)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        weight, bias = affine_in(x, self.weight, self.bias)
        with statistics_precision(x):
            y = F.layer_norm(channels_last_view(x), (self.num_features,), weight, bias, self.eps)
        return channels_first(y, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
