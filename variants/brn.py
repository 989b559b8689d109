"""BRN: Batch Renormalization (Ioffe, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models", NeurIPS 2017, arXiv 1702.03275), Algorithm 1, with the
semantics of Keras' `BatchNormalization(renorm=True)` (tf-keras; docs/variants.md#brn).

Training, per channel c, with μ_B, σ²_B the batch mean and biased variance over (N, H, W):

    σ_B = sqrt(σ²_B + eps)                       μ, σ: the renorm moving averages
    r = stop_gradient(clip(σ_B / σ, 1/rmax_t, rmax_t))
    d = stop_gradient(clip((μ_B − μ) / σ, −dmax_t, dmax_t))
    y = γ · ((x − μ_B) / σ_B · r + d) + β        (gradient through μ_B and σ_B, as BN)
    μ ← μ + α_r (μ_B − μ),  σ ← σ + α_r (σ_B − σ)          (α_r = `renorm_momentum`)

Evaluation: y = γ · (x − running_mean) / running_std + β, where `running_mean` and
`running_std` average μ_B and σ_B with `momentum` (Keras' moving_mean and moving_stddev: the
paper's inference rule, with eps inside σ). With momentum = renorm_momentum both pairs are the
paper's single pair of moving averages.

Warm-up (paper, Sec. 4): r and d start clipped to 1 and 0 (plain BN) and are relaxed. At step
t (training steps before this one, `num_batches_tracked`):

    rmax_t = 1 + (rmax − 1) · ramp(t, rmax_at)     dmax_t = dmax · ramp(t, dmax_at)
    ramp(t, end) = clamp((t − relax_from) / (end − relax_from), 0, 1)

so rmax_t never exceeds rmax nor dmax_t dmax (one public implementation lets the factor grow
past 1). The paper relaxed from step 5k to rmax = 3 at 40k and dmax = 5 at 25k (its Inception
runs); those are the defaults, in steps of this layer. "Gradually" is not specified: the ramp
is linear [choice].

Choices where Keras or the paper differ or are silent:

* Keras guards σ with max(σ, sqrt(eps)); kept. Keras' rmin defaults to 0; here it is the
  paper's 1/rmax_t.
* `momentum=0.1` (the contract's, torch's sense: the weight of the new value; Keras' 0.99 is
  0.01 here), `renorm_momentum=0.01` (Keras' renorm_momentum 0.99). `momentum=None` is a
  cumulative average of the inference pair (docs/variants.md#bncore), which `normbench evaluate`'s
  recalibration uses.
* Statistics in fp32 (float64 stays float64) with autocast off, from per-instance moments
  (`_fused.fused_instance_affine`), so under `stats_scope: global` μ_B, σ_B, r, d and every
  moving average span all ranks' batches, as Keras' synchronized BN would.
* On an accelerator the coefficient math (μ_B, σ_B, r, d, the warm-up and every moving
  average) runs as one compiled region (`_region`; docs/variants.md#kernel-launches).
* Buffers: running_mean 0 and running_std 1 (inference), renorm_mean 0 and renorm_std 1,
  num_batches_tracked (the step t), all (C,) but the counter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._core import (
    ContractNorm,
    batch_moments,
    buffer,
    check_batch_statistics,
    check_input,
    factor_tensor,
    register_affine,
)
from ._fused import fused_instance_affine
from ._options import check_float, check_int

BUFFERS = ("running_mean", "running_std", "renorm_mean", "renorm_std")


def renorm_bounds(
    step: torch.Tensor,
    *,
    rmax: float,
    dmax: float,
    relax_from: int,
    rmax_at: int,
    dmax_at: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmax_t, dmax_t) at training step `step` (a 0-d tensor), in `dtype`: 1 and 0 up to
    `relax_from`, linear to `rmax` at `rmax_at` and `dmax` at `dmax_at`, then constant (the
    ramp is clamped to [0, 1], so never beyond)."""

    def ramp(end: int) -> torch.Tensor:
        if end <= relax_from:  # no ramp: the end value from relax_from on
            return (step >= relax_from).to(dtype)
        return ((step.to(dtype) - relax_from) / (end - relax_from)).clamp(0.0, 1.0)

    return 1.0 + (rmax - 1.0) * ramp(rmax_at), dmax * ramp(dmax_at)


class BatchRenorm2d(ContractNorm):
    """BN whose batch statistics are corrected toward moving averages by clipped r and d."""

    paper = (
        "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized "
        "Models (NeurIPS 2017), arXiv 1702.03275"
    )
    batch_dependent = True
    global_stats = True

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)
    running_mean: torch.Tensor
    running_std: torch.Tensor
    renorm_mean: torch.Tensor
    renorm_std: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        rmax: float = 3.0,
        dmax: float = 5.0,
        relax_from: int = 5000,
        rmax_at: int = 40000,
        dmax_at: int = 25000,
        renorm_momentum: float = 0.01,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        name = type(self).__name__
        self.rmax = check_float(name, "rmax", rmax, low=1.0, high=math.inf)
        self.dmax = check_float(name, "dmax", dmax, low=0.0, high=math.inf)
        self.relax_from = check_int(name, "relax_from", relax_from, minimum=0)
        self.rmax_at = check_int(name, "rmax_at", rmax_at, minimum=self.relax_from)
        self.dmax_at = check_int(name, "dmax_at", dmax_at, minimum=self.relax_from)
        self.renorm_momentum = check_float(
            name, "renorm_momentum", renorm_momentum, low=0.0, high=1.0
        )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        for key in BUFFERS:  # the inference pair (running_*) and the renorm pair, as Keras'
            self.register_buffer(key, torch.empty(num_features, **kw))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )
        self.reset_running_stats()
        register_affine(self, num_features, device, dtype)

    def reset_running_stats(self) -> None:
        """Means 0, standard deviations 1, step 0 (the initial values)."""
        for name in BUFFERS:
            buffer(self, name).fill_(1.0 if name.endswith("std") else 0.0)
        self.num_batches_tracked.zero_()

    def bounds(
        self, dtype: torch.dtype = torch.float32, step: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rmax_t, dmax_t) at `step` (this training step's counter by default; see
        `renorm_bounds`)."""
        return renorm_bounds(
            self.num_batches_tracked if step is None else step,
            rmax=self.rmax,
            dmax=self.dmax,
            relax_from=self.relax_from,
            rmax_at=self.rmax_at,
            dmax_at=self.dmax_at,
            dtype=dtype,
        )

    @torch.no_grad()
    def corrections(self, mu: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r, d (C,) from the batch's μ_B, σ_B (detached) and the renorm averages before this
        step; then every moving average and the step counter move."""
        # NOTE: the state r and d read is copied into one tensor first. In a compiled region
        # (`_region`) the buffers are inputs the region then updates in place, and torch's
        # min-cut partitioner (2.14) may recompute r and d in the backward from the inputs,
        # i.e. after the update (wrong weight gradients; pytorch/pytorch PR 197039). `cat` is
        # not on its recomputable list, so this copy is saved; it costs no launch of its own.
        c, dt = self.num_features, mu.dtype
        state = torch.cat(
            [self.renorm_mean.to(dt), self.renorm_std.to(dt), self.num_batches_tracked[None].to(dt)]
        )
        renorm_mean, renorm_std = state[:c], state[c : 2 * c].clamp_min(math.sqrt(self.eps))
        rmax_t, dmax_t = self.bounds(dt, state[2 * c])
        r = torch.clamp(std / renorm_std, 1.0 / rmax_t, rmax_t)
        d = torch.clamp((mu - renorm_mean) / renorm_std, -dmax_t, dmax_t)
        self.renorm_mean.lerp_(mu.to(self.renorm_mean.dtype), self.renorm_momentum)
        self.renorm_std.lerp_(std.to(self.renorm_std.dtype), self.renorm_momentum)
        factor = factor_tensor(self, self.momentum)  # counter += 1
        if isinstance(factor, torch.Tensor):
            factor = factor.to(self.running_mean.dtype)
        self.running_mean.lerp_(mu.to(self.running_mean.dtype), factor)
        self.running_std.lerp_(std.to(self.running_std.dtype), factor)
        return r, d

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if not self.training:  # γ·(x − running_mean)/running_std + β, as Keras: var = σ² − eps
            var = (self.running_std.square() - self.eps).clamp_min(0.0)
            return F.batch_norm(
                x, self.running_mean, var, self.weight, self.bias, False, 0.0, self.eps
            )
        check_batch_statistics(self, x, x.numel() // x.shape[1])
        return fused_instance_affine(x, self._coefficients, self.weight, self.bias)

    def _coefficients(
        self, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c) from the per-instance moments (N, C):
        μ_B, σ_B (C,) with gradient, r and d without; the moving averages move. A bound
        method, so on an accelerator it runs as one compiled region (`_region`)."""
        mu, batch_var = batch_moments(mean, var)
        std = torch.sqrt(batch_var + self.eps)
        r, d = self.corrections(mu.detach(), std.detach())
        scale = (weight * r / std).expand_as(mean)
        return scale, (mean - mu) * scale + (bias + weight * d)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"rmax={self.rmax}, dmax={self.dmax}, relax_from={self.relax_from}, "
            f"rmax_at={self.rmax_at}, dmax_at={self.dmax_at}, "
            f"renorm_momentum={self.renorm_momentum}"
        )
