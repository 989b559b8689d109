"""`number`: the one way the reports write a number as text.

A value that rounds to zero at the shown precision is written without a sign ("0.00", never
"-0.00" or "+0.00"): Python's `format(-0.004, ".2f")` keeps the sign of a value that rounds
to zero, which reads as a difference where there is none.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

DASH = "—"  # a missing number


def number(x: Any, fmt: str = ".1f") -> str:
    """`x` formatted with `fmt` (a format spec: ".2f", "+.2f", ".4g"), "—" for None or NaN,
    and without a sign when every digit shown is 0."""
    if x is None or pd.isna(x):
        return DASH
    text = format(x, fmt)
    mantissa = text.lower().split("e")[0]
    if not any(c in "123456789" for c in mantissa) and any(c == "0" for c in mantissa):
        return text.lstrip("+- ")
    return text
