"""timm drop-in: any normbench variant in timm's norm+activation slots.

timm's EfficientNet, MobileNetV3 and RegNet families build every normalization as
`norm_act_layer(C, apply_act=..., act_layer=..., inplace=..., ...)`, one module that
normalises, optionally drops (`drop_layer`) and applies the activation (timm's
`BatchNormAct2d`). Handed a norm class, timm maps it by class name to its own norm+act layer
(`get_norm_act_layer`): normbench's `bn` silently becomes timm's `BatchNormAct2d`, and every
other variant fails with "No equivalent norm_act layer". `norm_act_layer("ubn", tau=0.3)`
returns the factory timm expects (a partial of a norm+act class timm knows), building
`<Variant>Act2d`: the variant itself (same parameters, buffers and state_dict keys as
`BatchNormAct2d` for `bn`), followed by `drop` and `act` children.

Normalization-activation variants (EvoNorm-B0/S0, FRN with TLU: `is_norm_activation`) follow
timm's own EvoNorm and FRN layers (`timm.layers.EvoNorm2dB0`, `FilterResponseNormTlu2d`), which
are norm+act layers that swallow the model's `act_layer`: the layer's own nonlinearity is the
slot's activation, and no activation follows it (`act` is an identity). A slot built with
`apply_act=False` (EfficientNet's projection convs, RegNet's last conv of a block) reaches a
variant that takes `apply_act` (FRN: no TLU there, as timm's; the variant option `apply_act:
false` turns it off in every slot, which then gets the model's activation, as timm's
`FilterResponseNormAct2d`); timm's EvoNorms there drop their
nonlinearity (no v), a layer normbench does not offer (variants/evonorm.py), so normbench's
EvoNorms stay whole in those slots.

Data parallel: normbench synchronises the statistics of every layer itself (`stats_scope:
global`, `normbench.variants.global_statistics`). timm's `convert_sync_batchnorm` also works on
`bn` (its norm+act layer is a timm `BatchNormAct2d`, converted to timm's `SyncBatchNormAct`
with the same activation); torch's `nn.SyncBatchNorm.convert_sync_batchnorm` drops the
activation of every norm+act layer, timm's own included, and is not supported.

`create_model(model_name, "ubn", ...)` builds a timm model with the variant and then checks
that no timm or torch normalization is left and that the model's default build has norm+act
slots exactly where the variant went: a model that does not route every norm through
`norm_layer`, or whose slots are plain norms followed by their own activation (timm's ResNet),
raises ValueError instead of mixing layers or doubling activations silently.

timm is an optional dependency (`pip install 'normbench[timm]'`), imported on first use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normbench.variants_api import VARIANTS, is_norm_activation

TIMM_MISSING = (
    "normbench's timm adapter needs timm, which is not installed: pip install 'normbench[timm]'"
)


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ImportError(TIMM_MISSING) from exc
    return timm


# The default of `act_layer`: not passed, i.e. a plain norm slot (`norm_layer(C)`).
_PLAIN_SLOT: Any = object()


class _NormAct:
    """Mixin: y = act(drop(norm(x))), with timm's `BatchNormAct2d` keyword arguments."""

    variant_name: str

    def __init__(
        self,
        num_features: int,
        *,
        apply_act: bool = True,
        act_layer: Any = _PLAIN_SLOT,
        act_kwargs: dict[str, Any] | None = None,
        inplace: bool = True,
        drop_layer: Callable[[], nn.Module] | None = None,
        variant_apply_act: bool = True,
        **norm_options: Any,
    ) -> None:
        if act_layer is _PLAIN_SLOT:  # timm's norm+act slots always pass it (None: no act)
            raise ValueError(
                f"{type(self).__name__} (norm_act_layer({self.variant_name!r})) was built "
                "as a plain norm layer, without the act_layer that timm's norm+act "
                "slots pass: this model applies its own activation after its norms (e.g. timm's "
                "ResNet), so a norm+act layer would apply it twice. Pass "
                f"normbench.variants_api.norm_layer({self.variant_name!r}) as its norm_layer"
            )
        for flag, default in (("affine", True), ("track_running_stats", True)):
            if flag in norm_options and not _accepts(type(self).__mro__[2], flag):
                if norm_options.pop(flag) != default:
                    raise ValueError(
                        f"timm asked {self.variant_name} for {flag}=False, which it does not "
                        "support"
                    )
        if _accepts(type(self).__mro__[2], "apply_act"):  # timm's FRN-TLU: the slot's choice
            norm_options["apply_act"] = apply_act and variant_apply_act
        super().__init__(num_features, **norm_options)  # type: ignore[call-arg]
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        act: nn.Module = nn.Identity()  # none after a normalization-activation layer (doc)
        if apply_act and act_layer is not None and not is_norm_activation(self):  # type: ignore[arg-type]
            from timm.layers import create_act_layer

            act = create_act_layer(act_layer, inplace=inplace, **(act_kwargs or {}))
        self.act = act

    def forward(self, x: Any) -> Any:
        return self.act(self.drop(super().forward(x)))  # type: ignore[misc]


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls).parameters


@functools.cache
def _norm_act_class(cls: type, name: str) -> type:
    """`<Variant>Act2d`, made known to timm as a norm+act type that takes `act_layer`.

    NOTE: timm's `get_norm_act_layer` passes the model's `act_layer` only to the norm+act
    classes in its registry sets (`_NORM_ACT_TYPES`, `_NORM_ACT_REQUIRES_ARG`); a plain
    function would silently get no activation from the model (ReLU instead of EfficientNet's
    SiLU). Adding the class to those sets is the one way in; the tests check it against timm.
    """
    from timm.layers import BatchNormAct2d, create_norm_act

    # A torch BatchNorm subclass (`bn`) is also a timm BatchNormAct2d, so that timm's
    # `convert_sync_batchnorm` rebuilds it as timm's SyncBatchNormAct with this layer's
    # activation and drop: as a bare `_BatchNorm` it became a SyncBatchNorm without them.
    bases = (_NormAct, cls, BatchNormAct2d) if issubclass(cls, nn.BatchNorm2d) else (_NormAct, cls)
    made = type(f"{cls.__name__.removesuffix('2d')}Act2d", bases, {"variant_name": name})
    create_norm_act._NORM_ACT_TYPES.add(made)
    create_norm_act._NORM_ACT_REQUIRES_ARG.add(made)
    return made


def norm_act_layer(variant: str, **options: Any) -> Callable[..., nn.Module]:
    """timm's `norm_act_layer` slot for the registered `variant` with its `options`.

    Pass it as `timm.create_model(name, norm_layer=norm_act_layer("gn", num_groups=8))`: timm
    binds the model's activation. Raises UnknownName (a UserError) for an unknown variant and
    UserError for bad options.
    """
    _timm()
    entry = VARIANTS.get(variant)
    VARIANTS.require_options(entry.name, options)
    if "apply_act" in options:  # the variant's own option, not timm's per-slot keyword
        options = dict(options)
        options["variant_apply_act"] = options.pop("apply_act")
    return functools.partial(_norm_act_class(entry.obj, entry.name), **options)


NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def create_model(
    model_name: str, variant: str, *, variant_options: dict[str, Any] | None = None, **kwargs: Any
) -> nn.Module:
    """`timm.create_model(model_name, norm_layer=<variant>, **kwargs)`, checked.

    Raises ValueError when the model does not take `norm_layer` or keeps any normalization
    of its own (never a silent mix of layers).
    """
    timm = _timm()
    layer = norm_act_layer(variant, **(variant_options or {}))
    try:
        model: nn.Module = timm.create_model(model_name, norm_layer=layer, **kwargs)
    except TypeError as exc:
        if "norm_layer" not in str(exc):
            raise
        raise ValueError(
            f"timm model {model_name!r} does not take a norm_layer argument, so normbench "
            f"cannot put {variant!r} into it ({exc})"
        ) from exc
    own = {n for n, m in model.named_modules() if isinstance(m, _NormAct)}
    kept = [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES) and n not in own]
    if kept:
        raise ValueError(
            f"timm model {model_name!r} kept {len(kept)} normalization layer(s) of its own "
            f"(first: {kept[0]!r}) instead of {variant!r}: it does not build every norm from "
            "norm_layer, and normbench will not mix layers silently"
        )
    with torch.device("meta"):  # the default model, without allocating its weights
        default = timm.create_model(model_name, **kwargs)
    slots = {n for n, m in default.named_modules() if isinstance(m, NORM_TYPES)}
    plain = sorted(n for n in slots if not hasattr(default.get_submodule(n), "act"))
    if plain:
        raise ValueError(
            f"timm model {model_name!r} has plain normalization slots (first: {plain[0]!r}: "
            "norm_layer(C), then its own activation), not norm+act slots; a norm+act layer "
            "there would apply the activation twice. Pass normbench.variants_api.norm_layer("
            f"{variant!r}) as its norm_layer instead"
        )
    if own != slots:
        raise ValueError(
            f"timm model {model_name!r} built {len(own)} {variant!r} layer(s) for its "
            f"{len(slots)} norm+act slots; refusing a partial replacement"
        )
    return model
