"""Where a variant goes in a backbone, beyond "everywhere": each variant's official placement.

- "everywhere": every norm position (stem, blocks, shortcut projections); the default for
  most variants.
- "last-in-block": only the last norm of each residual block, BN elsewhere (BNET's official
  code; the backbone's `last_norm_layer`).
- "except-shortcut": every norm position but the shortcut (downsample) projections, which stay
  BN. IEBN's official CIFAR ResNet (gbup-group/IEBN, `models/cifar/iebn_resnet.py`) uses its
  layer in the stem and the blocks and keeps `nn.BatchNorm2d` in the downsample branch, so
  this is IEBN's default. A shortcut norm is a norm layer directly inside a submodule named
  `shortcut` (normbench's backbones) or `downsample` (torchvision's).

The placement a suite (or `normbench train`) uses when it names none is a fact of the layer: its
class attribute `default_placement` (IEBN's is "except-shortcut"), read by
`normbench.variants_api.default_placement`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

SHORTCUT_NAMES = ("shortcut", "downsample")


def keep_bn_in_shortcuts(
    model: nn.Module, variant: type[nn.Module], make_bn: Callable[[int], nn.Module]
) -> int:
    """Replace each `variant` layer of a shortcut projection by `make_bn(C)`; returns how many.

    C is the layer's `num_features`, or the length of its `.weight`.
    """
    swapped = 0
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] not in SHORTCUT_NAMES:
            continue
        for child_name, child in list(module.named_children()):
            if isinstance(child, variant):
                weight = child.get_parameter("weight") if child.weight is not None else None
                c = getattr(child, "num_features", None) or len(weight)  # type: ignore[arg-type]
                setattr(module, child_name, make_bn(int(c)))
                swapped += 1
    return swapped
