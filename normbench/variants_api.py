"""The public variant API: `create_norm`, `list_variants`, `register_variant`, and the
constructor-contract check applied to plugins at registration."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from normbench.errors import UnknownNameError, UserError
from normbench.registry import VARIANTS, closest

_CONTRACT_KEYWORDS = ("eps", "momentum", "device", "dtype")


def register_variant(name: str | None = None) -> Callable[[type], type]:
    """Class decorator: `@register_variant("mynorm")`. Raises on a duplicate name."""
    return VARIANTS.decorator(name)


def list_variants() -> list[str]:
    return VARIANTS.names()


def variant_options(cls: type) -> dict[str, Any]:
    """The variant's keyword options and their defaults (contract keywords excluded)."""
    params = list(inspect.signature(cls).parameters.values())[1:]
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("device", "dtype")
    }


def check_options(name: str, cls: type, options: dict[str, Any]) -> None:
    """Raise UnknownNameError for an option the constructor does not take."""
    allowed = variant_options(cls)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(
                f"variant {name!r} has no option {key!r}{closest(key, list(allowed))}; "
                f"options: {', '.join(f'{k}={v!r}' for k, v in allowed.items())}"
            )


def create_norm(name: str, num_features: int, **options: Any) -> Any:
    """Build a registered variant: `create_norm("gn", 64, num_groups=16)`."""
    entry = VARIANTS.get(name)
    check_options(entry.name, entry.obj, options)
    try:
        return entry.obj(num_features, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"variant {entry.name!r} rejected its options {options}: {exc}") from exc


def norm_layer(name: str, **options: Any) -> Callable[[int], Any]:
    """A torchvision-style `norm_layer(C)` factory for a registered variant."""
    entry = VARIANTS.get(name)
    check_options(entry.name, entry.obj, options)
    return functools.partial(entry.obj, **options)


def check_variant_contract(cls: Any) -> str | None:
    """A short description of how `cls` breaks the constructor contract, or None."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return "has no inspectable constructor signature"
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return "must take num_features as its first positional argument"
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.default is inspect.Parameter.empty:
            return f"option {p.name!r} must have a default (Variant(num_features) must work)"
    names = {p.name for p in params}
    missing = [k for k in _CONTRACT_KEYWORDS if k not in names]
    if missing and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return f"constructor lacks the keyword arguments {missing}"
    try:
        import torch

        layer = cls(8)
        for attr in ("weight", "bias"):
            if not hasattr(layer, attr):
                return f"has no .{attr} attribute (use None when there is none)"
        x = torch.randn(4, 8, 5, 5)
        layer.train()
        y = layer(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.dtype != x.dtype:
            return "forward must return a tensor of the input's shape and dtype"
    except Exception as exc:
        return f"fails the contract check: {type(exc).__name__}: {exc}"
    return None


def variant_info(name: str) -> dict[str, Any]:
    """What `normbench variants` shows for one variant."""
    entry = VARIANTS.get(name)
    cls = entry.obj
    info: dict[str, Any] = {
        "name": entry.name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "paper": getattr(cls, "paper", ""),
        "options": {k: v for k, v in variant_options(cls).items()},
        "batch_dependent": getattr(cls, "batch_dependent", None),
        "source": entry.source,
    }
    try:
        c = 64
        layer = cls(c)
        info["params_per_channel"] = sum(p.numel() for p in layer.parameters()) / c
    except Exception as exc:  # a broken plugin shows up here, not as a crash
        info["params_per_channel"] = None
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info
