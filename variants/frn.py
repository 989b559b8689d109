"""FRN: Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, CVPR
2020, arXiv 1911.09737). Reference implementation: timm's `FilterResponseNormTlu2d`
(docs/variants.md#frn).

Implements, per (sample, channel), in training and in eval alike (the paper's Eq. 1-3):

    ν² = mean over (H, W) of x²
    y  = γ_c · x / sqrt(ν² + ε) + β_c
    z  = max(y, τ_c)                        (TLU; `apply_act=False` returns y)

No mean centring, no buffers, no batch dependence. FRN replaces both the norm and the ReLU
after it: in a ResNet the backbone's ReLU still follows, so z goes through max(·, 0) too
(docs/variants.md#frn says what that changes).

Options:

* `eps=1e-6`: the paper's listing (timm defaults to 1e-5; tests pass eps explicitly).
* `learnable_eps=False`: with True, ε = eps + |ε_l| with ε_l a learned (C,) parameter
  `eps_learned` starting at `eps_init=1e-4`, so ε never falls below `eps`. The paper learns ε
  for 1×1 activation maps, where a fixed small ε turns FRN into sign(x); per channel and the
  start value are normbench's reading (the paper's listing calls ε "a scalar constant or
  learnable variable") [choice].
* `apply_act=True`: the TLU (timm's name).

Parameters: `weight` γ = 1, `bias` β = 0, `tau` τ = 0, all (C,) (the official listing uses
[1, 1, 1, C]; docs/variants.md#contract point 8).

Implementation [choice]: without the TLU, the normalisation is a per-instance affine,
y = (x − mean)·A + (β + mean·A) with A = γ / sqrt(ν² + ε) per (n, c) and ν² = var + mean² from
the per-instance moments (`_fused.fused_instance_affine`: one statistics pass and one affine
pass, fp32 statistics, Triton kernels on CUDA). With the TLU, y = x·A + β directly (ν² as
||x||²/HW accumulated in fp32, one `addcmul` with A rounded once to x's dtype), so x = 0 gives
y = β exactly, then z = where(y ≥ τ, y, τ): at a tie y = τ (zeros with β = τ = 0, as at
initialisation) the whole gradient goes to y in eager and compiled code alike. Through the
affine's centring, y rounded to ±1 ulp of β and the compiled and eager steps sent the
gradient of the tied positions to different sides (`normbench bench gpu`), as
`torch.maximum`, which splits a tie's gradient in eager mode only, also did. On an eager
CUDA device the TLU form runs the per-instance moments kernel, (A, β, τ) as one compiled region
(`_tlu_coefficients`) and the element-wise Triton kernels (`_elementwise`: z = max(x·A + β, τ)
in fp32, the same tie rule), within the accelerator path's traffic and kernel bounds
(docs/variants.md#memory-traffic).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import _elementwise
from ._core import ContractNorm, check_input, per_channel, register_affine
from ._fused import fused_instance_affine, statistics_precision, stats_dtype
from ._options import check_bool, check_float


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """ν² = mean over (H, W) of x², (N, C, 1, 1) in `stats_dtype(x)`, accumulated there."""
    norm = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True, dtype=stats_dtype(x))
    return norm.square() / (x.shape[2] * x.shape[3])


class FilterResponseNorm2d(ContractNorm):
    """FRN + TLU: z = max(γ·x/sqrt(mean_hw x² + ε) + β, τ)."""

    paper = (
        "Filter Response Normalization Layer: Eliminating Batch Dependence in the Training "
        "of Deep Neural Networks (CVPR 2020), arXiv 1911.09737"
    )
    batch_dependent = False

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)

    def __init__(
        self,
        num_features: int,
        *,
        apply_act: bool = True,
        learnable_eps: bool = False,
        eps_init: float = 1e-4,
        eps: float = 1e-6,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)  # momentum: contract only
        name = type(self).__name__
        self.apply_act = check_bool(name, "apply_act", apply_act)
        self.norm_activation = self.apply_act  # FRN-TLU replaces BN-ReLU: no ReLU after it
        self.learnable_eps = check_bool(name, "learnable_eps", learnable_eps)
        self.eps_init = check_float(name, "eps_init", eps_init, low=0.0, high=1.0)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        register_affine(self, num_features, device, dtype)
        self.tau = nn.Parameter(torch.zeros(num_features, **kw)) if self.apply_act else None
        self.eps_learned = (
            nn.Parameter(torch.full((num_features,), self.eps_init, **kw))
            if self.learnable_eps
            else None
        )

    def effective_eps(self, learned: torch.Tensor | None = None) -> torch.Tensor | float:
        """ε: `eps`, or eps + |ε_l| (C,) with a learned ε (`learned`: ε_l passed explicitly,
        as a compiled region's input)."""
        learned = self.eps_learned if learned is None else learned
        if learned is None:
            return self.eps
        return self.eps + learned.abs()

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        # the parameters go to the coefficient function as arguments: a compiled region's
        # inputs, whose gradients the count sees accumulate (never read through `self`)
        learned = () if self.eps_learned is None else (self.eps_learned,)
        if self.tau is None:
            return fused_instance_affine(x, self._coefficients, self.weight, self.bias, *learned)
        if _elementwise.path(x) is not None:  # the accelerator's: Triton kernels on CUDA
            params = (self.weight, self.bias, self.tau, *learned)
            with statistics_precision(x):
                return _elementwise.normalise(x, _elementwise.FRN, self._tlu_coefficients, *params)
        return self._with_tlu(x, per_channel(self.tau).to(x.dtype))

    def _coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        learned: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c), without the TLU (a compiled region on
        the accelerator's path: a bound method, not a closure)."""
        # ν² = mean_hw x² = var + mean² (a sum of two non-negative terms: no cancellation)
        scale = weight * torch.rsqrt(var + mean.square() + self.effective_eps(learned))
        return scale, bias + mean * scale

    def _tlu_coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        tau: torch.Tensor,
        learned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(A, β, τ) (3, N, C) of z = max(x·A + β, τ), A = γ/sqrt(ν² + ε), ν² = var + mean²:
        the accelerator path's coefficient region (`_elementwise`)."""
        scale, _ = self._coefficients(mean, var, weight, bias, learned)
        n, c = mean.shape
        return torch.stack([scale, *(p.to(mean.dtype).expand(n, c) for p in (bias, tau))])

    def _with_tlu(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """z = where(y ≥ τ, y, τ), y = x·A + β (module doc: why not the centred affine)."""
        eps = self.effective_eps()
        with statistics_precision(x):
            if isinstance(eps, torch.Tensor):
                eps = per_channel(eps)
            scale = torch.rsqrt(mean_square(x) + eps) * per_channel(self.weight)  # (N, C, 1, 1)
        y = torch.addcmul(per_channel(self.bias).to(x.dtype), x, scale.to(x.dtype))
        return torch.where(y >= tau, y, tau)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, apply_act={self.apply_act}, "
            f"learnable_eps={self.learnable_eps}, eps_init={self.eps_init}"
        )
