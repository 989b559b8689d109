"""Options of variants, backbones and data sets: the one place they are checked.

`Registry.check_options(name, options, build=..., **context)` (normbench.registry) calls
`check_entry_options`, which runs, for any entry, built-in or plugin:

1. names: every option must be a keyword of the constructor / factory (or one every entry of
   the kind takes, e.g. a data set's `augment`, a backbone's `weight_standardization`), with
   a did-you-mean (`errors.closest`);
2. types: a value has the YAML type of the option's default (an int where the default is an
   int; a float default also takes an int; a None default takes anything);
3. the kind's rules: a batch-dependent variant cannot train at batch size 1; with
   `build=True` a variant is constructed at every norm width the backbone has and a backbone
   is constructed with its norm layers recorded, on the meta device (no memory), so every
   constructor refusal surfaces at validation; a data set's `augment` mapping is parsed;
4. the entry's own hook, when it defines one (a classmethod on a layer, an attribute of a
   factory function):

       check_options(options, *, batch_size=None, widths=None) -> dict[str, str]

   `options` are the options as written (defaults not filled in); `batch_size` is the
   training batch size and `widths` the frozenset of channel counts the backbone passes to
   the layer (None when the caller does not know them: every keyword the hook names is
   passed, None when unknown). It returns {option: message} for every option that cannot
   work there (empty when all is well). Suite validation calls it for every (entry, batch size,
   backbone) of the matrix; `create_norm`/`norm_layer`/`create_backbone`/`build_data` call
   it with what they know. A hook that raises is reported as a problem, never a crash.

Suite validation and trial building go through this same function, so a suite accepts
exactly what a trial can build.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normbench.errors import closest, describe_failure, one_line

if TYPE_CHECKING:
    from normbench.registry import Entry


@dataclass(frozen=True)
class OptionProblem:
    """One problem with an entry's options. `option` names the option it is about (None:
    the options as a whole); `context` names a context key it is about instead (e.g.
    "batch_size"), so a suite can point at the line that set it."""

    message: str
    option: str | None = None
    context: str | None = None
    unknown: bool = False  # an option name the entry does not take
    error: type[Exception] | None = None  # the exception type to raise it as (default UserError)


@dataclass(frozen=True)
class OptionDoor:
    """How the entries of one kind take options: which leading parameters of the constructor
    or factory are not options (`skip`: num_features; num_classes and norm_layer), which
    keywords the harness fills in (`internal`), and the kind ("variant", "backbone",
    "dataset") whose common options and rules apply."""

    kind: str = ""
    skip: int = 0
    internal: frozenset[str] = frozenset({"device", "dtype"})

    def options(self, obj: Any) -> dict[str, Any] | None:
        """Options with defaults (the kind's common ones first); None when `obj` takes
        any **options."""
        try:
            params = list(inspect.signature(obj).parameters.values())[self.skip :]
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        own = {p.name: p.default for p in params if p.kind in kinds and p.name not in self.internal}
        return {**_COMMON.get(self.kind, dict)(), **own}


def check_entry_options(
    door: OptionDoor, entry: Entry, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    """Steps 1-4 of the module docstring; stops after the first step that finds problems."""
    kind, name = door.kind, entry.name
    problems = _unknown_or_mistyped(kind, name, door.options(entry.obj), options)
    if problems:
        return problems
    rules = _RULES.get(kind)
    if rules is not None:
        problems = rules(entry, options, build, context)
    return problems or _call_hook(kind, entry, options, context)


def type_ok(default: Any, value: Any) -> bool:
    """A value has the YAML type of the option's default (None on either side passes)."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _unknown_or_mistyped(
    kind: str, name: str, allowed: dict[str, Any] | None, options: dict[str, Any]
) -> list[OptionProblem]:
    if allowed is None:
        return []
    problems = []
    listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
    for key, value in options.items():
        if key not in allowed:
            problems.append(
                OptionProblem(
                    f"{kind} {name!r} has no option {key!r}{closest(key, list(allowed))}; "
                    f"options: {listing}",
                    option=str(key),
                    unknown=True,
                )
            )
        elif not type_ok(allowed[key], value):
            default = allowed[key]
            problems.append(
                OptionProblem(
                    f"{kind} {name!r} option {key!r} expects {_article(default)} like "
                    f"the default {default!r}, but got {value!r}",
                    option=str(key),
                )
            )
    return problems


def _article(default: Any) -> str:
    kind = type(default).__name__
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _call_hook(
    kind: str, entry: Entry, options: dict[str, Any], context: dict[str, Any]
) -> list[OptionProblem]:
    """The entry's `check_options` hook (step 4)."""
    hook = getattr(entry.obj, "check_options", None)
    if not callable(hook):
        return []
    try:
        params = list(inspect.signature(hook).parameters.values())[1:]  # after `options`
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        kwargs = {p.name: context.get(p.name) for p in params if p.kind in named}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            kwargs.update({k: v for k, v in context.items() if not k.startswith("_")})
        items = list(dict(hook(dict(options), **kwargs) or {}).items())
    except BaseException as exc:  # plugin code: sys.exit() included
        return [
            OptionProblem(f"{kind} {entry.name!r}: check_options failed: {describe_failure(exc)}")
        ]
    return [
        OptionProblem(
            f"{kind} {entry.name!r}: {one_line(str(msg))}",
            option=str(key) if key in options else None,
        )
        for key, msg in items
    ]


# -- the kinds' own rules (step 3) ---------------------------------------------------------


def freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Options as a hashable key (for the caches of what was built)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _variant_rules(
    entry: Entry, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    n = context.get("batch_size")
    if n == 1 and getattr(entry.obj, "batch_dependent", False):
        return [
            OptionProblem(
                f"batch size 1 cannot train the batch-dependent variant {entry.name!r} (it "
                "needs more than one sample per statistic); use a batch-independent variant "
                "such as gn or in",
                context="batch_size",
            )
        ]
    for width in sorted(context.get("widths") or ()) if build else ():
        try:
            _build_variant(entry.obj, width, freeze(options))
        except BaseException as exc:
            where = context.get("_where") or ""
            return [
                OptionProblem(
                    f"variant {entry.name!r} rejects these options at a {width}-channel "
                    f"layer{where}: {describe_failure(exc)}"
                )
            ]
    return []


@functools.cache
def _build_variant(cls: type, width: int, options: tuple[tuple[str, Any], ...]) -> None:
    """Construct once on the meta device (no memory); raises what the constructor raises."""
    kwargs = dict(options)
    try:
        cls(width, **kwargs, device="meta")
    except NotImplementedError:  # a layer whose init cannot run on meta tensors
        cls(width, **kwargs)


def _backbone_rules(
    entry: Entry, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    if not build:
        return []
    try:
        norm_widths(entry.name, freeze(options), bool(context.get("last_in_block")))
    except BaseException as exc:
        return [
            OptionProblem(
                f"backbone {entry.name!r} cannot be built with these options: "
                f"{describe_failure(exc)}"
            )
        ]
    return []


@functools.cache
def norm_widths(backbone: str, options: tuple[tuple[str, Any], ...], last: bool) -> frozenset[int]:
    """The channel widths the backbone passes to norm_layer (and to last_norm_layer when
    `last`), recorded by building it on the meta device. Raises what the factory raises."""
    import torch
    from torch import nn

    from normbench.registry import BACKBONES

    seen: set[int] = set()

    def record(c: int) -> nn.Module:
        seen.add(int(c))
        return nn.Identity()

    from normbench.models.std_conv import split_harness_options

    kwargs: dict[str, Any] = split_harness_options(dict(options))[1]  # convs only: no widths
    if last:
        kwargs["last_norm_layer"] = record
    with torch.device("meta"):
        BACKBONES.get(backbone).obj(10, record, **kwargs)
    return frozenset(seen)


def _dataset_rules(
    entry: Entry, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    from normbench.data.base import Augment
    from normbench.data.build import parse_augment
    from normbench.errors import UnknownNameError, UserError

    try:
        parse_augment(Augment(), options.get("augment"))
    except UserError as exc:
        unknown = isinstance(exc, UnknownNameError)
        return [OptionProblem(str(exc), option="augment", unknown=unknown, error=type(exc))]
    return []


def _backbone_common() -> dict[str, Any]:
    from normbench.models.std_conv import HARNESS_OPTIONS

    return dict(HARNESS_OPTIONS)


def _dataset_common() -> dict[str, Any]:
    from normbench.data.build import FACTORY_DEFAULTS, LOADER_OPTIONS

    return {**FACTORY_DEFAULTS, **dict.fromkeys(LOADER_OPTIONS)}


_RULES: dict[str, Callable[[Any, dict[str, Any], bool, dict[str, Any]], list[OptionProblem]]] = {
    "variant": _variant_rules,
    "backbone": _backbone_rules,
    "dataset": _dataset_rules,
}
_COMMON: dict[str, Callable[[], dict[str, Any]]] = {
    "backbone": _backbone_common,
    "dataset": _dataset_common,
}
