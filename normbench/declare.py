"""How a trial field is declared: `param(...)` puts a `Param` (role, bounds, help, where a
user sets it) in a dataclass field's metadata; `declared(cls)` reads the fields back with
their resolved types, and `problems(obj)` checks a value against them. The fields themselves
are in `normbench.spec`; this module is the mechanism and knows none of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

IDENTITY, ENVIRONMENT, LOCATION, BOOKKEEPING = "identity", "environment", "location", "bookkeeping"
ROLES = (IDENTITY, ENVIRONMENT, LOCATION, BOOKKEEPING)


@dataclass(frozen=True)
class Param:
    """What `param` declares about one field (kept in the dataclass field's metadata)."""

    help: str
    role: str = IDENTITY
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    suite: bool = False
    flag: str | None = None
    variant_override: bool = False
    axis: str | None = None
    new: bool = False
    keys: tuple[type, ...] = ()  # a mapping field's known keys: the fields of these classes
    check: tuple[str, Callable[[Any], bool]] | None = None  # (rule text, test) beyond bounds
    by_file_name: bool = False  # identity by file name, location by the rest of the path
    derived: bool = False  # set by normbench from the code, never by a user (no flag, no key)

    def bounds_text(self) -> str:
        low = (">=", self.ge) if self.ge is not None else (">", self.gt)
        high = ("<=", self.le) if self.le is not None else ("<", self.lt)
        if low[1] is not None and high[1] is not None:
            left, right = "[" if low[0] == ">=" else "(", "]" if high[0] == "<=" else ")"
            return f" in {left}{_num(low[1])}, {_num(high[1])}{right}"
        return "".join(f" {op} {_num(v)}" for op, v in (low, high) if v is not None)

    def in_bounds(self, v: Any) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )


def param(
    default: Any = dataclasses.MISSING, *, factory: Any = None, help: str, **facts: Any
) -> Any:
    """A dataclass field declared once: `facts` are those of `Param` (role, bounds, ...)."""
    meta = {"param": Param(help=help, **facts)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One declared field: its name, owner (`TrialSpec` or `Recipe`), type, default, facts."""

    name: str
    owner: type
    type: Any
    default: Any  # dataclasses.MISSING: required
    param: Param

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


@functools.cache
def declared(cls: type) -> tuple[Declared, ...]:
    """The declared fields of a dataclass (`TrialSpec`, `Recipe`, ...), in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(Declared(f.name, cls, hints[f.name], default, f.metadata["param"]))
    return tuple(out)


# -- checking one value against its declaration -------------------------------------------


def rule_problems(obj: Any, prefix: str) -> list[str]:
    """How the field values of a declared dataclass instance break their declarations."""
    out = []
    cls: type = type(obj)
    for d in declared(cls):
        value = getattr(obj, d.name)
        rule = value_rule(d.type, d.param)
        if rule is not None and not _fits(d.type, d.param, value):
            out.append(f"{prefix}{d.name} must be {rule}, but got {d.name}={value!r}")
    return out


def value_rule(tp: Any, p: Param) -> str | None:
    """The rule a value of type `tp` with facts `p` must follow, in words (None: any)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, _UnionType) and type(None) in args:
        inner = value_rule(next(a for a in args if a is not type(None)), p)
        return f"None or {inner}"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + p.bounds_text()
    if tp is float:
        return "a number" + p.bounds_text()
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is tuple:
        each = f"each {value_rule(args[0], p)}"
        return f"{p.check[0]}, {each}" if p.check else f"a list, {each}"
    return None


_UnionType = type(int | None)


def _fits(tp: Any, p: Param, v: Any) -> bool:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, _UnionType) and type(None) in args:
        return v is None or _fits(next(a for a in args if a is not type(None)), p, v)
    if typing.get_origin(tp) is Literal:
        return v in args
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool) and p.in_bounds(v)
    if tp is float:
        return _number(v) and math.isfinite(v) and p.in_bounds(v)
    if tp is str:
        return isinstance(v, str)
    if typing.get_origin(tp) is tuple:
        ok = isinstance(v, tuple | list) and all(_fits(args[0], p, x) for x in v)
        return ok and (p.check is None or p.check[1](v))
    if typing.get_origin(tp) is dict:
        return isinstance(v, dict)
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x
