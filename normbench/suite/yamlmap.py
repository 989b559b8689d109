"""Parse a suite's YAML and remember the line of every key, so errors can point at it.

`yaml.safe_load` forgets where values came from; `yaml.compose` keeps a node tree with marks.
We compose once, record `path -> line` for every mapping key and sequence item, and construct
the plain Python data from the same tree. Paths are tuples of keys and list indices, the same
shape as pydantic's error locations, so a validation error maps back to a line (`locate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from normbench.errors import SuiteError

Path = tuple[Any, ...]


@dataclass
class SourceMap:
    """Where each path of a suite came from: a line of `file`, or a `--set` override."""

    file: str
    lines: dict[Path, int] = field(default_factory=dict)
    overrides: dict[Path, str] = field(default_factory=dict)  # path -> "--set a.b=v"

    def locate(self, path: Path) -> str:
        """'FILE:LINE' of the deepest known prefix of `path` (or the override that set it)."""
        for n in range(len(path), -1, -1):
            prefix = tuple(path[:n])
            if prefix in self.overrides:
                return f"{self.file}: {self.overrides[prefix]}"
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
        return f"{self.file}:1"

    def problem(self, path: Path, message: str) -> str:
        """One formatted problem: 'FILE:LINE: key.path: message'."""
        return f"{self.locate(path)}: {dotted(path) or '(top level)'}: {message}"


def dotted(path: Path) -> str:
    """('variants', 2, 'options', 'tau') -> 'variants[2].options.tau'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse(text: str, file: str) -> tuple[Any, SourceMap]:
    """The YAML document as plain data, plus its line map. Syntax errors raise SuiteError."""
    smap = SourceMap(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        why = getattr(exc, "problem", None) or str(exc)
        raise SuiteError([f"{file}:{line}: (yaml): invalid YAML: {why}"]) from exc
    if node is None:
        raise SuiteError([f"{file}:1: (top level): the suite file is empty"])
    problems: list[str] = []
    _record(node, (), smap, problems)
    if problems:
        raise SuiteError(problems)
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, smap


def _record(node: yaml.Node, path: Path, smap: SourceMap, problems: list[str]) -> None:
    """Fill `smap.lines` for every key and item under `node`; flag duplicate keys."""
    smap.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            sub = (*path, key)
            if key in seen:
                problems.append(
                    f"{smap.file}:{key_node.start_mark.line + 1}: {dotted(sub)}: "
                    "duplicate key (YAML would silently keep the last one)"
                )
            seen.add(key)
            smap.lines[sub] = key_node.start_mark.line + 1
            _record(value_node, sub, smap, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            smap.lines[(*path, i)] = item.start_mark.line + 1
            _record(item, (*path, i), smap, problems)
