"""BN: Batch Normalization (Ioffe & Szegedy, ICML 2015, arXiv 1502.03167).

Implements y = γ_c · (x − μ_c) / sqrt(σ²_c + eps) + β_c with μ_c, σ²_c the batch mean and biased
variance over (N, H, W) in training, and the running estimates in eval (docs/variants.md#bncore and
docs/variants.md#bn). The running variance is stored unbiased (n/(n−1), n = N·H·W); momentum None is
a cumulative average.

A thin subclass of `torch.nn.BatchNorm2d` (docs/variants.md#bn, ours): torch computes everything, so
the buffers, counter and state_dict keys are exactly torch's. What this class adds:

* the normbench constructor contract (options keyword-only, `norm_layer(C)` works);
* a ValueError for a non-4-D input or a wrong channel count, and for a one-element statistic
  (N·H·W = 1 in training), naming the layer and the input shape instead of torch's generic
  message;
* global statistics across data-parallel ranks (`_fused.global_statistics`): the same
  function through the per-instance moments, i.e. SyncBatchNorm;
* momentum None (a cumulative average) without reading the counter on the host, where
  `nn.BatchNorm2d` calls `float(num_batches_tracked)` (a GPU sync, a graph break).

Note: torchvision's ResNet init loop sets weight←1, bias←0 on every `nn.BatchNorm2d`, which is
BN's own initialisation, but it crashes on `weight=None`: `affine=False` cannot be used inside
torchvision's ResNet (the same holds for `nn.BatchNorm2d(affine=False)`).
"""

from __future__ import annotations

import torch
from torch import nn

from ._core import (
    FxLeaf,
    batch_norm_instances,
    batch_norm_training,
    check_batch_statistics,
    check_input,
    values_per_channel,
)
from ._fused import global_scope
from ._options import check_torch_norm_options


class BatchNorm2d(FxLeaf, nn.BatchNorm2d):
    """`nn.BatchNorm2d` with normbench's constructor contract and clearer input errors."""

    paper = (
        "Batch Normalization: Accelerating Deep Network Training by Reducing Internal "
        "Covariate Shift (ICML 2015), arXiv 1502.03167"
    )
    batch_dependent = True
    global_stats = True

    def __init__(
        self,
        num_features: int,
        *,
        affine: bool = True,
        track_running_stats: bool = True,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        options = check_torch_norm_options(
            type(self).__name__,
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
        )
        super().__init__(num_features, **options, device=device, dtype=dtype)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        if self.training or not self.track_running_stats:
            check_batch_statistics(self, x, values_per_channel(x))
            if global_scope():  # every rank's batch (SyncBatchNorm): through the moments
                return batch_norm_instances(
                    self,
                    x,
                    update_running=self.training and self.track_running_stats,
                    momentum=self.momentum,
                    eps=self.eps,
                    weight=self.weight,
                    bias=self.bias,
                )
            if self.training and self.track_running_stats and self.momentum is None:
                # torch reads the counter on the host for the cumulative average
                return batch_norm_training(
                    self, x, self.weight, self.bias, momentum=None, eps=self.eps
                )
        return nn.BatchNorm2d.forward(self, x)
