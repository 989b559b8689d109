"""IN: Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016, arXiv 1607.08022).

Implements y = γ_c · (x − μ_{n,c}) / sqrt(σ²_{n,c} + eps) + β_c with the mean and biased variance
of each (sample, channel) over (H, W) (docs/variants.md#in), on torch's fused `F.instance_norm`.

Deviations from `torch.nn.InstanceNorm2d`, all [choice] of the spec:

* `affine=True` by default (torch: False, which removes every per-channel scale);
  `track_running_stats=False` as in torch. `extra_repr` shows both flags so logs record them.
* With `track_running_stats=True`, training updates the running statistics as torch does
  (mean over samples of the per-instance statistics, unbiased with H·W) but also increments
  `num_batches_tracked` and treats momentum None as a cumulative average (factor
  1/num_batches_tracked), as the variant contract (docs/variants.md#contract point 2) requires;
  torch's IN leaves the counter at 0 and treats None as "no update". Eval then uses the running
  statistics, so the layer is *not* IN at test time (docs/variants.md#in).
* Only 4-D input: torch also accepts unbatched 3-D input; here that raises ValueError, like a
  wrong channel count (torch only warns about it when affine=False).
* Input in another memory format than contiguous (channels_last) is normalised from its
  per-instance moments (`normbench.variants._fused`), because `F.instance_norm` makes it
  contiguous: the output keeps the input's memory format. Same function, up to rounding. So is
  training with running statistics on an accelerator (docs/variants.md#kernel-launches).
* H·W = 1 with input statistics (training, or any mode without running statistics) raises a
  ValueError naming the layer and the shape, in eval too (docs/variants.md#in pitfall).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._core import (
    FxLeaf,
    batch_norm_training,
    buffer,
    check_batch_statistics,
    check_input,
    update_running_stats,
)
from ._fused import accelerator_path, fused_instance_affine
from ._options import check_torch_norm_options


class InstanceNorm2d(FxLeaf, nn.InstanceNorm2d):
    """Instance norm with affine on by default and normbench's constructor contract."""

    paper = (
        "Instance Normalization: The Missing Ingredient for Fast Stylization (arXiv preprint "
        "2016), arXiv 1607.08022"
    )
    batch_dependent = False
    global_stats = True

    def __init__(
        self,
        num_features: int,
        *,
        affine: bool = True,
        track_running_stats: bool = False,
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
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            # statistics over (H, W) of one (n, c): a single pixel has no variance
            check_batch_statistics(self, x, x.shape[2] * x.shape[3])
        tracking = self.training and self.track_running_stats
        # torch's kernel would return a contiguous output; and with running statistics it is
        # a repeat, a batch norm and a dozen small kernels more, where the accelerator's path
        # runs the statistics' math as one compiled region (docs/variants.md#kernel-launches)
        if not x.is_contiguous() or (tracking and accelerator_path(x)):
            affine = (self.weight, self.bias) if self.affine else ()
            coefficients = partial(self._coefficients, x.shape[2] * x.shape[3])
            return fused_instance_affine(x, coefficients, *affine, across_ranks=False)
        if tracking:
            return batch_norm_training(
                self,
                x,
                self.weight,
                self.bias,
                momentum=self.momentum,
                eps=self.eps,
                norm=F.instance_norm,
            )
        return F.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            0.0,
            self.eps,
        )

    def _coefficients(
        self, plane: int, mean: torch.Tensor, var: torch.Tensor, *affine: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Y) of y = (x − mean)·A + Y per (n, c): IN from the per-instance moments (N, C)
        (x in another memory format than contiguous, which `F.instance_norm` would drop)."""
        if self.training or not self.track_running_stats:
            if self.training and self.track_running_stats:  # torch's rule: mean over samples
                update_running_stats(self, mean.mean(dim=0), var.mean(dim=0), plane, self.momentum)
            centre, invstd = mean, torch.rsqrt(var + self.eps)
        else:
            centre = buffer(self, "running_mean")
            invstd = torch.rsqrt(buffer(self, "running_var") + self.eps)
        scale = invstd.expand_as(mean)
        if affine:
            scale = scale * affine[0]
        at_mean = (mean - centre) * scale
        return scale, at_mean + affine[1] if affine else at_mean
