"""DyT: Dynamic Tanh, the normalization-free replacement of a norm layer (Zhu, Chen, He, LeCun &
Liu, "Transformers without Normalization", CVPR 2025, arXiv 2503.10622). Official code:
jiachenzhu/DyT, `dynamic_tanh.py`, class `DynamicTanh` with `channels_last=False` (its form
for ConvNeXt's NCHW LayerNorm2d) (docs/variants.md#dyt).

Implements, in training and in eval alike:

    y = γ_c · tanh(α · x) + β_c

with α one learned scalar (shape (1,), as the official parameter) starting at `alpha_init`
= 0.5 (the official `alpha_init_value` default, the paper's α0 for non-LLM models), γ = 1,
β = 0 (C,). No statistics, no buffers, no batch dependence. The paper's own ResNet-50 result
(App. D: 76.2 with BN, 68.9 with DyT on ImageNet) says DyT does not replace BN in a ResNet;
`suites/modern_norms.yaml` measures it.

`eps` and `momentum` are accepted for the contract and unused. Implementation: one `tanh` and
one `addcmul` in the input's dtype (α, γ, β rounded to it once), the same function as the
official `tanh(alpha * x) * weight[:, None, None] + bias[:, None, None]`. On an eager CUDA
device (fp16, bf16, fp32) a Triton kernel each way instead (`_elementwise.dyt`: forward reads
x and writes y in fp32 arithmetic; backward reads g and x and writes dx and the per-(n, c)
sums of the α, γ, β gradients), within the accelerator path's traffic bound
(docs/variants.md#memory-traffic).
"""

from __future__ import annotations

import torch
from torch import nn

from . import _elementwise
from ._core import ContractNorm, check_input, per_channel, register_affine
from ._options import check_float


class DynamicTanh2d(ContractNorm):
    """y = γ·tanh(α·x) + β with a learned scalar α (DyT)."""

    paper = "Transformers without Normalization (CVPR 2025), arXiv 2503.10622"
    batch_dependent = False

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)

    def __init__(
        self,
        num_features: int,
        *,
        alpha_init: float = 0.5,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)  # both: contract only
        name = type(self).__name__
        self.alpha_init = check_float(name, "alpha_init", alpha_init, low=-1e6, high=1e6)
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init, device=device, dtype=dtype))
        register_affine(self, num_features, device, dtype)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if _elementwise.path(x) == "cuda":  # one Triton pass forward, one backward
            return _elementwise.dyt(x, self.alpha, self.weight, self.bias)
        dt = x.dtype
        squashed = torch.tanh(x * self.alpha.to(dt))
        return torch.addcmul(
            per_channel(self.bias).to(dt), squashed, per_channel(self.weight).to(dt)
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha_init={self.alpha_init}"
