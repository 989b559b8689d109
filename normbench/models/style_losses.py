"""AdaIN's training losses (Huang & Belongie, ICCV 2017, arXiv 1703.06868, Sec. 6.2, Eq. 11-12;
the SaBN paper's NST experiment trains and compares with the same two), per sample.

For the decoder's output g(t), t = AdaIN(f(c), f(s)) (or SaAdaIN), and the frozen encoder's
features φ_i at relu1_1, relu2_1, relu3_1, relu4_1 (φ_4 = f):

    content:  L_c = mean over (C, H, W) of (f(g(t)) − t)²
    style:    L_s = Σ_i [ mean_c (μ(φ_i(g(t))) − μ(φ_i(s)))² + mean_c (σ(φ_i(g(t))) − σ(φ_i(s)))² ]

with μ, σ as the layers compute them (`normbench.variants.adain.mean_std`: unbiased variance +
eps, eps 1e-5). The paper writes squared L2 norms; the official codes (pytorch-AdaIN, SaBN's
`NST/models/modules.py`) take `MSELoss` means, which is what these are: the batch mean of the
per-sample values equals their batch loss exactly, since every sample has the same size.
Statistics and squares are in fp32 (or wider) under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from normbench.variants import stats_dtype
from normbench.variants.adain import mean_std

EPS = 1e-5  # inside the square root, as the layers and the official `calc_mean_std`


def content_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) mean squared error per sample between the output's relu4_1 features and the AdaIN
    target t, both (N, C, H, W). Raises ValueError for different shapes."""
    if output.shape != target.shape:
        raise ValueError(
            f"content loss needs equal shapes, got {tuple(output.shape)} and {tuple(target.shape)}"
        )
    diff = output.to(stats_dtype(output)) - target.to(stats_dtype(target))
    return diff.pow(2).flatten(1).mean(dim=1)


def moment_loss(output: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """(N,) squared distance of per-channel means plus that of standard deviations, each
    averaged over channels; `style` (N or 1, C, Hs, Ws) may differ from `output` in size."""
    if output.dim() != 4 or style.dim() != 4 or output.shape[1] != style.shape[1]:
        raise ValueError(
            f"style loss needs 4-D features with equal channels, got {tuple(output.shape)} and "
            f"{tuple(style.shape)}"
        )
    mean_o, std_o = mean_std(output, EPS)
    mean_s, std_s = mean_std(style, EPS)
    return (mean_o - mean_s).pow(2).mean(dim=1) + (std_o - std_s).pow(2).mean(dim=1)


def style_loss(outputs: Sequence[torch.Tensor], styles: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N,) `moment_loss` summed over the encoder's layers (relu1_1 ... relu4_1)."""
    if len(outputs) != len(styles) or not outputs:
        raise ValueError(
            f"style loss needs the same non-zero number of layers, got {len(outputs)} and "
            f"{len(styles)}"
        )
    return torch.stack([moment_loss(o, s) for o, s in zip(outputs, styles, strict=True)]).sum(0)
