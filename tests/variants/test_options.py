"""The contract options (docs/variants.md#contract point 1) are checked by one rule set for all
eleven built-ins.

Each invalid value must raise ValueError at construction with a message naming the layer
class, the option and the offending value; valid edge values must construct.
"""

from __future__ import annotations

import math
import re

import pytest

from normbench.variants import BUILTIN_VARIANTS

C = 8
NAMES = sorted(BUILTIN_VARIANTS)

BAD_CONTRACT = [
    ("eps", 0.0),
    ("eps", -1e-5),
    ("eps", math.inf),
    ("eps", math.nan),
    ("eps", True),
    ("eps", "1e-5"),
    ("momentum", 1.5),
    ("momentum", -0.1),
    ("momentum", math.nan),
    ("momentum", True),
    ("momentum", "0.1"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("option", "value"), BAD_CONTRACT)
def test_bad_contract_option_names_layer_option_and_value(name, option, value) -> None:
    cls = BUILTIN_VARIANTS[name]
    pattern = rf"^{cls.__name__}: `{option}` must .*{re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=pattern):
        cls(C, **{option: value})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_features", [0, -3, True, 8.0, "8"])
def test_bad_num_features(name, num_features) -> None:
    cls = BUILTIN_VARIANTS[name]
    pattern = rf"^{cls.__name__}: `num_features` must be an int >= 1, but got "
    with pytest.raises(ValueError, match=pattern + re.escape(repr(num_features))):
        cls(num_features)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "options", [{"momentum": None}, {"momentum": 0}, {"momentum": 1}, {"eps": 1}, {"eps": 1e-12}]
)
def test_edge_values_are_accepted_and_kept(name, options) -> None:
    layer = BUILTIN_VARIANTS[name](C, **options)
    for key, value in options.items():
        assert getattr(layer, key) == value
