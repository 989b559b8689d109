"""The built-in normalization layers, installed as `normbench.variants`.

This package depends on torch only and never imports the rest of normbench (the way timm's
`layers/` never imports its `models/`); `normbench.variants_api` registers `BUILTIN_VARIANTS`
through the same call a plugin uses.
"""

from __future__ import annotations

from normbench.variants._branch import BranchIndexed, branch_index
from normbench.variants._core import FxLeaf, check_input, plain_norm
from normbench.variants._fused import (
    all_sum,
    fused_instance_affine,
    gather_rows,
    global_scope,
    global_statistics,
    own_rows,
    statistics_precision,
    statistics_ranks,
    stats_dtype,
)
from normbench.variants.adain import AdaptiveInstanceNorm2d, SandwichAdaptiveInstanceNorm2d
from normbench.variants.auxbn import AuxBatchNorm2d, SaAuxBatchNorm2d
from normbench.variants.bgn import BatchGroupNorm2d
from normbench.variants.bn import BatchNorm2d
from normbench.variants.bnet import BNET2d
from normbench.variants.brn import BatchRenorm2d
from normbench.variants.ccbn import CategoricalConditionalBatchNorm2d
from normbench.variants.dyt import DynamicTanh2d
from normbench.variants.evonorm import EvoNormB0, EvoNormS0
from normbench.variants.fourthings import FourThingsNorm2d
from normbench.variants.frn import FilterResponseNorm2d
from normbench.variants.ghost_bn import GhostBatchNorm2d
from normbench.variants.gn import GroupNorm2d
from normbench.variants.gn1 import GroupNorm1
from normbench.variants.iebn import IEBN2d
from normbench.variants.in_ import InstanceNorm2d
from normbench.variants.layernorm2d import LayerNorm2d
from normbench.variants.rbn import RepresentativeBatchNorm2d
from normbench.variants.rmsnorm2d import RMSNorm2d
from normbench.variants.sabn import SandwichBatchNorm2d, sabn_index
from normbench.variants.ubn import UnifiedBatchNorm2d

BUILTIN_VARIANTS: dict[str, type] = {
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "gn": GroupNorm2d,
    "iebn": IEBN2d,
    "rbn": RepresentativeBatchNorm2d,
    "bnet": BNET2d,
    "sabn": SandwichBatchNorm2d,
    "bgn": BatchGroupNorm2d,
    "ghost_bn": GhostBatchNorm2d,
    "ubn": UnifiedBatchNorm2d,
    "fourthings": FourThingsNorm2d,
    # the layers convnets compare against today (issue 24)
    "layernorm2d": LayerNorm2d,
    "rmsnorm2d": RMSNorm2d,
    "gn1": GroupNorm1,
    "frn": FilterResponseNorm2d,
    "evonorm_b0": EvoNormB0,
    "evonorm_s0": EvoNormS0,
    "dyt": DynamicTanh2d,
    "brn": BatchRenorm2d,
    "ccbn": CategoricalConditionalBatchNorm2d,
    # style-conditioned (forward(x, style)): the style transfer task's, not a norm_layer(C)
    "adain": AdaptiveInstanceNorm2d,
    "saadain": SandwichAdaptiveInstanceNorm2d,
    "auxbn": AuxBatchNorm2d,
    "saauxbn": SaAuxBatchNorm2d,
}

# For plugins: `plain_norm` (whether a layer is a plain `norm_layer(C)`), `BranchIndexed` and
# `branch_index` (layers with K branches chosen by an index the task sets,
# docs/variants.md#branch-index), `FxLeaf` and `check_input` (traceable input checks),
# `statistics_precision` and `stats_dtype` (fp32 statistics under autocast), `all_sum` ...
# `statistics_ranks` (global statistics across data-parallel ranks,
# docs/variants.md#plugin-global-statistics).
__all__ = [
    *(c.__name__ for c in BUILTIN_VARIANTS.values()),
    "BUILTIN_VARIANTS",
    "sabn_index",
    "plain_norm",
    "BranchIndexed",
    "branch_index",
    "FxLeaf",
    "check_input",
    "statistics_precision",
    "stats_dtype",
    "all_sum",
    "fused_instance_affine",
    "gather_rows",
    "global_scope",
    "global_statistics",
    "own_rows",
    "statistics_ranks",
]
