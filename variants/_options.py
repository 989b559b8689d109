"""Constructor-option checks shared by every built-in variant (the only copy of them).

docs/variants.md#contract point 1: invalid options raise at construction, naming the rule and the
value. YAML gives ints, floats, bools and strings, so the checks reject bools posing as ints and NaN
floats. Every message starts with the layer's class name so a wrong suite entry is easy to find.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or float that is not a bool and not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def check_int(layer: str, name: str, value: object, *, minimum: int) -> int:
    """Return `value` if it is an int >= `minimum`, else raise ValueError."""
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        raise ValueError(f"{layer}: `{name}` must be an int >= {minimum}, but got {value!r}")
    return value  # type: ignore[return-value]


def check_optional_int(layer: str, name: str, value: object, *, minimum: int) -> int | None:
    """Like `check_int`, but None passes through."""
    return None if value is None else check_int(layer, name, value, minimum=minimum)


def check_float(
    layer: str, name: str, value: object, *, low: float, high: float, allow_inf: bool = False
) -> float:
    """Return `value` as float if low <= value <= high (NaN never passes)."""
    ok = _is_number(value) and (allow_inf or not math.isinf(value))  # type: ignore[arg-type]
    if not ok or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(
            f"{layer}: `{name}` must be a number with {low} <= {name} <= {high}, but got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def check_bool(layer: str, name: str, value: object) -> bool:
    """Return `value` if it is a bool, else raise ValueError (bool("false") is True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{layer}: `{name}` must be true or false, but got {value!r}")
    return value


def check_choice(layer: str, name: str, value: object, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`, else raise ValueError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{layer}: `{name}` must be one of {list(choices)}, but got {value!r}")
    return value  # type: ignore[return-value]


def check_common(layer: str, num_features: object, eps: object, momentum: object) -> None:
    """The contract options every variant shares (docs/variants.md#contract): C >= 1,
    eps > 0, momentum.

    Momentum None means a cumulative average, so it passes; otherwise 0 <= momentum <= 1.
    """
    check_int(layer, "num_features", num_features, minimum=1)
    if not _is_number(eps) or math.isinf(eps) or eps <= 0:  # type: ignore[arg-type, operator]
        raise ValueError(f"{layer}: `eps` must be a finite number > 0, but got {eps!r}")
    if momentum is not None and (not _is_number(momentum) or not 0 <= momentum <= 1):  # type: ignore[operator]
        raise ValueError(
            f"{layer}: `momentum` must be None (cumulative average) or a number with "
            f"0 <= momentum <= 1, but got {momentum!r}"
        )


def check_torch_norm_options(
    layer: str,
    num_features: object,
    *,
    eps: object,
    momentum: object,
    affine: object,
    track_running_stats: object,
) -> dict[str, Any]:
    """The checked keyword arguments of torch's BN/IN constructors (BN and IN subclass them)."""
    check_common(layer, num_features, eps, momentum)
    return {
        "eps": eps,
        "momentum": momentum,
        "affine": check_bool(layer, "affine", affine),
        "track_running_stats": check_bool(layer, "track_running_stats", track_running_stats),
    }


def groups_dividing_widths(options: dict[str, Any], widths: Iterable[int] | None) -> dict[str, str]:
    """A group-count option hook (normbench's `check_options`, run at suite validation): a
    `num_groups` the user wrote must divide every norm width the backbone has; otherwise the
    gcd fallback would silently use fewer groups there. The default (not written) may fall back."""
    groups = options.get("num_groups")
    if widths is None or not _is_int(groups) or groups < 1:  # type: ignore[operator]
        return {}
    bad = sorted(w for w in widths if w % groups)  # type: ignore[operator]
    if not bad:
        return {}
    every = sorted(widths)
    listed = f"{bad}" if bad == every else f"{bad} (widths: {every})"
    return {
        "num_groups": f"num_groups={groups} does not divide the norm widths {listed}; the layer "
        "would silently use gcd(G, C) there"
    }
