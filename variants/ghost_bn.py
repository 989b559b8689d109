"""GhostBN: Hoffer, Hubara, Soudry, "Train longer, generalize better" (NeurIPS 2017),
docs/variants.md#ghost-bn.

The official code (eladhoffer/bigBatch, `main_gbn.py`) has no layer: its training loop splits
each batch with `input.chunk(K)` and runs plain `nn.BatchNorm2d` forward/backward per chunk.
This layer does the same inside one forward:

    x = [x_1; ...; x_K] (contiguous ghost batches along N)
    y_b = gamma * (x_b - mu_b) / sqrt(sigma2_b + eps) + beta        (BNcore per ghost batch)
    r_K = (1-m)^K r_0 + sum_b m (1-m)^(K-b) s_b                     (K sequential EMA updates)

with s_b the ghost batch's mean and unbiased variance (n = |b|*H*W) and the counter += K.
Momentum None is torch's cumulative average per ghost update, in closed form
r_K = (t0 r_0 + sum_b s_b) / (t0 + K) with t0 the counter before the call; momentum 0
freezes the buffers (the counter still counts). Eval is BN with the running statistics.

Implementation [choice]: per (n, c) the training output is an affine map of x,
y = (x − m_nc)·A_nc + Y_nc with A = γ_c/sqrt(σ²_b(n),c + eps), Y = β_c + (m_nc − μ_b(n),c)·A.
The ghost-batch statistics come from the per-instance moments (two-pass mean m_nc and biased
variance v_nc over H, W) by the law of total variance, σ²_b = mean v_nc + mean (m_nc − μ_b)²
over the ghost batch's samples (an averaging matrix handles a short last chunk): exact, with
no E[x²] − E[x]² cancellation. One statistics pass and one affine pass
(`normbench.variants._fused`, hand-derived backward) replace a rearranging copy per direction;
the EMA is applied once in closed form; no Python loop over ghost batches. With one ghost batch
(N <= ghost size) the layer calls `F.batch_norm` on the module buffers directly and is BN
exactly; eval is `F.batch_norm` with the running statistics.

Options [spec choice]: `ghost_batch_size=128` (a short last chunk when N % n_g != 0);
`num_splits=K` switches to torch.chunk semantics (chunks of ceil(N/K), possibly fewer than K)
and then takes precedence over `ghost_batch_size`.

Deviations: the official loop averages gradients over chunks and clips them (loop-level, not a
layer matter); with equal chunks the outputs and the chunk-averaged gradients match. The
closed-form EMA equals the sequential updates up to floating-point rounding.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.variants._chunked import chunk_length, chunk_sizes
from normbench.variants._core import (
    ContractNorm,
    batch_norm_instances,
    batch_norm_training,
    check_batch_statistics,
    check_input,
    register_affine,
    register_bn_buffers,
)
from normbench.variants._fused import (
    block_affine,
    block_moments,
    fused_instance_affine,
    global_scope,
    statistics_ranks,
)
from normbench.variants._options import check_int, check_optional_int


class GhostBatchNorm2d(ContractNorm):
    """Batch norm with per-ghost-batch statistics in training and sequential running updates.

    Constructor contract: `GhostBatchNorm2d(num_features, *, ghost_batch_size=128,
    num_splits=None, eps=1e-5, momentum=0.1, device=None, dtype=None)`.
    """

    paper = (
        "Train longer, generalize better: closing the generalization gap in large batch "
        "training of neural networks (NeurIPS 2017), arXiv 1705.08741"
    )
    batch_dependent = True
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {"ghost_batch_size": "ghost"}

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, batch_size: int | None = None
    ) -> dict[str, str]:
        """normbench's option hook: the ghost batches must split the batch evenly."""
        n, splits = batch_size, options.get("num_splits")
        gbs = options.get("ghost_batch_size", 128)  # the constructor's default
        ok = isinstance(n, int) and n >= 1
        if ok and isinstance(splits, int) and splits >= 1:
            if n % splits:  # type: ignore[operator]
                return {
                    "num_splits": f"num_splits={splits} does not divide batch size {n} "
                    "(ghost batches would be unequal)"
                }
        elif ok and isinstance(gbs, int) and gbs >= 1 and n % gbs:  # type: ignore[operator]
            extra = " (a ghost batch >= the batch is plain BN)" if gbs >= n else ""  # type: ignore[operator]
            return {"ghost_batch_size": f"ghost_batch_size={gbs} must divide batch size {n}{extra}"}
        return {}

    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        ghost_batch_size: int = 128,
        num_splits: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        name = type(self).__name__
        check_int(name, "ghost_batch_size", ghost_batch_size, minimum=1)
        check_optional_int(name, "num_splits", num_splits, minimum=1)
        self.ghost_batch_size = ghost_batch_size
        self.num_splits = num_splits
        register_affine(self, num_features, device, dtype)
        register_bn_buffers(self, num_features, device, dtype)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if self.training:
            n, c, h, w = x.shape
            whole = n * statistics_ranks()  # the batch of every rank with global statistics
            chunk = chunk_length(
                whole, ghost_batch_size=self.ghost_batch_size, num_splits=self.num_splits
            )
            check_batch_statistics(self, x, min(chunk_sizes(whole, chunk)) * h * w)
            if whole > chunk:  # several ghost batches: a per-(n, c) affine of x
                coefficients = partial(self._coefficients, chunk, h * w)
                return fused_instance_affine(x, coefficients, self.weight, self.bias)
            if global_scope():  # one ghost batch spanning the ranks: SyncBatchNorm
                return batch_norm_instances(
                    self,
                    x,
                    update_running=True,
                    momentum=self.momentum,
                    eps=self.eps,
                    weight=self.weight,
                    bias=self.bias,
                )
            # one ghost batch: plain BN on the module buffers
            return batch_norm_training(
                self, x, self.weight, self.bias, momentum=self.momentum, eps=self.eps
            )
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _coefficients(
        self,
        chunk: int,
        plane: int,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c) from the per-instance moments (N, C).

        Ghost batch b's statistics over (its samples, H, W) by the law of total variance:
        μ_b = mean_n mean_nc, σ²_b = mean_n var_nc + mean_n (mean_nc − μ_b)², n in b; exact.
        The buffers get the K sequential EMA updates with the unbiased σ²_b.
        """
        n = mean.shape[0]  # the whole batch (every rank's if global)
        mu, ghost_var, expand = block_moments(mean, var, chunk, 1)  # (K, C) each
        with torch.no_grad():
            # n/(n−1) per ghost batch of n = |b|·H·W values; every batch but a short last
            # one has the same n. Filled on the device: no host data is copied over.
            # NOTE: sizes from the shapes, no Python list: a compiled region keeps N symbolic
            k = mu.shape[0]
            full, last = (s * plane / (s * plane - 1) for s in (chunk, n - (k - 1) * chunk))
            factors = torch.full((k, 1), full, dtype=mu.dtype, device=mu.device)
            factors[-1] = last
            unbiased = (ghost_var * factors).to(self.running_var.dtype)
            self._sequential_update(mu.to(self.running_mean.dtype), unbiased)
        return block_affine(mean, mu, ghost_var, expand, weight, bias, self.eps)

    def _sequential_update(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Apply K EMA updates (one per ghost batch, in order) in closed form; counter += K."""
        k = means.shape[0]
        dtype, device = means.dtype, means.device
        keep: float | torch.Tensor
        if self.momentum is None:  # cumulative average: factor 1/count at each ghost update
            t0 = self.num_batches_tracked.to(dtype)  # on the device: no host sync
            keep = t0 / (t0 + k)
            weights = (1.0 / (t0 + k)).expand(k)
        else:
            m = self.momentum
            keep = (1.0 - m) ** k
            # Ghost batch b (1-based) is decayed K-b times after its own update.
            powers = torch.arange(k - 1, -1, -1, dtype=dtype, device=device)
            weights = m * (1.0 - m) ** powers
        self.num_batches_tracked.add_(k)
        self.running_mean.mul_(keep).add_(weights @ means)
        self.running_var.mul_(keep).add_(weights @ variances)

    def extra_repr(self) -> str:
        if self.num_splits is None:
            split = f"ghost_batch_size={self.ghost_batch_size}, num_splits=None"
        else:
            split = (
                f"ghost_batch_size={self.ghost_batch_size} (ignored), "
                f"num_splits={self.num_splits} (torch.chunk semantics)"
            )
        return f"{self.num_features}, {split}, eps={self.eps}, momentum={self.momentum}"
