"""Checks that need the registries: names, options against signatures, cross-field rules.

Every check returns `(path, message)` pairs instead of raising, so the loader reports all
problems of a file at once. Rules beyond names and signatures:
* GhostBN: `ghost_batch_size` must divide each batch size the variant runs with (a ghost size
  >= the batch is plain BN and says so); `num_splits`, when set, must divide it too.
* Group widths: every variant entry is constructed once per distinct norm-layer width of each
  backbone it meets (on the meta device), so options a constructor rejects (e.g. GN's
  `channels_per_group` not dividing 16) are reported here, not hours into a run. GN and BGN fall
  back to gcd(num_groups, C) when G does not divide C; we flag that only when the user wrote
  `num_groups` explicitly, since then they asked for exactly G. The default 32 falls back
  silently (16 at 16-channel CIFAR stages), as the variants document.
* A batch-dependent variant (`batch_dependent = True`) cannot train at batch size 1.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from normbench.engine.spec import Recipe, TrialSpec
from normbench.errors import UserError
from normbench.registry import BACKBONES, DATASETS, VARIANTS, Registry, closest, load_plugin
from normbench.suite.matrix import RawCell
from normbench.suite.schema import SuiteModel
from normbench.suite.yamlmap import Path

Problems = list[tuple[Path, str]]
_FACTORY_KEYWORDS = {
    "num_classes",
    "norm_layer",
    "in_channels",
    "last_norm_layer",
    "root",
    "download",
    "image_size",
    "val_fraction",
    "split_seed",
}


def load_plugins(paths: tuple[str, ...]) -> Problems:
    """Import each plugin file (before any name check, so its names count)."""
    problems: Problems = []
    for i, p in enumerate(paths):
        try:
            load_plugin(p)
        except UserError as exc:
            problems.append((("plugins", i), str(exc)))
    return problems


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)': a unique choice that extends `name` (warmup -> warmup_epochs)
    first, else the closest spelling (registry.closest)."""
    low = name.lower()
    longer = [c for c in choices if c.lower().startswith(low) or low.startswith(c.lower())]
    if len(longer) == 1:
        return f" (did you mean {longer[0]!r}?)"
    return closest(low, choices)


def lookup(reg: Registry, name: str, path: Path) -> tuple[Any, Problems]:
    """The registered object, or a problem naming the closest known name."""
    if name.lower() in reg:
        return reg.get(name).obj, []
    names = reg.names()
    broken = reg.broken().get(name.lower())
    msg = broken or (
        f"unknown {reg.kind} {name!r}{suggest(name.lower(), names)}; available: {', '.join(names)}"
    )
    return None, [(path, msg)]


def keyword_options(fn: Callable[..., Any]) -> dict[str, Any] | None:
    """Keyword options of a factory or class with defaults; None when it takes **kwargs."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    skip = _FACTORY_KEYWORDS | {"device", "dtype"}
    return {
        p.name: p.default
        for p in params
        if p.kind is not inspect.Parameter.POSITIONAL_ONLY
        and p.name not in skip
        and (p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty)
    }


def check_options(
    kind: str, name: str, allowed: dict[str, Any] | None, options: dict[str, Any], path: Path
) -> Problems:
    """Unknown option names (with a suggestion) and values of the wrong YAML type."""
    if allowed is None:
        return []
    problems: Problems = []
    for key, value in options.items():
        if key not in allowed:
            listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
            problems.append(
                (
                    (*path, key),
                    f"{kind} {name!r} has no option {key!r}"
                    f"{suggest(key, list(allowed))}; options: {listing}",
                )
            )
        elif not _type_ok(allowed[key], value):
            problems.append(
                (
                    (*path, key),
                    f"expects a {type(allowed[key]).__name__} like the "
                    f"default {allowed[key]!r}, but got {value!r}",
                )
            )
    return problems


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or default is inspect.Parameter.empty or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def check_names(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Dataset, backbone and variant names and options, each entry once."""
    ds = model.dataset
    factory, problems = lookup(DATASETS, ds.name, ("dataset", "name"))
    if factory is not None:
        problems += check_dataset_options(ds.name, ds.model_dump())
    seen: set[Path] = set()
    for c in cells:
        for reg, entry, path in (
            (BACKBONES, c.backbone, c.backbone_path),
            (VARIANTS, c.variant, c.variant_path),
        ):
            if path in seen:
                continue
            seen.add(path)
            obj, found = lookup(reg, entry.name, (*path, "name"))
            problems += found
            if obj is not None:
                problems += check_options(
                    reg.kind, entry.name, keyword_options(obj), entry.options, (*path, "options")
                )
    return problems


def check_dataset_options(name: str, options: dict[str, Any]) -> Problems:
    """Each data-set option on its own, so a problem points at its key's line."""
    from normbench.data import validate_dataset_options

    problems: Problems = []
    for key, value in options.items():
        if key == "name":
            continue
        try:
            validate_dataset_options(name, {key: value})
        except UserError as exc:
            problems.append((("dataset", key), str(exc)))
    return problems


def check_cells(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Cross-field rules per (variant, batch size) and per (variant, backbone) pair."""
    problems: Problems = []
    done: set[Any] = set()
    for c in cells:
        if c.variant.name.lower() not in VARIANTS or c.backbone.name.lower() not in BACKBONES:
            continue
        cls = VARIANTS.get(c.variant.name).obj
        if _bad_options(cls, c.variant.options) or _bad_options(
            BACKBONES.get(c.backbone.name).obj, c.backbone.options
        ):
            continue  # already reported by check_names
        if (c.variant_path, c.batch_size) not in done:
            done.add((c.variant_path, c.batch_size))
            problems += _batch_rules(cls, c)
        key = (c.variant_path, c.backbone_path, c.variant.placement or model.train.placement)
        if key not in done:
            done.add(key)
            problems += _width_rules(cls, c, key[2])
    return problems


def _batch_rules(cls: type, c: RawCell) -> Problems:
    opts, where = c.variant.options, (*c.variant_path, "options")
    n, problems = c.batch_size, []
    if n == 1 and getattr(cls, "batch_dependent", False):
        problems.append(
            (
                c.batch_path,
                f"batch size 1 cannot train the batch-dependent "
                f"variant {c.variant.name!r} (it needs more than one sample per "
                f"statistic); use a batch-independent variant such as gn or in",
            )
        )
    defaults = _class_options(cls)
    gbs = opts.get("ghost_batch_size", defaults.get("ghost_batch_size"))
    splits = opts.get("num_splits", defaults.get("num_splits"))
    if splits:
        if n % splits:
            problems.append(
                (
                    (*where, "num_splits"),
                    f"num_splits={splits} does not divide "
                    f"batch size {n} (ghost batches would be unequal)",
                )
            )
    elif isinstance(gbs, int) and n % gbs:
        extra = " (a ghost batch >= the batch is plain BN)" if gbs >= n else ""
        problems.append(
            (
                (*where, "ghost_batch_size"),
                f"ghost_batch_size={gbs} must divide batch size {n}{extra}",
            )
        )
    return problems


def _bad_options(obj: Any, options: dict[str, Any]) -> bool:
    return bool(check_options("", "", keyword_options(obj), options, ()))


@functools.cache
def _class_options(cls: type) -> dict[str, Any]:
    return keyword_options(cls) or {}


def _width_rules(cls: type, c: RawCell, placement: str) -> Problems:
    try:
        widths = norm_widths(
            c.backbone.name.lower(), _freeze(c.backbone.options), placement == "last-in-block"
        )
    except Exception as exc:  # the backbone itself rejects its options
        return [
            (
                (*c.backbone_path, "options"),
                f"backbone {c.backbone.name!r} cannot be built "
                f"with these options: {type(exc).__name__}: {exc}",
            )
        ]
    opts, where = c.variant.options, (*c.variant_path, "options")
    groups = opts.get("num_groups")
    spatial = opts.get("allow_spatial_groups") is True  # BGN: G > C splits positions
    if (
        isinstance(groups, int)
        and groups > 0
        and "num_groups" in _class_options(cls)
        and not spatial
    ):
        bad = sorted(w for w in widths if w % groups)
        if bad:
            return [
                (
                    (*where, "num_groups"),
                    f"num_groups={groups} does not divide the norm "
                    f"widths {bad} of {c.backbone.name} (widths: {sorted(widths)}); the layer "
                    f"would silently use gcd(G, C) there",
                )
            ]
    for w in sorted(widths):
        try:
            _build_variant(cls, w, _freeze(opts))
        except Exception as exc:
            return [
                (
                    where,
                    f"variant {c.variant.name!r} rejects these options at a "
                    f"{w}-channel layer of {c.backbone.name}: {exc}",
                )
            ]
    return []


def _freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


@functools.cache
def _build_variant(cls: type, width: int, options: tuple[tuple[str, Any], ...]) -> None:
    """Construct once on the meta device (no memory); raises what the constructor raises."""
    kwargs = dict(options)
    try:
        cls(width, **kwargs, device="meta")
    except NotImplementedError:  # a layer whose init cannot run on meta tensors
        cls(width, **kwargs)


@functools.cache
def norm_widths(backbone: str, options: tuple[tuple[str, Any], ...], last: bool) -> frozenset:
    """The channel widths the backbone passes to norm_layer, recorded on the meta device."""
    import torch
    from torch import nn

    seen: set[int] = set()

    def record(c: int) -> nn.Module:
        seen.add(int(c))
        return nn.Identity()

    fn = BACKBONES.get(backbone).obj
    kwargs: dict[str, Any] = dict(options)
    if last:
        kwargs["last_norm_layer"] = record
    with torch.device("meta"):
        fn(10, record, **kwargs)
    return frozenset(seen)


_SEARCHABLE = {f.name for f in dataclasses.fields(TrialSpec)} - {
    "variant",
    "backbone",
    "dataset",
    "seed",
    "plugins",
    "device",
    "num_threads",
    "checkpoint_every",
}


def check_search(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Each search dimension must name a TrialSpec field every searched cell understands."""
    if model.search is None:
        return []
    return check_search_paths(list(model.search.space), {c.variant.name.lower() for c in cells})


def check_search_paths(paths: list[str], variants: set[str]) -> Problems:
    """Problems with the dotted paths of a search space, given the variants searched."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    problems: Problems = []
    for path in paths:
        where = ("search", "space", path)
        head, _, rest = path.partition(".")
        if head == "recipe":
            if rest not in recipe_fields:
                problems.append(
                    (where, f"recipe has no field {rest!r}{suggest(rest, sorted(recipe_fields))}")
                )
        elif head.endswith("_options") and head in _SEARCHABLE:
            if not rest or "." in rest:
                problems.append((where, f"name one option, e.g. {head}.tau"))
            elif head == "variant_options":
                problems += _search_variant_option(rest, variants, where)
        elif head not in _SEARCHABLE or rest:
            problems.append(
                (
                    where,
                    f"not a searchable path{suggest(head, sorted(_SEARCHABLE))};"
                    " use recipe.<field>, variant_options.<option>, "
                    "backbone_options.<option>, dataset_options.<option> or one of "
                    f"{', '.join(sorted(_SEARCHABLE - {'recipe'}))}",
                )
            )
    return problems


def _search_variant_option(option: str, variants: set[str], where: Path) -> Problems:
    for name in sorted(variants):
        if name not in VARIANTS:
            continue
        allowed = _class_options(VARIANTS.get(name).obj)
        if allowed and option not in allowed:
            return [
                (
                    where,
                    f"variant {name!r} has no option {option!r}"
                    f"{suggest(option, list(allowed))}; options: {', '.join(allowed)}",
                )
            ]
    return []
