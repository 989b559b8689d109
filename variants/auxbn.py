"""AuxBN and SaAuxBN: batch norm with separate statistics per branch (docs/variants.md#auxbn).

AuxBN: Xie, Tan, Gong, Wang, Yuille & Le, "Adversarial Examples Improve Image Recognition"
(AdvProp, CVPR 2020, arXiv 1911.09665), Sec 3.2: clean and adversarial examples are normalised
by separate BNs ("auxiliary BN" for the adversarial ones), since their statistics differ.
SaAuxBN: Gong, Chen, Chen & Wang, "Sandwich Batch Normalization" (WACV 2022, arXiv 2102.11382),
Sec 4.3, official code VITA-Group/Sandwich-Batch-Normalization `Adv/models/modules.py`: separate
statistics per branch without affine, then one shared "sandwich" affine, then a branch affine.

With branch k_n of sample n and x̂ normalised by branch k_n's statistics alone:

    AuxBN     y_n = γ_{k_n} ⊙ x̂_n + β_{k_n}                                  γ_k, β_k (C,)
    SaAuxBN   y_n = γ_{k_n} ⊙ (γ_sa ⊙ x̂_n + β_sa) + β_{k_n}

Both are one function: per-branch statistics and a per-branch affine W_k, B_k (K, C)
(`branch_affine`): AuxBN's own γ_k, β_k; SaAuxBN's folded γ_k·γ_sa, γ_k·β_sa + β_k.

Index (docs/variants.md#branch-index): `forward(x, index=None)`, else the `branch_index` context,
else 0 (the clean branch in adversarial training). An int sends the whole batch through one
branch: `F.batch_norm` on that branch's rows, exactly a BN on those samples (the official code's
two forward passes). A per-sample int64 tensor (N,) normalises each branch's samples by their
own statistics in one call (AdvProp's one batch of clean and adversarial halves): the statistics
come from per-instance moments (`_fused`), without a host sync; a branch absent from the batch
keeps its running statistics and counter.

State: `running_mean`, `running_var` (K, C) and `num_batches_tracked` (K,), one row per branch.
AuxBN: `weight` (K, C) = 1, `bias` (K, C) = 0 (the official `nn.BatchNorm2d` per branch).
SaAuxBN: `weight` γ_sa ~ N(1, 0.02) and `bias` β_sa = 0 (C,); `embed.weight` (K, 2C) holds
γ_k ~ N(1, 0.02) in columns [0, C) and β_k = 0 in [C, 2C) (the official initial values).

Deviations from the official code: the K BNs live as (K, C) rows of one layer instead of a
`ModuleList` of `nn.BatchNorm2d` (`bn_list.k.*` maps to row k); SaAuxBN's shared affine is
`weight`/`bias` instead of the embedding's last row (`embed.weight[K]`); the per-sample index
(the official layers take one int per call); `global_stats`: inside `global_statistics` each
branch's statistics span every rank's samples of that branch (the index rows are gathered with
the moments), i.e. SyncBatchNorm per branch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _core, _region
from ._branch import BranchIndexed, Index, host_checks
from ._core import ContractNorm, check_batch_statistics, check_input
from ._fused import fused_instance_affine, gather_rows, global_scope, regions_on, stats_dtype
from ._options import check_int


class _BranchStatsNorm(BranchIndexed, ContractNorm):
    """K sets of BN statistics; a subclass registers its affine parameters (`init_affine`)
    and gives the per-branch affine they make (`branch_affine`)."""

    batch_dependent = True
    global_stats = True
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        num_branches: int = 2,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)  # checks them
        self.eps = float(eps)
        self.num_branches = check_int(type(self).__name__, "num_branches", num_branches, minimum=1)
        shape = (num_branches, num_features)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(shape, **kw))
        self.register_buffer("running_var", torch.ones(shape, **kw))
        self.register_buffer(
            "num_batches_tracked", torch.zeros(num_branches, dtype=torch.long, device=device)
        )
        self.context_index: Index | None = None  # set by `branch_index` (`_branch`)
        self.init_affine({"device": device, "dtype": dtype})

    def init_affine(self, kw: dict[str, Any]) -> None:
        """Register the affine parameters (`kw`: the constructor's device and dtype)."""
        raise NotImplementedError

    def reset_running_stats(self) -> None:
        """running_mean 0, running_var 1, counters 0, in every branch."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def branch_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, B), (K, C) each: y = W_k ⊙ x̂ + B_k in branch k."""
        raise NotImplementedError

    def branch_row(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_k, B_k), (C,) each: branch k's affine for an input `x` sent through it whole."""
        weight, bias = self.branch_affine()
        return weight[k], bias[k]

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_branches={self.num_branches}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        return _core.leaf_call(self, x, index)  # one fx node, see `_core.FxLeaf`

    def forward_impl(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        check_input(self, x, self.num_features)
        k = self.resolve_index(x, index)
        if isinstance(k, int) and not (self.training and global_scope()):
            return self._one_branch(x, k, *self.branch_row(x, k))
        weight, bias = self.branch_affine()
        if isinstance(k, int):  # statistics over every rank: through the per-sample path
            k = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
        if not self.training:
            return self._per_sample_eval(x, k, weight, bias)
        return self._per_sample_training(x, k, weight, bias)

    def _one_branch(
        self, x: torch.Tensor, k: int, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """BN on the whole batch with branch k's statistics (rows of the buffers, updated in
        place) and affine."""
        mean, var = self.running_mean[k], self.running_var[k]
        if not self.training:
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        check_batch_statistics(self, x, x.numel() // x.shape[1])
        counter = self.num_batches_tracked[k]
        counter.add_(1)
        if self.momentum is not None:
            return F.batch_norm(x, mean, var, weight, bias, True, self.momentum, self.eps)
        # momentum None: the batch's statistics (factor 1 into fresh tensors), then a
        # cumulative average on the device, never reading the counter on the host
        batch_mean, batch_var = torch.zeros_like(mean), torch.ones_like(var)
        y = F.batch_norm(x, batch_mean, batch_var, weight, bias, True, 1.0, self.eps)
        factor = 1.0 / counter.to(mean.dtype)
        with torch.no_grad():
            mean.lerp_(batch_mean, factor)
            var.lerp_(batch_var, factor)
        return y

    def _per_sample_training(
        self, x: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Each branch's samples normalised by their own batch statistics, from per-instance
        moments m, v (N, C) (law of total variance; every rank's rows inside
        `global_statistics`); the buffers of each branch present move as BN's
        (docs/variants.md#bncore), with n = n_k·H·W."""
        plane = x.shape[2] * x.shape[3]
        if host_checks(k) and not global_scope():  # on a GPU (or compiled): a host sync
            counts = torch.bincount(k, minlength=self.num_branches)
            check_batch_statistics(self, x, int(counts[counts > 0].min()) * plane)
        onehot = F.one_hot(k, self.num_branches)  # (N, K)

        def coefficients(
            mean: torch.Tensor, var: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            members = gather_rows(onehot.to(mean.dtype))  # (R x N, K) as the moments
            counts = members.sum(dim=0)  # (K,)
            share = members / counts.clamp_min(1)  # (N, K): 1/n_k on branch k's samples
            branch_mean = share.T @ mean  # (K, C)
            centred = mean - members @ branch_mean  # (N, C): m_n − μ_{k_n}
            branch_var = share.T @ (var + centred.square())  # (K, C), biased
            self._update_running(branch_mean, branch_var, counts * plane)
            gain = torch.rsqrt(branch_var + self.eps) * weight.to(mean.dtype)  # (K, C)
            scale = members @ gain  # (N, C)
            return scale, torch.addcmul(members @ bias.to(mean.dtype), centred, scale)

        return fused_instance_affine(x, coefficients)

    def _update_running(
        self, branch_mean: torch.Tensor, branch_var: torch.Tensor, n: torch.Tensor
    ) -> None:
        """r ← (1 − f)·r + f·v in each branch present (n_k > 0), the variance unbiased
        (n/(n − 1)); f = momentum, or 1/count for momentum None; absent branches keep theirs."""
        with torch.no_grad():
            present = n > 0  # (K,)
            self.num_batches_tracked.add_(present.to(self.num_batches_tracked.dtype))
            dtype = self.running_mean.dtype
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.clamp_min(1).to(dtype)
            else:
                factor = torch.full_like(n, self.momentum, dtype=dtype)
            factor = torch.where(present, factor, 0.0)[:, None]  # (K, 1)
            unbiased = branch_var * (n / (n - 1).clamp_min(1))[:, None]
            self.running_mean.lerp_(branch_mean.to(dtype), factor)
            self.running_var.lerp_(unbiased.to(dtype), factor)

    def _per_sample_eval(
        self, x: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Each sample normalised by its branch's running statistics and affine."""
        dtype = stats_dtype(x)
        scale = torch.rsqrt(self.running_var[k] + self.eps) * weight[k]  # (N, C)
        shift = bias[k] - self.running_mean[k] * scale
        n, c = scale.shape
        y = torch.addcmul(
            shift.to(dtype).reshape(n, c, 1, 1), x.to(dtype), scale.to(dtype).reshape(n, c, 1, 1)
        )
        return y.to(x.dtype)


class AuxBatchNorm2d(_BranchStatsNorm):
    """AuxBN: K BNs in one layer, statistics and affine per branch (0 clean, 1 adversarial)."""

    paper = (
        "Adversarial Examples Improve Image Recognition (CVPR 2020), arXiv 1911.09665; as "
        "used in Sandwich Batch Normalization (WACV 2022), arXiv 2102.11382"
    )

    def init_affine(self, kw: dict[str, Any]) -> None:
        """γ_k = 1, β_k = 0 in every branch (the official `nn.BatchNorm2d`s)."""
        shape = (self.num_branches, self.num_features)
        self.weight = nn.Parameter(torch.ones(shape, **kw))
        self.bias = nn.Parameter(torch.zeros(shape, **kw))

    def branch_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.bias

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Every branch's gamma toward 1 (its beta toward 0)."""
        return {"weight": torch.ones_like(self.weight)}


class SaAuxBatchNorm2d(_BranchStatsNorm):
    """SaAuxBN: statistics per branch, a shared sandwich affine, then a branch affine."""

    paper = (
        "Sandwich Batch Normalization: A Drop-In Replacement for Feature Distribution "
        "Heterogeneity (WACV 2022), arXiv 2102.11382"
    )

    def init_affine(self, kw: dict[str, Any]) -> None:
        """γ_sa, β_sa (C,) and the branch table (K, 2C), at `reset_parameters`' values."""
        self.weight = nn.Parameter(torch.empty(self.num_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.num_features, **kw))
        self.embed = nn.Embedding(self.num_branches, 2 * self.num_features, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ_sa and every γ_k from N(1, 0.02), β_sa and β_k 0 (the official values)."""
        c = self.num_features
        with torch.no_grad():
            self.weight.normal_(1.0, 0.02)
            self.bias.zero_()
            self.embed.weight[:, :c].normal_(1.0, 0.02)
            self.embed.weight[:, c:].zero_()

    def branch_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_k = γ_k ⊙ γ_sa and B_k = γ_k ⊙ β_sa + β_k, (K, C) each."""
        c = self.num_features
        gamma, beta = self.embed.weight[:, :c], self.embed.weight[:, c:]
        return gamma * self.weight, torch.addcmul(beta, gamma, self.bias)

    def branch_row(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch k's folded affine (C,): on the accelerator path one compiled region (its
        four per-channel ops and their backward would be a dozen launches)."""
        params = (self.embed.weight, self.weight, self.bias)
        if regions_on(x):
            return _region.call(self._fold_row, k, *params)  # type: ignore[no-any-return]
        return self._fold_row(k, *params)

    def _fold_row(
        self, k: int, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """W_k = γ_k ⊙ γ_sa and B_k = γ_k ⊙ β_sa + β_k from row k of the table (K, 2C)."""
        gamma, beta = table[k, : self.num_features], table[k, self.num_features :]
        return gamma * weight, torch.addcmul(beta, gamma, bias)

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """γ_sa and each γ_k (columns [0, C) of the table) toward 1; the betas toward 0."""
        table = torch.zeros_like(self.embed.weight)
        table[:, : self.num_features] = 1.0
        return {"weight": torch.ones_like(self.weight), "embed.weight": table}
