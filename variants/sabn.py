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

Index (ours, docs/variants.md#sabn): `forward(x, index=None)` takes None, an int (whole batch) or an
int64 tensor (N,) on x's device. Precedence: the argument, then the model-wide
`sabn_index(model, k)` context, then 0. The index must never be the ground-truth label (absent
at test time).

Deviations from the official code:

* The official module wraps an affine `nn.BatchNorm2d` as `bn`; here γ_sa, β_sa and the BN
  buffers live at the top level (map `bn.*` to the top level when copying).
* `num_branches` K = 1 by default with an all-zero index: BN's function class, parameterised
  differently (initial scale γ_sa·γ_0 = 1 ± 0.02).
* A scalar index is folded into one fused `F.batch_norm` call (weight γ_sa·γ_k, bias
  β_sa·γ_k + β_k); a per-sample index applies the branch affine as an (N, C, 1, 1) broadcast.
* Index checks (int64, shape (N,), device) always run; the range check runs for ints and CPU
  tensors only, because on a GPU it would need a device sync (an out-of-range CUDA index is a
  device-side assert). `nn.DataParallel` splits x but not the index: unsupported with
  non-default indices (the shape check catches it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _core
from ._core import RunningStatsNorm, check_input
from ._options import check_int

Index = int | torch.Tensor


class SandwichBatchNorm2d(RunningStatsNorm):
    """BN with a shared affine followed by a per-sample branch affine chosen by an index."""

    paper = (
        "Sandwich Batch Normalization: A Drop-In Replacement for Feature Distribution "
        "Heterogeneity (WACV 2022), arXiv 2102.11382"
    )
    batch_dependent = True
    global_stats = True

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
        self.weight = nn.Parameter(torch.empty(num_features, **kw))
        self.bias = nn.Parameter(torch.empty(num_features, **kw))
        self.embed = nn.Embedding(num_branches, 2 * num_features, **kw)
        # set by `sabn_index` for the duration of a `with` block; never a buffer
        self.context_index: Index | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ_sa 1, β_sa 0, γ_k ~ N(1, 0.02), β_k 0 (the official values), fresh statistics."""
        self.reset_running_stats()
        c = self.num_features
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()
            self.embed.weight[:, :c].normal_(1.0, 0.02)
            self.embed.weight[:, c:].zero_()

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Weight decay toward the identity affine pulls gamma_sa and each branch's gamma_k
        (columns [0, C) of the table) to 1; beta_k and the bias decay toward 0."""
        table = torch.zeros_like(self.embed.weight)
        table[:, : self.num_features] = 1.0
        return {"weight": torch.ones_like(self.weight), "embed.weight": table}

    def options_repr(self) -> str:
        return f"num_branches={self.num_branches}"

    def forward(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        return _core.leaf_call(self, x, index)  # one fx node, see `_core.FxLeaf`

    def forward_impl(self, x: torch.Tensor, index: Index | None = None) -> torch.Tensor:  # type: ignore[override]
        check_input(self, x, self.num_features)
        k = self.resolve_index(x, index)
        c = self.num_features
        if isinstance(k, int):
            # one branch for the whole batch: fold both affines into the fused kernel
            gamma_k, beta_k = self.embed.weight[k, :c], self.embed.weight[k, c:]
            return self.normalize(x, self.weight * gamma_k, self.bias * gamma_k + beta_k)
        h = self.normalize(x, self.weight, self.bias)
        emb = F.embedding(k, self.embed.weight)  # (N, 2C)
        n = x.shape[0]
        gamma = emb[:, :c].reshape(n, c, 1, 1)
        beta = emb[:, c:].reshape(n, c, 1, 1)
        return h * gamma + beta

    def resolve_index(self, x: torch.Tensor, index: Index | None) -> Index:
        """The argument, else the context index, else 0; validated against x
        (docs/variants.md#sabn)."""
        if index is None:
            index = self.context_index
        if index is None:
            return 0
        return check_index(self, index, x)


def check_index(layer: SandwichBatchNorm2d, index: object, x: torch.Tensor) -> Index:
    """Raise ValueError unless `index` is a branch int or an int64 (N,) tensor on x's device."""
    name, k = type(layer).__name__, layer.num_branches
    if isinstance(index, int) and not isinstance(index, bool):
        if not 0 <= index < k:
            raise ValueError(f"{name}: index must be in [0, {k}) (num_branches={k}), got {index}")
        return index
    if not isinstance(index, torch.Tensor):
        raise ValueError(
            f"{name}: index must be None, an int or an int64 tensor of shape (N,), "
            f"got {type(index).__name__}"
        )
    n = x.shape[0]
    if index.dtype != torch.int64 or tuple(index.shape) != (n,):
        raise ValueError(
            f"{name}: index must be an int64 tensor of shape (N,) = ({n},) for input of shape "
            f"{tuple(x.shape)}, got dtype {index.dtype} and shape {tuple(index.shape)} "
            f"({index.numel()} entries for {n} samples; nn.DataParallel splits x, not the index)"
        )
    if index.device != x.device:
        raise ValueError(f"{name}: index is on {index.device} but the input is on {x.device}")
    if index.device.type == "cpu" and n > 0 and not (0 <= int(index.min()) <= int(index.max()) < k):
        raise ValueError(
            f"{name}: index values must be in [0, {k}) (num_branches={k}), got range "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    return index


@contextlib.contextmanager
def sabn_index(model: nn.Module, index: Index) -> Iterator[None]:
    """Within the block, every SaBN layer in `model` uses `index` unless forward gets one.

    Sets the non-persistent `context_index` attribute on each `SandwichBatchNorm2d` submodule
    (the model itself included) and restores the previous value on exit, also on exceptions,
    so blocks nest. A model without SaBN layers is left untouched. The index is checked
    against each input's batch size when a layer runs.
    """
    if isinstance(index, bool) or not isinstance(index, int | torch.Tensor):
        raise ValueError(
            f"sabn_index: index must be an int or an int64 tensor of shape (N,), "
            f"got {type(index).__name__}"
        )
    layers = [m for m in model.modules() if isinstance(m, SandwichBatchNorm2d)]
    previous = [m.context_index for m in layers]
    for m in layers:
        m.context_index = index
    try:
        yield
    finally:
        for m, old in zip(layers, previous, strict=True):
            m.context_index = old
