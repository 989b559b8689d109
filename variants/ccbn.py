"""CCBN: categorical conditional batch normalization, the class-conditional BN of SNGAN's and
BigGAN's generators (docs/variants.md#ccbn).

Conditional BN: de Vries et al., "Modulating early visual processing by language" (NeurIPS
2017, arXiv 1707.00683), after the conditional instance norm of Dumoulin et al. (ICLR 2017,
arXiv 1610.07629); with one affine per class in the generator: Miyato & Koyama, "cGANs with
Projection Discriminator" (ICLR 2018, arXiv 1802.05637), whose official chainer code names it
`CategoricalConditionalBatchNormalization`; SaBN's official code (VITA-Group/Sandwich-Batch-
Normalization, `GAN/models/modules.py`) calls it `ccbn`, the arm SaBN replaces.

    x̂      = BNcore(x)                           one set of statistics, no shared affine
    out[n] = γ_{k_n} ⊙ x̂[n] + β_{k_n}            branch affine chosen per sample by index k

`embed.weight` (K, 2C) holds γ_k ~ N(1, 0.02) in columns [0, C) and β_k = 0 in [C, 2C) (the
official values). `.weight` and `.bias` are None (there is no shared affine; torchvision's
`zero_init_residual` skips the layer). Buffers as BN. A branch-indexed layer
(`_branch.BranchIndexed`, docs/variants.md#branch-index): `forward(x, index=None)`; in a
class-conditional generator the index is the class of each sample.

SaBN (`sabn.py`) is this layer with a shared affine γ_sa, β_sa between BNcore and the branch
affine, and subclasses it.

Deviations from the official code: the statistics live at the top level (the official module
wraps `nn.BatchNorm2d(affine=False)` as `bn`); a scalar index folds the branch affine into one
fused `F.batch_norm` call; `num_branches` K = 1 by default, which is BN with γ_0 ~ N(1, 0.02).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _core
from ._branch import BranchIndexed, Index
from ._core import RunningStatsNorm, check_input
from ._options import check_int


class CategoricalConditionalBatchNorm2d(BranchIndexed, RunningStatsNorm):
    """BN without affine followed by a per-sample branch (class) affine chosen by an index."""

    paper = "cGANs with Projection Discriminator (ICLR 2018), arXiv 1802.05637"
    batch_dependent = True
    global_stats = True
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        num_features: int,
        *,
        num_branches: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        check_int(type(self).__name__, "num_branches", num_branches, minimum=1)
        self.num_branches = num_branches
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.add_shared_affine(kw)
        self.embed = nn.Embedding(num_branches, 2 * num_features, **kw)
        self.context_index: Index | None = None  # set by `branch_index` (`_branch`)
        self.reset_parameters()

    def add_shared_affine(self, kw: dict[str, Any]) -> None:
        """No shared affine: `.weight` and `.bias` are None (SaBN registers γ_sa, β_sa)."""
        del kw
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """γ_k ~ N(1, 0.02), β_k 0 (the official values), fresh statistics."""
        self.reset_running_stats()
        c = self.num_features
        with torch.no_grad():
            self.embed.weight[:, :c].normal_(1.0, 0.02)
            self.embed.weight[:, c:].zero_()

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Weight decay toward the identity affine pulls each branch's γ_k (columns [0, C) of
        the table) to 1 and β_k to 0."""
        table = torch.zeros_like(self.embed.weight)
        table[:, : self.num_features] = 1.0
        return {"embed.weight": table}

    def options_repr(self) -> str:
        return f"num_branches={self.num_branches}"

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        return _core.leaf_call(self, x, index)  # one fx node, see `_core.FxLeaf`

    def forward_impl(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        check_input(self, x, self.num_features)
        k = self.resolve_index(x, index)
        c = self.num_features
        weight, bias = self.weight, self.bias
        if isinstance(k, int):
            # one branch for the whole batch: fold the affines into the fused kernel
            gamma_k, beta_k = self.embed.weight[k, :c], self.embed.weight[k, c:]
            if weight is None or bias is None:
                return self.normalize(x, gamma_k, beta_k)
            return self.normalize(x, weight * gamma_k, bias * gamma_k + beta_k)
        h = self.normalize(x, weight, bias)
        emb = F.embedding(k, self.embed.weight)  # (N, 2C)
        n = x.shape[0]
        gamma = emb[:, :c].reshape(n, c, 1, 1)
        beta = emb[:, c:].reshape(n, c, 1, 1)
        return h * gamma + beta
