"""Constructor-option checks shared by the BGN, GhostBN, FourThings and UBN layers.

Spec §1.1: invalid options raise at construction, naming the rule and the value. YAML gives
ints, floats, bools and strings, so the checks reject bools posing as ints and NaN floats.
Every message starts with the layer's class name so a wrong suite entry is easy to find.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and (math.isnan(value) or (math.isinf(value) and not allow_inf)):  # type: ignore[arg-type]
        ok = False
    if not ok or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(
            f"{layer}: `{name}` must be a number with {low} <= {name} <= {high}, but got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def check_bool(layer: str, name: str, value: object) -> bool:
    """Return `value` if it is a bool, else raise ValueError (no truthiness guessing)."""
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
    """The contract options every BN-family variant shares (spec §1)."""
    check_int(layer, "num_features", num_features, minimum=1)
    check_float(layer, "eps", eps, low=0.0, high=math.inf)
    if eps <= 0:  # type: ignore[operator]
        raise ValueError(f"{layer}: `eps` must be > 0, but got {eps!r}")
    if momentum is not None:
        check_float(layer, "momentum", momentum, low=0.0, high=1.0)
