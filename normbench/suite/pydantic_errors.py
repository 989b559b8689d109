"""Turn pydantic's errors into suite problems with readable messages, and keep checking names
when the schema fails (so one run of `normbench run` shows a typo'd key and a typo'd variant).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from normbench.data import DATASETS
from normbench.errors import closest
from normbench.models import BACKBONES
from normbench.suite import checks
from normbench.suite.schema import BackboneEntry, NamedEntry, SuiteModel, VariantEntry
from normbench.suite.yamlmap import Path
from normbench.variants_api import VARIANTS

_MESSAGES = {
    "missing": "required key is missing",
    "literal_error": None,  # pydantic's own text lists the allowed values
}


def pydantic_problems(exc: ValidationError) -> list[tuple[Path, str]]:
    """(path, message) per pydantic error, with unknown keys naming the closest allowed one."""
    out: list[tuple[Path, str]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = sorted(_fields_at(loc[:-1]))
            key = str(loc[-1])
            hint = closest(key, allowed)
            msg = f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"
        elif loc == ("version",):
            msg = (
                f"unsupported suite version {err.get('input')!r}; this normbench reads `version: 1`"
            )
        else:
            msg = _MESSAGES.get(kind) or err["msg"].removeprefix("Value error, ")
            if kind != "missing" and "input" in err and not isinstance(err["input"], dict):
                if "but got" not in msg:  # our validators name the value themselves
                    got = repr(err["input"])
                    msg += f" (got {got if len(got) <= 80 else got[:77] + '...'})"
        out.append((loc, msg))
    return out


def _fields_at(loc: Path) -> list[str]:
    """Field names of the model found at `loc` inside SuiteModel (empty if none)."""
    ann: Any = SuiteModel
    for part in loc:
        ann = _unwrap(ann, part)
        if ann is None:
            return []
    ann = _unwrap(ann, None)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _unwrap(ann: Any, part: Any) -> Any:
    """Step from annotation `ann` into `part` (a field name, list index or dict key)."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(ann) if a is not type(None)]
        return _unwrap(models[0], part) if models else None
    if part is None:
        return ann
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        f = ann.model_fields.get(str(part))
        return f.annotation if f is not None else None
    if origin is list:
        return typing.get_args(ann)[0]
    if origin is dict:
        return typing.get_args(ann)[1]
    return None


def fallback_name_checks(data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Registry checks of the entries that are well-formed on their own."""
    problems: list[tuple[Path, str]] = []
    ds = data.get("dataset")
    if isinstance(ds, dict) and isinstance(ds.get("name"), str):
        problems += checks.lookup(DATASETS, ds["name"], ("dataset", "name"))[1]
    variants: set[str] = set()
    for section, model, reg in (
        ("backbones", BackboneEntry, BACKBONES),
        ("variants", VariantEntry, VARIANTS),
    ):
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            problems += _entry_names(model, reg, item, (section, i))
            if section == "variants" and isinstance(item, str | dict):
                name = item if isinstance(item, str) else item.get("name")
                variants.add(str(name).lower())
    search = data.get("search")
    space = search.get("space") if isinstance(search, dict) else None
    if isinstance(space, dict):
        problems += checks.check_search_paths([str(k) for k in space], variants)
    return problems


def _entry_names(
    model: type[NamedEntry], reg: Any, item: Any, path: Path
) -> list[tuple[Path, str]]:
    try:
        entry = model.model_validate(item)
    except Exception:
        return []  # its schema error is already reported
    return checks.check_entry(reg, entry.name, entry.options, path)
