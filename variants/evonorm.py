"""EvoNorm-B0 and EvoNorm-S0: evolved normalization-activation layers (Liu, Brock, Simonyan &
Le, "Evolving Normalization-Activation Layers", NeurIPS 2020, arXiv 2004.02967). Reference
implementation: timm's `EvoNorm2dB0` and `EvoNorm2dS0` (docs/variants.md#evonorm).

Each replaces a norm *and* the activation after it (the paper's Table 1 / Fig. 1):

    B0:  y = γ_c · x / max( sqrt(s²_c + eps), v_c·x + sqrt(s²_{n,c} + eps) ) + β_c
    S0:  y = γ_c · x · sigmoid(v_c·x) / sqrt(s²_{n,g} + eps) + β_c

s²_c is the batch variance over (N, H, W) in training (biased) and the running variance in
eval; s²_{n,c} the variance of one (sample, channel) over (H, W); s²_{n,g} that of one
(sample, group of C/G channels) over (C/G, H, W). All variances are biased and centred, the
numerators are x itself (never centred). Parameters (C,): `weight` γ = 1, `bias` β = 0,
`v` = 1. B0 keeps `running_var` (starts 1, moves as docs/variants.md#bncore with the unbiased
n/(n − 1) factor, as timm does) and a `num_batches_tracked` counter timm lacks (the contract's
momentum None); S0 has no buffers.

Defaults and choices:

* eps: B0 1e-3, S0 1e-5 (timm's defaults).
* S0 groups: `num_groups=32` and `channels_per_group` as GN (timm: `groups`, `group_size`),
  with GN's gcd fallback when num_groups does not divide C [choice; timm asserts].
* timm's `apply_act=False` (no v: B0 stops normalising at all, S0 becomes uncentred GN) is
  not offered: neither is a layer of the paper.
* B0's batch variance comes from per-instance moments (law of total variance, exact), so
  under `stats_scope: global` it spans every rank's batch
  (docs/variants.md#statistics-scope-across-devices); the instance term stays per sample.
* Statistics in fp32 (float64 stays float64) with autocast off. S0's element-wise pass runs
  in the input's dtype with the (N, C) coefficients rounded to it once; B0's in fp32, rounded
  to the input's dtype at the end (its max picks a branch: see the NOTE in its forward).
* On an eager CUDA device (fp16, bf16, fp32) both run the per-instance moments kernel, their
  per-(n, c) coefficients as one compiled region (`_coefficients`, the running variance's
  update included) and the element-wise Triton kernels (`_elementwise`, fp32 arithmetic;
  B0's max splits a tie's gradient in halves, as `torch.maximum`), within the accelerator
  path's traffic and kernel bounds (docs/variants.md#memory-traffic).
"""

from __future__ import annotations

import torch
from torch import nn

from . import _elementwise
from ._core import (
    ContractNorm,
    buffer,
    check_batch_statistics,
    check_input,
    factor_tensor,
    per_channel,
    register_affine,
)
from ._fused import gather_rows, global_scope, instance_moments, statistics_precision, stats_dtype
from .gn import GroupNorm2d, effective_groups

PAPER = "Evolving Normalization-Activation Layers (NeurIPS 2020), arXiv 2004.02967"


def _nc11(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], 1, 1)


class EvoNormB0(ContractNorm):
    """EvoNorm-B0: x / max(batch std, v·x + instance std), then γ, β."""

    paper = PAPER
    batch_dependent = True
    global_stats = True
    norm_activation = True  # replaces BN-ReLU: backbones put no ReLU after it
    # no revision: its fp32 max of the two stds (dbd6f67) landed with the layer itself, before
    # any stored result (docs/reproducibility.md#computation-revisions)

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        register_affine(self, num_features, device, dtype)
        self.v = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def batch_std(self, mean: torch.Tensor, var: torch.Tensor, plane: int) -> torch.Tensor:
        """sqrt(s²_c + eps), (C,): the batch variance (and the running update) in training,
        the running variance in eval. `mean`, `var`: the per-instance moments (N, C) of the
        batch (every rank's under global scope), `plane` H·W."""
        if not self.training:
            return torch.sqrt(self.running_var.to(var.dtype) + self.eps)
        mu = mean.mean(dim=0)
        batch_var = var.mean(dim=0) + (mean - mu).square().mean(dim=0)  # total variance
        with torch.no_grad():
            n = mean.shape[0] * plane
            factor = factor_tensor(self, self.momentum, stats="running_var")  # no running mean
            running = buffer(self, "running_var")
            unbiased = batch_var.detach() * (n / max(n - 1, 1))
            running.lerp_(unbiased.to(running.dtype), factor)
        return torch.sqrt(batch_var + self.eps)

    def _coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        batch_mean: torch.Tensor | None,
        batch_var: torch.Tensor | None,
        plane: int,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        """(L, R, v, γ, β) (5, N, C) of y = γ·x / max(L, v·x + R) + β: the accelerator path's
        coefficient region (`_elementwise`); `batch_*` every rank's moments under global
        scope, None for this rank's; `params` (v, γ, β)."""
        n, c = mean.shape
        if batch_mean is None or batch_var is None:
            batch_mean, batch_var = mean, var
        left = self.batch_std(batch_mean, batch_var, plane).expand(n, c)
        per_sample = [p.to(var.dtype).expand(n, c) for p in params]
        return torch.stack([left, torch.sqrt(var + self.eps), *per_sample])

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        plane = x.shape[2] * x.shape[3]
        if self.training:
            check_batch_statistics(self, x, x.numel() // x.shape[1])
        with statistics_precision(x):
            if _elementwise.path(x) is not None:  # the accelerator's: Triton kernels on CUDA
                params = (plane, self.v, self.weight, self.bias)  # region inputs, not `self`'s
                kind, coefficients = _elementwise.EVO_B0, self._coefficients
                return _elementwise.normalise(x, kind, coefficients, *params, batch=True)
            mean, var = instance_moments(x)  # (N, C) each, fp32 or wider
            whole = (mean, var)
            if global_scope() and self.training:  # every rank's moments
                whole = (gather_rows(mean), gather_rows(var))
            left = per_channel(self.batch_std(*whole, plane))
            instance_std = _nc11(torch.sqrt(var + self.eps))
            # NOTE: the max compares in fp32 (x promoted): in bf16, left and right round to
            # the same value where batch and instance std are close, and the branch (hence
            # where the gradient flows) flips; bench gpu's bf16 input gradients were 7% off,
            # now 0.8%.
            right = torch.addcmul(instance_std, x, per_channel(self.v))
            normalised = x / torch.maximum(right, left)
            y = torch.addcmul(per_channel(self.bias), normalised, per_channel(self.weight))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class EvoNormS0(ContractNorm):
    """EvoNorm-S0: x·sigmoid(v·x) / group std, then γ, β (no batch statistics)."""

    paper = PAPER
    batch_dependent = False
    norm_activation = True  # replaces BN-ReLU: backbones put no ReLU after it

    weight: torch.Tensor  # γ (C,), set by register_affine
    bias: torch.Tensor  # β (C,)

    # normbench's option hook, GN's rule: an explicit `num_groups` must divide every width
    check_options = GroupNorm2d.check_options
    option_labels = GroupNorm2d.option_labels  # G, cpg in suite labels

    def __init__(
        self,
        num_features: int,
        *,
        num_groups: int = 32,
        channels_per_group: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)  # momentum: contract only
        name = type(self).__name__
        self.num_groups = effective_groups(num_features, num_groups, channels_per_group, name=name)
        self.channels_per_group = channels_per_group
        register_affine(self, num_features, device, dtype)
        self.v = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))

    def group_inv_std(self, x: torch.Tensor) -> torch.Tensor:
        """1 / sqrt(s²_{n,g} + eps) expanded to (N, C, 1, 1), in `stats_dtype(x)`."""
        n, c = x.shape[:2]
        groups = x.reshape(n, self.num_groups, -1).to(stats_dtype(x))  # (N, G, C/G·H·W)
        var = torch.var(groups, dim=2, correction=0)  # (N, G)
        inv = torch.rsqrt(var + self.eps).repeat_interleave(c // self.num_groups, dim=1)
        return _nc11(inv)

    def _coefficients(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        v: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """(v, k, β) (3, N, C) of y = x·sigmoid(v·x)·k + β, k = γ/sqrt(s²_{n,g} + eps) with
        the group variance from the per-instance moments (law of total variance): the
        accelerator path's coefficient region (`_elementwise`)."""
        n, c = mean.shape
        g = self.num_groups
        means, variances = mean.reshape(n, g, c // g), var.reshape(n, g, c // g)
        centred = means - means.mean(dim=2, keepdim=True)
        group_var = variances.mean(dim=2) + centred.square().mean(dim=2)  # (N, G)
        inv = torch.rsqrt(group_var + self.eps)[:, :, None].expand(n, g, c // g).reshape(n, c)
        per_sample = [p.to(var.dtype).expand(n, c) for p in (v, bias)]
        return torch.stack([per_sample[0], inv * weight.to(var.dtype), per_sample[1]])

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        dt = x.dtype
        if _elementwise.path(x) is not None:  # the accelerator's: Triton kernels on CUDA
            with statistics_precision(x):
                params = (self.v, self.weight, self.bias)  # region inputs, not `self`'s
                return _elementwise.normalise(x, _elementwise.EVO_S0, self._coefficients, *params)
        with statistics_precision(x):
            scale = (self.group_inv_std(x) * per_channel(self.weight)).to(dt)  # (N, C, 1, 1)
            gated = x * torch.sigmoid(x * per_channel(self.v).to(dt))
            y = torch.addcmul(per_channel(self.bias).to(dt), gated, scale)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups}, "
            f"channels_per_group={self.num_features // self.num_groups}, eps={self.eps}"
        )
