"""SaBN: Sandwich Batch Normalization (Gong, Chen, Chen & Wang; WACV 2022; arXiv 2102.11382).
Official code: VITA-Group/Sandwich-Batch-Normalization, flavour (a) `GAN/models/modules.py`
`SandwichBatchNorm2d(num_features, num_classes)` (docs/variants.md#sabn).

Implements flavour (a), the paper's h = γ_i ⊙ (γ_sa ⊙ (x − μ)/σ + β_sa) + β_i:

    h      = γ_sa ⊙ BNcore(x) + β_sa               shared "sandwich" affine, (C,) each
    out[n] = γ_{k_n} ⊙ h[n] + β_{k_n}              branch affine chosen per sample by index k

BNcore is batch norm without affine (docs/variants.md#bncore), with one set of statistics shared by
all branches. Parameters: `weight` γ_sa = 1 and `bias` β_sa = 0 (C,); `embed.weight` (K, 2C) holds
γ_k ~ N(1, 0.02) in columns [0, C) and β_k = 0 in [C, 2C). Buffers as BN. Zeroing `.weight`
leaves out[n] = γ_{k_n} ⊙ β_sa + β_{k_n}, independent of x.

Index (ours, docs/variants.md#branch-index): a branch-indexed layer (`_branch.BranchIndexed`):
`forward(x, index=None)` takes None, an int (whole batch) or an int64 tensor (N,) on x's device.
Precedence: the argument, then the model-wide `branch_index(model, k)` context (`sabn_index` is
its older name), then 0. In classification the index must never be the ground-truth label
(absent at test time); a class-conditional generator is where it is the label.

Deviations from the official code:

* The official module wraps an affine `nn.BatchNorm2d` as `bn`; here γ_sa, β_sa and the BN
  buffers live at the top level (map `bn.*` to the top level when copying).
* `num_branches` K = 1 by default with an all-zero index: BN's function class, parameterised
  differently (initial scale γ_sa·γ_0 = 1 ± 0.02).
* A scalar index is folded into one fused `F.batch_norm` call (weight γ_sa·γ_k, bias
  β_sa·γ_k + β_k); a per-sample index applies the branch affine as an (N, C, 1, 1) broadcast.
* Index checks: `_branch.check_index` (the range only off the GPU, to avoid a host sync).

SaBN is CCBN (`ccbn.py`, the class-conditional BN it replaces in the paper's generators) with
the shared affine added, and subclasses it: one forward for both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._branch import branch_index
from .ccbn import CategoricalConditionalBatchNorm2d


class SandwichBatchNorm2d(CategoricalConditionalBatchNorm2d):
    """BN with a shared affine followed by a per-sample branch affine chosen by an index."""

    paper = (
        "Sandwich Batch Normalization: A Drop-In Replacement for Feature Distribution "
        "Heterogeneity (WACV 2022), arXiv 2102.11382"
    )
    weight: nn.Parameter
    bias: nn.Parameter

    def add_shared_affine(self, kw: dict[str, Any]) -> None:
        """The shared "sandwich" affine γ_sa, β_sa, (C,) each."""
        self.weight = nn.Parameter(torch.empty(self.num_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.num_features, **kw))

    def reset_parameters(self) -> None:
        """γ_sa 1, β_sa 0, γ_k ~ N(1, 0.02), β_k 0 (the official values), fresh statistics."""
        super().reset_parameters()
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Weight decay toward the identity affine pulls gamma_sa and each branch's gamma_k
        (columns [0, C) of the table) to 1; beta_k and the bias decay toward 0."""
        return {"weight": torch.ones_like(self.weight), **super().decay_targets()}


# The name this context had when SaBN was the only branch-indexed layer.
sabn_index = branch_index
