"""BNET: Batch Normalization with Enhanced Linear Transformation (Xu et al.;
TPAMI 2023; arXiv 2011.14150). Official code: yuhuixu1993/BNET, classification
`models/resnet.py` `BNET2d` (k=3) and detection `BNet2d` (docs/variants.md#bnet).

Implements, in training and in eval (docs/variants.md#bnet): x̂ = BNcore(x), then a per-channel k×k
affine

    y[n,c,h,w] = b_c + Σ_{i,j} W[c,0,i,j] · x̂[n,c,h+i−p,w+j−p],   p = (k−1)/2, zero padding,

i.e. a depthwise convolution (groups C, stride 1, with bias) computed by `F.conv2d`. BN is the
centre-tap-only case (W[c,0,p,p] = γ_c).

Parameters: `weight` = kernel (C, 1, k, k) and `bias` (C,); buffers as BN.

Deviations from the official code, all [choice] of the spec:

* The official module keeps the affine in a child `bnconv` (`bnconv.weight`/`.bias`) with
  `weight=None`; here the kernel and bias are registered as `.weight`/`.bias` and applied with
  the functional conv, so torchvision's `zero_init_residual` zeroes the kernel (the official
  last-norm intent). Map `bnconv.*` to the top level when copying.
* Initialisation. The official classification init is broken (its `nn.BatchNorm2d` branch
  asserts on weight None; the child conv would get kaiming_normal). `init="identity"` (default):
  centre tap 1, other taps 0, bias 0, so BNET equals BN at init. `init="zero"`: kernel and bias 0,
  the official "last_gamma" intent for a block's last norm.
* `kernel_size` must be odd (the padding p = (k−1)/2 keeps the map size); even k raises.
* The kernel is a 4-D parameter: an "ndim <= 1 means no weight decay" rule decays it.
* Placement (last norm of each block only, officially) is the harness's choice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._core import RunningStatsNorm, check_input, identity_kernel
from ._options import check_choice, check_int

INITS = ("identity", "zero")


class BNET2d(RunningStatsNorm):
    """BN whose affine is a depthwise k×k convolution over each channel."""

    paper = (
        "BNET: Batch Normalization with Enhanced Linear Transformation (TPAMI 2023), "
        "arXiv 2011.14150"
    )
    batch_dependent = True
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {"kernel_size": "k"}

    def __init__(
        self,
        num_features: int,
        *,
        kernel_size: int = 3,
        init: str = "identity",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        name = type(self).__name__
        check_int(name, "kernel_size", kernel_size, minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"{name}: kernel_size must be odd (padding (k-1)/2 keeps the size), "
                f"got {kernel_size}"
            )
        check_choice(name, "init", init, INITS)
        self.kernel_size = kernel_size
        self.init = init
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_features, 1, kernel_size, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kernel per `init` (identity: centre tap 1; zero: all 0), bias 0, fresh statistics."""
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()
            if self.init == "identity":
                centre = self.kernel_size // 2
                self.weight[:, 0, centre, centre] = 1.0

    def options_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, init={self.init!r}"

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Weight decay toward the identity affine pulls the kernel to the centred delta (the
        bias, not named, decays toward 0)."""
        return {"weight": identity_kernel(self.weight)}

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        x_hat = self.normalize(x)
        return F.conv2d(
            x_hat,
            self.weight.to(x_hat.dtype),
            self.bias.to(x_hat.dtype),
            padding=self.kernel_size // 2,
            groups=self.num_features,
        )
