"""The variants' registry and public API: `VARIANTS`, `create_norm`, `norm_layer`,
`list_variants`, `register_variant`, `variant_info`, the constructor-contract check applied to
every plugin at registration, and the variants' option rules (`variant_rules`).

The contract (docs/variants.md#contract, ARCHITECTURE.md): `Variant(num_features, *, options...,
eps=1e-5, momentum=0.1, device=None, dtype=None)`, every option with a YAML-typed default, `.weight`
and `.bias` attributes (None allowed), class attributes `paper: str` and `batch_dependent: bool`,
and `forward(x)` returning a tensor of x's shape and dtype. Optional: `global_stats: bool`, True
when a batch-dependent layer computes its statistics over every device's batch inside
`normbench.variants.global_statistics` (docs/variants.md#plugin-global-statistics); without it,
`stats_scope: global` on several devices is refused for the layer; `conditioning: str`, what
forward takes besides x: "index" (a branch index with a default, still a `norm_layer(C)`) or
"style" (`forward(x, style)`, AdaIN: refused in one line by `norm_layer` and by suite validation
wherever a backbone would call it as a plain norm layer).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from normbench.errors import UserError, describe_failure
from normbench.options import OptionDoor, OptionProblem, freeze
from normbench.registry import kind_registry

_CONTRACT_KEYWORDS = ("eps", "momentum", "device", "dtype")
_NOT_OPTIONS = ("device", "dtype")  # placement, not behaviour: never a suite option
_YAML_SCALARS = (type(None), bool, int, float, str)
# What a layer's forward takes besides x (docs/variants.md#contract point 5): nothing, a branch
# index (docs/variants.md#branch-index) or the style features (docs/variants.md#adain).
CONDITIONING = (None, "index", "style")


def _builtin_variants() -> dict[str, type]:
    from normbench.variants import BUILTIN_VARIANTS  # lazy: the layers import torch

    return BUILTIN_VARIANTS


def plain_norm(cls: Any) -> bool:
    """Whether `cls` is a plain `norm_layer(C)` (`normbench.variants.plain_norm`)."""
    from normbench.variants import plain_norm as is_plain

    return is_plain(cls)


def slot_problem(name: str, cls: Any, slot: str | None) -> str | None:
    """Why variant `name` cannot fill a norm slot that passes `slot` besides x (None: a
    plain `norm_layer(C)` slot, "style": a style network's, forward(x, style)), or None."""
    kind = getattr(cls, "conditioning", None)
    if slot == "style" and kind != "style":
        return (
            f"variant {name!r} is not style-conditioned, but this norm slot passes the style "
            "features (forward(x, style)); use a layer with conditioning 'style' such as adain "
            "or saadain (docs/variants.md#adain)"
        )
    if slot != "style" and kind == "style":
        return (
            f"variant {name!r} takes the {kind} features as a second input (forward(x, {kind}), "
            f"conditioning {kind!r}), so it cannot be a backbone's norm_layer(C); it is a layer "
            "of a style network (backbone adain_vgg19, docs/variants.md#adain)"
        )
    return None


def variant_rules(
    name: str, cls: Any, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    """The variants' own option rules (normbench.options, step 3): a batch-dependent layer
    cannot train at batch size 1; with `build`, the layer is built at every width (on the meta
    device), a plugin layer is also run at every width (`_plugin_run_problems`), and with
    `decay_toward="identity"` in the context it must name its identity affine
    (`identity_targets`)."""
    if context.get("batch_size") == 1 and getattr(cls, "batch_dependent", False):
        return [
            OptionProblem(
                f"batch size 1 cannot train the batch-dependent variant {name!r} (it "
                "needs more than one sample per statistic); use a batch-independent variant "
                "such as gn or in",
                context="batch_size",
            )
        ]
    slot = slot_problem(name, cls, context.get("_slot"))
    if context.get("widths") is not None and slot:  # the backbone calls the layer
        return [OptionProblem(slot)]
    identity = context.get("decay_toward") == "identity"
    for width in sorted(context.get("widths") or ()) if build else ():
        where = context.get("_where") or ""
        try:
            layer = _build_variant(cls, width, freeze(options))
        except BaseException as exc:
            return [
                OptionProblem(
                    f"variant {name!r} rejects these options at a {width}-channel "
                    f"layer{where}: {describe_failure(exc)}"
                )
            ]
        try:
            if identity:
                identity_targets(layer)
        except BaseException as exc:
            return [
                OptionProblem(
                    f"variant {name!r} cannot decay toward its identity affine "
                    f"(norm_decay_toward: identity) at a {width}-channel layer{where}: "
                    f"{describe_failure(exc)}",
                    context="decay_toward",
                )
            ]
    if build and cls not in _builtin_variants().values():  # plugin code: run it everywhere
        return _plugin_run_problems(name, cls, options, context)
    return []


def _plugin_run_problems(
    name: str, cls: Any, options: dict[str, Any], context: dict[str, Any]
) -> list[OptionProblem]:
    """A plugin layer run (train with backward, and eval) at every width the backbone gives
    it, at the training batch size: one that works only at some widths is refused at
    validation, before Ray starts, not in every trial."""
    batch = max(int(context.get("batch_size") or 4), 2)
    where = context.get("_where") or ""
    for width in sorted(context.get("widths") or ()):
        problem = _run_variant(cls, width, batch, freeze(options))
        if problem:
            return [
                OptionProblem(
                    f"variant {name!r} fails at a {width}-channel layer{where} (train and eval "
                    f"forward of a ({batch}, {width}, 4, 4) batch): {problem}"
                )
            ]
    return []


@functools.cache
def _run_variant(
    cls: type, width: int, batch: int, options: tuple[tuple[str, Any], ...]
) -> str | None:
    return behaviour_at(cls, width, batch, dict(options))


@functools.cache
def _build_variant(cls: type, width: int, options: tuple[tuple[str, Any], ...]) -> Any:
    """Construct once on the meta device (no memory); raises what the constructor raises."""
    kwargs = dict(options)
    try:
        return cls(width, **kwargs, device="meta")
    except NotImplementedError:  # a layer whose init cannot run on meta tensors
        return cls(width, **kwargs)


def identity_targets(layer: Any) -> dict[str, Any]:
    """{parameter name: the value weight decay toward the identity affine pulls it to}, for
    a normalization layer (`norm_decay_toward: identity`, "four things" #3: Summers & Dinneen,
    ICLR 2020, arXiv 1906.03548, Sec 3.3); its other parameters decay toward 0.

    The layer names them with its `decay_targets()` hook (BNET's kernel: the centred delta;
    SaBN's branch table: 1 in its gamma columns), like timm models name `no_weight_decay()`.
    Without the hook, a (C,) `.weight` is gamma (the norm_layer contract) and goes to 1, and a
    layer without `.weight` has nothing to pull. Raises ValueError when the layer cannot
    answer: no hook and a `.weight` of another shape, or a hook naming a parameter the layer
    lacks or giving a target of another shape."""
    import torch

    params = dict(layer.named_parameters())
    hook = getattr(layer, "decay_targets", None)
    if hook is None:
        weight = getattr(layer, "weight", None)
        if weight is None:
            return {}
        if isinstance(weight, torch.Tensor) and weight.ndim == 1:
            return {"weight": torch.ones_like(weight)}
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"its .weight {shape} is not a (C,) gamma and it has no decay_targets() hook naming "
            "what decay toward the identity affine pulls each parameter to"
        )
    targets = dict(hook())
    for name, target in targets.items():
        if name not in params:
            raise ValueError(f"decay_targets() names {name!r}, which is not a parameter of it")
        if not isinstance(target, torch.Tensor) or target.shape != params[name].shape:
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else repr(target)
            raise ValueError(
                f"decay_targets()[{name!r}] must be a tensor of the parameter's shape "
                f"{tuple(params[name].shape)}, but got {got}"
            )
    return targets


def is_norm_activation(norm: Any) -> bool:
    """Whether `norm` is a normalization-activation layer (its `norm_activation` is true:
    EvoNorm-B0/S0, FRN with its TLU), which replaces a norm *and* the activation after it (Liu
    et al. 2020, arXiv 2004.02967: EvoNorms replace BN-ReLU; Singh & Krishnan 2020, arXiv
    1911.09737: FRN-TLU replaces BN-ReLU), so no backbone puts an activation after it: one its
    paper never has (docs/variants.md#normalization-activation-layers)."""
    return bool(getattr(norm, "norm_activation", False))


def default_placement(variant: str) -> str:
    """Where `variant` goes when a suite names no placement: its class attribute
    `default_placement` (its official code's placement, normbench.models.placement), else
    "everywhere"."""
    name = variant.lower()
    cls = VARIANTS.get(name).obj if name in VARIANTS else None
    return str(getattr(cls, "default_placement", None) or "everywhere")


def register_variant(name: str | type | None = None) -> Any:
    """Class decorator: `@register_variant("mynorm")`, or bare `@register_variant` (the
    lower-cased class name). A duplicate name raises DuplicateNameError; a class that breaks
    the contract raises PluginError (in a plugin file: once the whole file is imported)."""
    if isinstance(name, type):  # used bare: @register_variant
        return VARIANTS.register(name.__name__, name)
    return VARIANTS.decorator(name)


def list_variants() -> list[str]:
    """Every registered variant name (built-ins and plugins), sorted."""
    return VARIANTS.names()


def plain_variants() -> list[str]:
    """The registered variants that are plain `norm_layer(C)`s (not style-conditioned), sorted:
    what the benchmarks of a backbone's norm layers measure."""
    return [name for name in VARIANTS.names() if plain_norm(VARIANTS.get(name).obj)]


def _option_params(cls: type) -> list[inspect.Parameter]:
    """Constructor parameters after num_features that a suite may set."""
    params = list(inspect.signature(cls).parameters.values())[1:]
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds and p.name not in _NOT_OPTIONS]


def variant_options(cls: type) -> dict[str, Any]:
    """The variant's options (eps and momentum included) and their defaults."""
    return VARIANTS.door.options(cls) or {p.name: p.default for p in _option_params(cls)}


def _takes_any_keyword(cls: type) -> bool:
    params = inspect.signature(cls).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def create_norm(name: str, num_features: int, **options: Any) -> Any:
    """Build a registered variant: `create_norm("gn", 64, num_groups=16)`."""
    entry = VARIANTS.get(name)
    VARIANTS.require_options(entry.name, options)
    try:
        return entry.obj(num_features, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"variant {entry.name!r} rejected num_features={num_features!r}, options "
            f"{options}: {exc}"
        ) from exc


def norm_layer(
    name: str, *, conditioning: str | None = None, **options: Any
) -> Callable[[int], Any]:
    """A torchvision-style `norm_layer(C)` factory for a registered variant, for norm slots
    that pass `conditioning` besides x (None: x alone; "style": a style network's slot).
    Raises UserError for a layer that does not fit the slot (`slot_problem`)."""
    entry = VARIANTS.get(name)
    problem = slot_problem(entry.name, entry.obj, conditioning)
    if problem:
        raise UserError(problem)
    VARIANTS.require_options(entry.name, options)
    return functools.partial(entry.obj, **options)


def _is_yaml_value(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, _YAML_SCALARS) for v in value)
    return isinstance(value, _YAML_SCALARS)


def _signature_problem(cls: Any) -> str | None:
    """How the constructor signature breaks the contract, or None."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return "has no inspectable constructor signature"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        return "must take num_features as its first positional argument"
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    for p in params[1:]:
        if p.kind in variadic:
            continue
        if p.default is inspect.Parameter.empty:
            return f"option {p.name!r} must have a default (Variant(num_features) must work)"
        if p.name not in _NOT_OPTIONS and not _is_yaml_value(p.default):
            return (
                f"option {p.name!r} must default to a YAML value (None, bool, int, float, str "
                f"or a list of them), got {p.default!r}"
            )
    missing = [k for k in _CONTRACT_KEYWORDS if k not in {p.name for p in params}]
    if missing and not _takes_any_keyword(cls):
        return f"constructor lacks the keyword arguments {missing}"
    return None


def _class_problem(cls: Any) -> str | None:
    """How the class (type and class attributes) breaks the contract, or None."""
    from torch import nn

    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return f"must be a torch.nn.Module subclass, got {cls!r}"
    if not isinstance(getattr(cls, "paper", None), str):
        return "must define the class attribute paper: str ('Title (venue year), arXiv id')"
    if not isinstance(getattr(cls, "batch_dependent", None), bool):
        return "must define the class attribute batch_dependent: bool"
    if not isinstance(getattr(cls, "global_stats", False), bool):
        return "the class attribute global_stats must be a bool (True: supports stats_scope global)"
    if getattr(cls, "conditioning", None) not in CONDITIONING:
        return (
            f"the class attribute conditioning must be absent or one of {list(CONDITIONING[1:])}"
            f", got {getattr(cls, 'conditioning', None)!r}"
        )
    return None


def _behaviour_problem(
    cls: type, width: int = 8, batch: int = 4, size: int = 5, **options: Any
) -> str | None:
    """Build cls(width, **options) and run train (with backward) and eval forwards on a
    (batch, width, size, size) batch (and a (batch, width, 3, 3) style for a style-conditioned
    layer)."""
    import torch

    layer = cls(width, **options)
    for attr in ("weight", "bias"):
        if not hasattr(layer, attr):
            return f"has no .{attr} attribute (set it to None when there is none)"
    x = torch.randn(batch, width, size, size, requires_grad=True)
    style = getattr(cls, "conditioning", None) == "style"
    extra = (torch.randn(batch, width, 3, 3),) if style else ()
    for training in (True, False):
        layer.train(training)
        y = layer(x, *extra)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.dtype != x.dtype:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            return (
                f"forward must return a tensor of the input's shape and dtype: input "
                f"{tuple(x.shape)} float32 gave {got}"
                + (f" {y.dtype}" if isinstance(y, torch.Tensor) else "")
            )
        if training and y.requires_grad:
            y.sum().backward()
    return None


def check_variant_contract(cls: Any) -> str | None:
    """A short description of how `cls` breaks the constructor contract, or None.

    The trial forwards run under a forked RNG, so registering a plugin never shifts the
    random stream of a seeded run.
    """
    problem = _class_problem(cls) or _signature_problem(cls)
    if problem:
        return problem
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _behaviour_problem(cls)
    except BaseException as exc:  # plugin code: sys.exit() included
        return f"fails the contract check: {describe_failure(exc)}"


def behaviour_at(cls: Any, width: int, batch: int, options: dict[str, Any]) -> str | None:
    """How `cls(width, **options)` fails a train (with backward) and eval forward of a
    (batch, width, 4, 4) batch, or None; run under a forked RNG (suite validation calls it for
    plugin layers at every width a backbone gives them, before Ray starts)."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _behaviour_problem(cls, width, batch, 4, **options)
    except BaseException as exc:  # plugin code: sys.exit() included
        return describe_failure(exc)


def _json_safe(value: Any) -> Any:
    if _is_yaml_value(value):
        return list(value) if isinstance(value, tuple) else value
    return repr(value)


def params_per_channel(cls: type, channels: int = 64) -> float | int:
    """Learnable parameters of `cls(channels)` divided by `channels`."""
    import torch

    with torch.random.fork_rng(devices=[]):
        layer = cls(channels)
    count = sum(p.numel() for p in layer.parameters() if p.requires_grad) / channels
    return int(count) if float(count).is_integer() else count


def variant_info(name: str) -> dict[str, Any]:
    """What `normbench variants` shows for one variant (JSON-serialisable)."""
    entry = VARIANTS.get(name)
    cls = entry.obj
    info: dict[str, Any] = {
        "name": entry.name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "paper": getattr(cls, "paper", ""),
        "options": {k: _json_safe(v) for k, v in variant_options(cls).items()},
        "params_per_channel": None,
        "batch_dependent": getattr(cls, "batch_dependent", None),
        "conditioning": getattr(cls, "conditioning", None),
        "source": entry.source,
    }
    # its computation revision (docs/reproducibility.md#computation-revisions): the latest
    # declared change, and each change; what a trial uses may also depend on its backbone
    changes = VARIANTS.revisions(name)
    info["revision"] = changes[-1].number if changes else 1
    info["revisions"] = [
        {"revision": r.number, "reason": r.reason, "when": r.when} for r in changes
    ]
    try:
        info["params_per_channel"] = params_per_channel(cls)
    except BaseException as exc:  # shown in the table, not a crash of the whole listing
        info["error"] = describe_failure(exc)
    return info


VARIANTS = kind_registry(
    "variant",
    "normbench.variants",
    _builtin_variants,
    check=check_variant_contract,
    door=OptionDoor("variant", skip=1, rules=variant_rules),
)
