"""AdaIN and SaAdaIN: instance normalization whose affine comes from a style input
(docs/variants.md#adain).

AdaIN: Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization" (ICCV 2017), arXiv 1703.06868, Eq. 8:

    AdaIN(x, s) = σ(s) ⊙ (x − μ(x)) / σ(x) + μ(s)

SaAdaIN: Gong, Chen, Chen & Wang, "Sandwich Batch Normalization" (WACV 2022), arXiv 2102.11382,
its style-transfer flavour (official code `NST/models/modules.py` `SaAdaIN`): a shared
"sandwich" affine γ_sa, β_sa (C,) between the normalisation and the style's affine,

    SaAdaIN(x, s) = σ(s) ⊙ (γ_sa ⊙ (x − μ(x)) / σ(x) + β_sa) + μ(s)

μ, σ are per (sample, channel) over (H, W). Both layers take the style features as a second
input, `forward(x, style)` (class attribute `conditioning = "style"`), so neither is a plain
`norm_layer(C)`: the variant registry refuses them where a backbone expects one.

Choices (docs/variants.md#adain):

* σ² is the *unbiased* variance over H·W plus eps (1e-5), σ = sqrt(σ² + eps), as both official
  codes compute it (AdaIN's paper writes the biased variance); H·W >= 2 is required of x and s.
* `style` is (N, C, Hs, Ws) or (1, C, Hs, Ws) (one style for every content); its spatial size
  may differ from x's.
* Folded into one per-(n, c) affine, y = x·a + b with a = σ(s)·γ_sa / σ(x) and
  b = σ(s)·β_sa + μ(s) − μ(x)·a, on statistics computed in fp32 (or wider) under autocast; the
  output has x's dtype and memory format. With γ_sa = 1 and β_sa = 0 each product and sum is
  exact, so SaAdaIN at its initial values equals AdaIN bit for bit.
* No running statistics: training and evaluation compute the same thing; `momentum` is
  accepted for the constructor contract and ignored. AdaIN has no parameters (`.weight` and
  `.bias` are None); SaAdaIN's `.weight` is γ_sa (1) and `.bias` β_sa (0), the official init.
"""

from __future__ import annotations

import torch
from torch import nn

from ._core import FxLeaf, check_input, leaf_call
from ._fused import statistics_precision, stats_dtype
from ._options import check_common


def check_style(layer: nn.Module, style: object, x: torch.Tensor) -> torch.Tensor:
    """`style` if it is a 4-D tensor with x's channels and a batch of 1 or x's N, on x's
    device, with at least 2 values per (sample, channel); ValueError naming the rule else."""
    name = type(layer).__name__
    if not isinstance(style, torch.Tensor):
        raise ValueError(
            f"{name} takes the style features as its second input, forward(x, style), "
            f"got {type(style).__name__}"
        )
    n, c = x.shape[:2]
    if style.dim() != 4 or style.shape[1] != c or style.shape[0] not in (1, n):
        raise ValueError(
            f"{name}: style must have shape (N, C, Hs, Ws) or (1, C, Hs, Ws) for input of shape "
            f"{tuple(x.shape)}, got {tuple(style.shape)}"
        )
    if style.device != x.device:
        raise ValueError(f"{name}: style is on {style.device} but the input is on {x.device}")
    for what, t in (("input", x), ("style", style)):
        if t.shape[2] * t.shape[3] < 2:
            raise ValueError(
                f"{name} needs at least 2 values per (sample, channel) for the unbiased "
                f"variance, but the {what} has shape {tuple(t.shape)}"
            )
    return style


def mean_std(t: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and sqrt(unbiased variance + eps) over (H, W), (N, C) each, in
    `stats_dtype(t)` (the official `calc_mean_std`)."""
    var, mean = torch.var_mean(t.to(stats_dtype(t)), dim=(2, 3), correction=1)
    return mean, torch.sqrt(var + eps)


def adaptive_affine(
    x: torch.Tensor,
    style: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """σ(s) ⊙ (γ ⊙ (x − μ(x))/σ(x) + β) + μ(s) as one per-(n, c) affine (module docstring);
    γ, β (C,) or None (AdaIN)."""
    with statistics_precision(x):
        mean_x, std_x = mean_std(x, eps)
        mean_s, std_s = mean_std(style, eps)  # (N or 1, C)
        gain = std_s if weight is None else std_s * weight.to(std_s.dtype)
        scale = gain / std_x  # (N, C)
        shift = mean_s if bias is None else std_s * bias.to(std_s.dtype) + mean_s
        shift = shift - mean_x * scale
        n, c = scale.shape
        y = x * scale.reshape(n, c, 1, 1) + shift.reshape(n, c, 1, 1)
    return y.to(x.dtype)


class AdaptiveInstanceNorm2d(FxLeaf, nn.Module):
    """AdaIN: x's per-(n, c) mean and std replaced by the style's (module docstring)."""

    paper = (
        "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization "
        "(ICCV 2017), arXiv 1703.06868"
    )
    batch_dependent = False
    conditioning = "style"
    shared_affine = False  # SaAdaIN's γ_sa, β_sa
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_common(type(self).__name__, num_features, eps, momentum)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        if not self.shared_affine:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
            return
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ_sa = 1, β_sa = 0 (the official init): SaAdaIN starts as AdaIN."""
        if self.weight is not None and self.bias is not None:
            with torch.no_grad():
                self.weight.fill_(1.0)
                self.bias.zero_()

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return leaf_call(self, x, style)  # one fx node, see `_core.FxLeaf`

    def forward_impl(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_input(self, x, self.num_features)
        style = check_style(self, style, x)
        return adaptive_affine(x, style, self.eps, self.weight, self.bias)


class SandwichAdaptiveInstanceNorm2d(AdaptiveInstanceNorm2d):
    """SaAdaIN: AdaIN with a shared affine γ_sa, β_sa between the normalisation and the
    style's affine (module docstring)."""

    paper = (
        "Sandwich Batch Normalization: A Drop-In Replacement for Feature Distribution "
        "Heterogeneity (WACV 2022), arXiv 2102.11382"
    )
    shared_affine = True
