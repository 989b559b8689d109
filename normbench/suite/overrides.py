"""`--set key.path=value` overrides, applied to the parsed YAML before validation.

Values are YAML-typed by the suite's own rules (`normbench.suite.yamlmap`: `--set train.lr=1e-3`
gives a float, `--set train.epochs=2` gives an int, `--set seeds=[0,1]` a list,
`--set train.amp=null` None). Dotted parts index into mappings, and integer parts into lists
(`--set variants.1.options.num_groups=8`). A missing mapping key is created, so an override can
add a key the file does not have; whether that key exists in the schema is then decided by
validation like any other key, and the error names the override instead of a line. So does
an error anywhere in a value the override gave: `--set variants=[bn, {name: gnn}]` replaces the
file's list, and its items are located at the flag, not at the file's old lines.
"""

from __future__ import annotations

from typing import Any

from normbench.suite.yamlmap import Path, SourceMap, dotted, parse_value


def parse_override(expr: str) -> tuple[Path, Any]:
    """'train.epochs=2' -> (('train', 'epochs'), 2). Raises ValueError on a malformed one."""
    key, sep, raw = expr.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError("an override must look like key.path=value, e.g. train.epochs=2")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ValueError(f"empty part in the key path {key!r}")
    try:
        value = parse_value(raw) if raw.strip() else ""
    except ValueError as exc:
        raise ValueError(f"the value {raw!r} is not valid YAML: {exc}") from None
    path = tuple(int(p) if p.isdigit() else p for p in parts)
    return path, value


def apply_overrides(
    data: Any, overrides: list[str] | tuple[str, ...], smap: SourceMap
) -> list[str]:
    """Apply each override to `data` in place; return the problems (formatted like all others)."""
    problems: list[str] = []
    for expr in overrides:
        label = f"--set {expr}"
        try:
            path, value = parse_override(expr)
            _set(data, path, value)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            problems.append(f"{smap.file}: {label}: {msg}")
            continue
        _point_at(smap, path, label)
    return problems


def _point_at(smap: SourceMap, path: Path, label: str) -> None:
    """Locate `path` and everything under it at the override: the value replaced the file's
    (a list given whole, `--set variants=[...]`, forgets the file's items and their lines).
    Keys the override created on the way point at it too, unless an earlier override or a
    line of the file already says where they come from."""
    for known in (smap.lines, smap.overrides):
        for key in [k for k in known if k[: len(path)] == path]:
            del known[key]
    for n in range(1, len(path)):
        located = any(path[:m] in smap.overrides for m in range(1, n + 1))
        if path[:n] not in smap.lines and not located:
            smap.overrides[path[:n]] = label
    smap.overrides[path] = label


def _set(data: Any, path: Path, value: Any) -> None:
    """Set data[path] = value, creating missing mappings along the way."""
    node = data
    for i, part in enumerate(path[:-1]):
        node = _child(node, part, path[: i + 1], create=True)
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise IndexError(f"{dotted(path)}: no item {last!r} in a list of {len(node)}")
        node[last] = value
    elif isinstance(node, dict):
        node[str(last)] = value
    else:
        raise TypeError(f"{dotted(path[:-1])} is a {type(node).__name__}, not a mapping or list")


def _child(node: Any, part: Any, where: Path, *, create: bool) -> Any:
    if isinstance(node, list):
        if not isinstance(part, int) or part >= len(node):
            raise IndexError(f"{dotted(where)}: no item {part!r} in a list of {len(node)}")
        if isinstance(node[part], str):  # `variants: [gn]` item given as a bare name
            node[part] = {"name": node[part]}
        return node[part]
    if isinstance(node, dict):
        key = str(part)
        if key not in node or node[key] is None:
            if not create:
                raise KeyError(f"{dotted(where)}: no such key")
            node[key] = {}
        if isinstance(node[key], str):  # `backbone: resnet20` in an include cell
            node[key] = {"name": node[key]}
        return node[key]
    raise TypeError(f"{dotted(where[:-1])} is a {type(node).__name__}, not a mapping or list")
