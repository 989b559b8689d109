"""Helpers shared by the built-in variants: input checks, GAP, registration and the BN core.

Option checks live in `_options`.

`bn_core` is batch norm without affine on torch's fused kernel (`F.batch_norm`), plus the
`num_batches_tracked` rule of `nn.BatchNorm2d` (docs/variants.md#bncore): momentum None means a
cumulative average (factor 1/num_batches_tracked), 0 means no update.

`FxLeaf` makes `torch.fx.symbolic_trace` record each layer as one call (see its docstring).

`ContractNorm` checks and stores the contract arguments of every variant built from scratch
(BGN, GhostBN, FourThings, UBN register their own state on top).

`RunningStatsNorm` is the base of the BN-family variants that are *not* torch subclasses (IEBN,
RBN, BNET, SaBN): it validates the common constructor arguments, registers the BN buffers and
normalises with `bn_core` (batch statistics in training, running statistics in eval). It is a
plain `nn.Module` on purpose (docs/variants.md#contract point 7): torchvision's ResNet init loop
sets weight←1, bias←0 on every `nn.BatchNorm2d`/`nn.GroupNorm`, which would fill BNET's whole k×k
kernel with ones and crash on RBN's `weight=None`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ._fused import fused_instance_affine, global_scope, statistics_ranks
from ._options import check_common


def check_input(layer: nn.Module, x: torch.Tensor, num_features: int) -> None:
    """Raise ValueError unless x is 4-D with `num_features` channels."""
    if x.dim() != 4:
        raise ValueError(
            f"{type(layer).__name__} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != num_features:
        raise ValueError(
            f"{type(layer).__name__} was built for {num_features} channels, "
            f"got input of shape {tuple(x.shape)}"
        )


# A layer's `conditioning` class attribute names what its forward needs besides x: none (a
# plain norm layer), "index" (a branch index with a default, `_branch.BranchIndexed`: still
# callable as forward(x)), "style" (the style features, `adain`: forward(x, style)).
PLAIN_CONDITIONING = (None, "index")


def plain_norm(cls: Any) -> bool:
    """Whether `cls` is a plain `norm_layer(C)`: built with the channel count alone and called
    as forward(x), as a backbone's norm slots call it (docs/variants.md#contract)."""
    return getattr(cls, "conditioning", None) in PLAIN_CONDITIONING


def check_batch_statistics(layer: nn.Module, x: torch.Tensor, values_per_stat: int) -> None:
    """A clear error where torch would fail obscurely on a one-element statistic.

    The message names the layer class, the input shape and the statistic's size; for a
    batch-dependent layer it suggests a batch-independent variant.
    """
    if values_per_stat <= 1:
        hint = " or a batch-independent variant (gn, in)"
        if not getattr(layer, "batch_dependent", True):
            hint = ""
        raise ValueError(
            f"{type(layer).__name__} needs more than 1 value per statistic to normalise with "
            f"input statistics, but input of shape {tuple(x.shape)} gives {values_per_stat}; "
            f"use a larger batch or spatial size{hint}"
        )


def values_per_channel(x: torch.Tensor) -> int:
    """N·H·W of the statistics batch: every rank's batch inside `global_statistics`."""
    return x.numel() // x.shape[1] * statistics_ranks()


def leaf_forward(layer: Any, x: torch.Tensor, *args: Any) -> torch.Tensor:
    """`layer.forward_impl(x, *args)`; `torch.fx` records a call to this, not its body."""
    return layer.forward_impl(x, *args)


# NOTE: fx patches this module's global during symbolic tracing, so a traced model holds one
# `leaf_forward(layer, x)` node per normbench layer, as it holds one `call_module` node per
# torch norm layer (torch.nn modules are fx leaves). The input checks and the shape-dependent
# choices (ghost batches, groups, the UBN decision) then run, as Python, when the traced graph
# runs. `torch.compile` and `torch.func` do not use fx's patching: they see the whole body.
torch.fx.wrap("leaf_forward")


def leaf_call(layer: Any, x: Any, *args: Any) -> Any:
    """What a layer's `forward` does: one `leaf_forward` node inside a traced model; traced
    alone (`torch.fx.symbolic_trace(layer)`, where the layer is the tracer's root and cannot be
    an argument of its own graph), one call of the GraphModule's submodule `traced_leaf`, the
    layer itself, so a lone layer traces and runs as it does inside a model."""
    if isinstance(x, torch.fx.Proxy) and getattr(x.tracer, "root", None) is layer:
        return x.tracer.create_proxy("call_module", "traced_leaf", (x, *args), {})
    return leaf_forward(layer, x, *args)


class FxLeaf:
    """Mixin: `forward(x)` runs `forward_impl(x)` through the fx-wrapped `leaf_forward`.

    `torch.fx.symbolic_trace` cannot trace Python control flow on shapes (a shape check, the
    number of ghost batches); torch's own norm layers avoid it by being fx leaf modules. A
    normbench layer is recorded as one `leaf_forward` call instead, with the same effect; a
    layer traced alone becomes a GraphModule calling it as its submodule (`leaf_call`).
    `torch.jit.script` is not supported (the layers use Python features it does not
    compile: `*args`, closures passed as coefficient functions); use `torch.compile`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaf_call(self, x)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def traced_leaf(self) -> FxLeaf:
        """The layer itself: what a GraphModule of the layer traced alone holds and calls."""
        return self


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pool per (n, c), kept as (N, C, 1, 1)."""
    return x.mean(dim=(2, 3), keepdim=True)


def per_channel(p: torch.Tensor) -> torch.Tensor:
    """View a (C,) parameter as (1, C, 1, 1) for broadcasting."""
    return p.reshape(1, -1, 1, 1)


def buffer(module: nn.Module, name: str) -> torch.Tensor:
    """`module.<name>` as a tensor (for the type checker: Module attributes are untyped)."""
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor buffer")
    return value


def factor_tensor(
    module: nn.Module,
    momentum: float | None,
    enabled: torch.Tensor | None = None,
    *,
    stats: str = "running_mean",
) -> torch.Tensor | float:
    """Increment `num_batches_tracked` (by `enabled`, a bool tensor, if given) and return this
    step's EMA factor, 0 where not enabled; on the device, without a host sync.

    The factor is in the running statistics' dtype (the buffer `stats`): 1/count in float64
    for a float64 layer (a float32 factor would move float64 buffers by about 1e-8 relative).
    """
    counter = buffer(module, "num_batches_tracked")
    dtype = buffer(module, stats).dtype
    if enabled is None:
        counter.add_(1)
        return 1.0 / counter.to(dtype) if momentum is None else momentum
    counter.add_(enabled)  # int64 += bool
    factor = (
        1.0 / counter.clamp_min(1).to(dtype)
        if momentum is None
        else torch.full((), momentum, dtype=dtype, device=counter.device)
    )
    return torch.where(enabled, factor, 0.0)


def batch_norm_training(
    module: nn.Module,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    momentum: float | None,
    eps: float,
    norm: Callable[..., torch.Tensor] = F.batch_norm,
) -> torch.Tensor:
    """`norm(x, running_mean, running_var, weight, bias, True, factor, eps)` with the buffer
    rule of docs/variants.md#bncore (`norm`: `F.batch_norm` or `F.instance_norm`).

    Momentum None (a cumulative average, factor 1/count) never reads the counter on the host,
    where `nn.BatchNorm2d` does (`float(num_batches_tracked)`, a GPU sync and a graph break):
    the kernel writes this batch's statistics into fresh buffers (factor 1: exactly the batch
    values), and the module's buffers move towards them by the factor on the device.
    """
    running_mean, running_var = buffer(module, "running_mean"), buffer(module, "running_var")
    if momentum is not None:
        buffer(module, "num_batches_tracked").add_(1)
        return norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    batch_mean, batch_var = torch.zeros_like(running_mean), torch.ones_like(running_var)
    y = norm(x, batch_mean, batch_var, weight, bias, True, 1.0, eps)
    factor = factor_tensor(module, None)
    with torch.no_grad():
        running_mean.lerp_(batch_mean, factor)
        running_var.lerp_(batch_var, factor)
    return y


def bn_core(
    module: nn.Module,
    x: torch.Tensor,
    *,
    use_batch_stats: bool,
    update_running: bool,
    momentum: float | None,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise per channel over (N, H, W); affine only if `weight`/`bias` (C,) are given.

    `module` holds `running_mean`, `running_var` and `num_batches_tracked` buffers.
    With `use_batch_stats` the batch statistics normalise (and update the buffers when
    `update_running`); otherwise the running statistics do. Passing `weight`/`bias` lets the
    fused kernel apply a plain per-channel affine in the same pass.
    """
    if use_batch_stats:
        check_batch_statistics(module, x, values_per_channel(x))
        if global_scope():  # statistics of every rank's batch: through the moments
            return batch_norm_instances(
                module,
                x,
                update_running=update_running,
                momentum=momentum,
                eps=eps,
                weight=weight,
                bias=bias,
            )
    if use_batch_stats and update_running:
        return batch_norm_training(module, x, weight, bias, momentum=momentum, eps=eps)
    use_buffers = not use_batch_stats
    return F.batch_norm(
        x,
        buffer(module, "running_mean") if use_buffers else None,
        buffer(module, "running_var") if use_buffers else None,
        weight,
        bias,
        use_batch_stats,
        0.0,
        eps,
    )


def batch_norm_instances(
    module: nn.Module,
    x: torch.Tensor,
    *,
    update_running: bool,
    momentum: float | None,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`bn_core` with batch statistics, computed from per-instance moments (`_fused`).

    The same function as `F.batch_norm` in training (μ, biased σ² over (N, H, W), the buffer
    rule of docs/variants.md#bncore with n = N·H·W); inside `_fused.global_statistics` N is
    every rank's batch, so this is SyncBatchNorm. x: (N, C, H, W); weight, bias: (C,) or None.
    """
    plane = x.shape[2] * x.shape[3]
    coefficients = partial(
        _bn_coefficients, module, plane, update_running, momentum, eps, weight, bias
    )
    return fused_instance_affine(x, coefficients)


def _bn_coefficients(
    module: nn.Module,
    plane: int,
    update_running: bool,
    momentum: float | None,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Y) of `batch_norm_instances` from the per-instance moments (N, C)."""
    mu, batch_var = batch_moments(mean, var)
    if update_running:
        update_running_stats(module, mu, batch_var, mean.shape[0] * plane, momentum)
    invstd = torch.rsqrt(batch_var + eps)
    scale = invstd.expand_as(mean)  # (N, C)
    at_mean = (mean - mu) * invstd
    if weight is not None:
        scale, at_mean = scale * weight, at_mean * weight
    if bias is not None:
        at_mean = at_mean + bias
    return scale, at_mean


def register_bn_buffers(
    module: nn.Module,
    num_features: int,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    *,
    var_name: str = "running_var",
) -> None:
    """running_mean 0, running_var 1 (floating, device/dtype), num_batches_tracked 0 (int64).

    `num_features` is the statistics' length (BGN: the number of groups); `var_name` renames
    the second buffer (FourThings keeps the raw moment E[x²] in `running_sq_mean`).
    """
    module.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
    module.register_buffer(var_name, torch.ones(num_features, device=device, dtype=dtype))
    module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))


def identity_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The identity of a depthwise (C, 1, k, k) kernel with odd k: the centred delta (a
    layer's `decay_targets()` for BNET's and UBN's affine kernels)."""
    k = weight.shape[-1]
    delta = torch.zeros_like(weight)
    delta[:, 0, k // 2, k // 2] = 1.0
    return delta


def register_affine(
    module: nn.Module,
    num_features: int,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> None:
    """`weight` γ = 1 and `bias` β = 0, (C,) parameters: BN's affine at its initial values."""
    module.register_parameter(
        "weight", nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
    )
    module.register_parameter(
        "bias", nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
    )


class ContractNorm(FxLeaf, nn.Module):
    """Base of the variants built from scratch: checks and stores the contract arguments.

    `num_features`, `eps` and `momentum` (docs/variants.md#contract) are validated, naming the
    subclass, and kept as given; subclasses check their own options and register their own state.
    """

    def __init__(self, num_features: int, *, eps: float, momentum: float | None) -> None:
        super().__init__()
        check_common(type(self).__name__, num_features, eps, momentum)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum


class RunningStatsNorm(ContractNorm):
    """Base of BN-family variants built from scratch: contract arguments and BN buffers.

    Subclasses add their parameters, call `self.normalize(x)` for BNcore (docs/variants.md#bncore)
    and extend `extra_repr` through `options_repr`.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        eps: float,
        momentum: float | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.eps = float(eps)
        register_bn_buffers(self, num_features, device, dtype)

    def reset_running_stats(self) -> None:
        """running_mean 0, running_var 1, counter 0 (the initial values)."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def normalize(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BNcore: batch statistics (and a buffer update) in training, running ones in eval."""
        return bn_core(
            self,
            x,
            use_batch_stats=self.training,
            update_running=self.training,
            momentum=self.momentum,
            eps=self.eps,
            weight=weight,
            bias=bias,
        )

    def channel_stats(
        self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BNcore's per-channel (μ, 1/sqrt(σ² + eps)), (C,) each, from per-instance moments.

        Training: batch statistics (with gradient) and the buffer update of docs/variants.md#bncore.
        Eval: the running statistics. `mean`/`var` describe the tensor being normalised (RBN: x_c).
        """
        if not self.training:
            return self.running_mean, torch.rsqrt(self.running_var + self.eps)
        check_batch_statistics(self, x, values_per_channel(x))
        mu, batch_var = batch_moments(mean, var)
        count = mean.shape[0] * x.shape[2] * x.shape[3]  # N·H·W of the whole (global) batch
        update_running_stats(self, mu, batch_var, count, self.momentum)
        return mu, torch.rsqrt(batch_var + self.eps)

    def options_repr(self) -> str:
        """Variant options as 'key=value, ...' (overridden by subclasses that have some)."""
        return ""

    def extra_repr(self) -> str:
        opts = self.options_repr()
        base = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
        return f"{base}, {opts}" if opts else base


# -- BN statistics from per-instance moments (the `_fused` layers) ---------------------------


def batch_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance from per-instance ones (N, C).

    Law of total variance: σ²_c = mean_n var_nc + mean_n (mean_nc − μ_c)², exactly BN's
    statistic over (N, H, W) and free of E[x²] − E[x]² cancellation (both terms are >= 0).
    """
    mu = mean.mean(dim=0)
    return mu, var.mean(dim=0) + (mean - mu).square().mean(dim=0)


def update_running_stats(
    module: nn.Module,
    mean: torch.Tensor,
    var: torch.Tensor,
    n: int,
    momentum: float | None,
    enabled: torch.Tensor | None = None,
) -> None:
    """BN's buffer rule (docs/variants.md#bncore) for batch statistics computed outside
    `F.batch_norm`: counter += 1, r ← (1−f)·r + f·v, with the variance stored unbiased (n/(n−1)).

    `enabled` (a 0-d bool tensor) makes the whole update conditional on the device (UBN's
    decision): no host sync, so `torch.compile(fullgraph=True)` traces it.
    """
    with torch.no_grad():
        running_mean = buffer(module, "running_mean")
        running_var = buffer(module, "running_var")
        factor = factor_tensor(module, momentum, enabled)
        running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
        running_var.lerp_((var.detach() * (n / max(n - 1, 1))).to(running_var.dtype), factor)
