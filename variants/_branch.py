"""Branch-indexed layers: one layer, K branches, a branch chosen per call or per sample by an
integer index (docs/variants.md#branch-index).

Several normalization methods keep K sets of something and pick one per sample: SaBN's branch
affines (a domain, an augmentation, a class in a conditional generator), AuxBN's separate
statistics for clean and adversarial examples (Xie et al., AdvProp, CVPR 2020), the candidate
operation of a DARTS edge in SaBN's NAS experiments. The index is a *data condition* that a
task knows and the backbone does not, so it cannot travel through `forward(x)` of a torchvision
model. It reaches the layers the way torch's own `torch.autocast` reaches operators: a context.

* `BranchIndexed`: the mixin. `forward(x, index=None)`; `resolve_index(x, index)` gives the
  argument, else the context index, else 0, validated against x. Class attribute
  `conditioning = "index"` says the layer takes one; a layer sets `num_branches` (K).
* `branch_index(model, index)`: within the `with` block, every `BranchIndexed` submodule of
  `model` uses `index` unless its forward gets one. It sets a plain (never persistent)
  attribute and restores the previous value on exit, exceptions included, so blocks nest.

The index is an int (the whole batch) or an int64 tensor of shape (N,) on x's device. Type,
shape and device are always checked (the shape check is what catches `nn.DataParallel`, which
splits x but not the index); the range only for ints and CPU tensors, because on a GPU it would
cost a host sync (an out-of-range CUDA index is a device-side assert).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

Index = int | torch.Tensor


class BranchIndexed:
    """Mixin of a layer with `num_branches` branches selected by an index (see module doc)."""

    conditioning = "index"
    num_branches: int
    # set by `branch_index` for the duration of a `with` block; never a buffer
    context_index: Index | None = None

    def resolve_index(self, x: torch.Tensor, index: Index | None) -> Index:
        """The argument, else the context index, else 0; validated against x."""
        if index is None:
            index = self.context_index
        if index is None:
            return 0
        return check_index(type(self).__name__, self.num_branches, index, x)


def check_index(name: str, k: int, index: object, x: torch.Tensor) -> Index:
    """`index` if it is a branch int in [0, k) or an int64 (N,) tensor on x's device.

    Raises ValueError naming the layer, the rule and the value otherwise."""
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
def branch_index(model: nn.Module, index: Index) -> Iterator[None]:
    """Within the block, every branch-indexed layer in `model` (the model itself included)
    uses `index` unless its forward gets one; the previous values come back on exit.

    A model without such layers is left untouched. The index is checked against each input's
    batch size when a layer runs. Raises ValueError for an index that is not an int or tensor.
    """
    if isinstance(index, bool) or not isinstance(index, int | torch.Tensor):
        raise ValueError(
            f"branch_index: index must be an int or an int64 tensor of shape (N,), "
            f"got {type(index).__name__}"
        )
    layers = [m for m in model.modules() if isinstance(m, BranchIndexed)]
    previous = [m.context_index for m in layers]
    for m in layers:
        m.context_index = index
    try:
        yield
    finally:
        for m, old in zip(layers, previous, strict=True):
            m.context_index = old
