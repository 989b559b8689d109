"""Read a suite's YAML safely and remember the line of every key, so errors can point at it.

`yaml.safe_load` forgets where values came from and trusts its input; here we compose a node
tree with marks under hard limits, record `path -> line` for every mapping key and sequence
item, and construct plain Python data from the same tree. Paths are tuples of keys and list
indices, the same shape as pydantic's error locations, so a validation error maps back to a
line (`locate`).

The limits hold before anything large is allocated (each refusal names the file and line):
* at most `MAX_BYTES` of UTF-8 text (a BOM is allowed; other encodings are refused);
* at most `MAX_DEPTH` levels of nesting, counted through aliases;
* at most `MAX_VALUES` values once every alias is expanded (the "billion laughs" pattern: a
  1 KB file whose nested aliases expand to 10^9 values), and no alias inside its own anchor;
* only the tags of plain data: `!!str !!int !!float !!bool !!null !!seq !!map` (and merge keys
  `<<`); `!foo`, `!!python/...`, `!!binary`, `!!timestamp`, `!!set` are refused.

Scalars resolve as in the YAML 1.2 core schema, so `1e-3` is a float (YAML 1.1, PyYAML's
default, reads an exponent without a dot as a string), `yes`/`on` are strings, `017` is 17,
and dates stay strings. `_` between digits is accepted in integers (`10_000`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml
from yaml.composer import ComposerError

from normbench.errors import SuiteError

Path = tuple[Any, ...]

MAX_BYTES = 1 << 20  # a suite is a short text file; the largest shipped one is ~6 KB
MAX_DEPTH = 64  # the deepest shipped suite nests 5 levels
MAX_VALUES = 100_000  # values after alias expansion; shipped suites hold a few hundred

_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9](?:_?[0-9])*|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$"
)


class _Resolver(yaml.resolver.BaseResolver):
    """The YAML 1.2 core schema's implicit types (plus `<<` merge keys)."""


for _tag, _rx, _first in (
    ("bool", _BOOL, "tTfF"),
    ("int", _INT, "-+0123456789"),
    ("float", _FLOAT, "-+.0123456789"),
    ("null", _NULL, ["~", "n", "N", ""]),
    ("merge", re.compile(r"^<<$"), "<"),
):
    _Resolver.add_implicit_resolver(_TAG + _tag, _rx, list(_first))


class _Composer(yaml.composer.Composer):
    """PyYAML's composer with a nesting limit and an expanded-size budget."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._cost: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, depth)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._cost:
                raise ComposerError(
                    None, None, "an alias inside its own anchor (a recursive structure)", mark
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._account(node)
        return node

    def _account(self, node: yaml.Node) -> None:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        costs = [self._cost[id(c)] for c in children]
        values = 1 + sum(c[0] for c in costs)
        depth = 1 + max((c[1] for c in costs), default=0)
        if values > MAX_VALUES:
            raise ComposerError(
                None,
                None,
                f"the aliases here expand the suite to more than {MAX_VALUES} values "
                "(write the values out, or use fewer nested aliases)",
                node.start_mark,
            )
        if depth > MAX_DEPTH:
            raise ComposerError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels through aliases",
                node.start_mark,
            )  # fmt: skip
        self._cost[id(node)] = (values, depth)


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _Composer, _Resolver):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Composer.__init__(self)
        _Resolver.__init__(self)


@dataclass
class SourceMap:
    """Where each path of a suite came from: a line of `file`, or a `--set` override."""

    file: str
    lines: dict[Path, int] = field(default_factory=dict)
    overrides: dict[Path, str] = field(default_factory=dict)  # path -> "--set a.b=v"

    def given_by_flag(self, path: Path) -> bool:
        """Whether `path` was set by a `--set` override (itself, or a mapping or list holding
        it given whole)."""
        return any(tuple(path[:n]) in self.overrides for n in range(1, len(path) + 1))

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
        return f"{self.locate(path)}: {dotted(path) or '(top level)'}: {one_line(message)}"


def one_line(text: str) -> str:
    """Collapse whitespace so a message prints as a single line at the CLI."""
    return " ".join(str(text).split())


def dotted(path: Path) -> str:
    """('variants', 2, 'options', 'tau') -> 'variants[2].options.tau'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_text(file: FsPath) -> str:
    """The suite file as text: at most MAX_BYTES, UTF-8. Raises SuiteError otherwise."""
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SuiteError([f"{file}: cannot read the suite file: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_BYTES:
        raise SuiteError(
            [f"{file}:1: (file): the suite file is larger than {MAX_BYTES} bytes (the limit)"]
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SuiteError(
            [
                f"{file}:{line}: (file): the suite file is not UTF-8 text (byte "
                f"0x{raw[exc.start]:02x}); save it as UTF-8"
            ]
        ) from None


def parse(text: str, file: str) -> tuple[Any, SourceMap]:
    """The YAML document as plain data, plus its line map. Raises SuiteError with every
    problem (syntax, limits, tags, malformed typed scalars, duplicate keys)."""
    smap = SourceMap(file)
    node = compose(text, file)
    if node is None:
        raise SuiteError([f"{file}:1: (top level): the suite file is empty"])
    problems: list[str] = []
    data = _build(node, (), smap, problems)
    if problems:
        raise SuiteError(problems)
    return data, smap


def parse_value(text: str) -> Any:
    """One YAML value (a `--set` right-hand side) with the suite's rules. Raises ValueError."""
    try:
        data, _ = parse(text, "value")
    except SuiteError as exc:
        raise ValueError(
            "; ".join(p.removeprefix("value:").split(": ", 2)[-1] for p in exc.problems)
        ) from None
    return data


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of a single-document YAML text, within the limits above."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        return loader.get_single_node()
    except yaml.YAMLError as exc:
        raise SuiteError([f"{file}:{_error_line(exc, text)}: (yaml): {_why(exc)}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _error_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)  # ReaderError: a bad character
    return text[: int(position)].count("\n") + 1 if position is not None else 1


def _why(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} is not allowed in YAML text ({exc.reason})"
    if isinstance(exc, ComposerError) and exc.context is None:
        return one_line(str(exc.problem))
    return "invalid YAML: " + one_line(str(getattr(exc, "problem", None) or exc))


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _build(node: yaml.Node, path: Path, smap: SourceMap, problems: list[str]) -> Any:
    """Plain data for `node`; fills `smap.lines` and collects problems with their lines."""
    smap.lines.setdefault(path, node.start_mark.line + 1)
    where = f"{smap.file}:{node.start_mark.line + 1}: {dotted(path) or '(top level)'}"
    if node.tag not in _ALLOWED_TAGS and not (
        node.tag == _TAG + "merge" and isinstance(node, yaml.ScalarNode)
    ):
        allowed = " ".join(sorted(_short(t) for t in _ALLOWED_TAGS))
        problems.append(
            f"{where}: the YAML tag {_short(node.tag)!r} is not allowed in a suite "
            f"(plain data only: {allowed})"
        )
        return None
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(node, path, smap, problems)
    if isinstance(node, yaml.SequenceNode):
        out = []
        for i, item in enumerate(node.value):
            smap.lines[(*path, i)] = item.start_mark.line + 1
            out.append(_build(item, (*path, i), smap, problems))
        return out
    if node.tag in (_TAG + "seq", _TAG + "map"):
        problems.append(f"{where}: the tag {_short(node.tag)} cannot mark a scalar")
        return None
    try:
        return _scalar(node.tag, node.value)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _scalar(tag: str, value: str) -> Any:
    kind = tag.removeprefix(_TAG)
    if kind in ("str", "merge"):
        return value
    if kind == "null" and _NULL.match(value):
        return None
    if kind == "bool" and _BOOL.match(value):
        return value.lower() == "true"
    if kind == "int" and _INT.match(value):
        digits = value.replace("_", "")
        try:
            return int(digits, 0) if digits[:2] in ("0o", "0x") else int(digits, 10)
        except ValueError:  # Python refuses integers of more than 4300 digits
            raise ValueError(f"the integer {value[:20]!r}... has too many digits") from None
    if kind == "float" and (_FLOAT.match(value) or _INT.match(value)):
        low = value.lower()
        if low.endswith(".inf"):
            return -math.inf if low.startswith("-") else math.inf
        return math.nan if low == ".nan" else float(value.replace("_", ""))
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise ValueError(f"{shown!r} is not a valid {_short(tag)} value")


def _build_mapping(
    node: yaml.MappingNode, path: Path, smap: SourceMap, problems: list[str]
) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(f"{smap.file}:{line}: {dotted(path) or '(top level)'}: "
                            "a key must be a plain value, not a list or mapping")  # fmt: skip
            continue
        if key_node.tag == _TAG + "merge":
            merged += _merge_pairs(value_node, path, smap, problems)
            continue
        key = _build(key_node, (*path, key_node.value), SourceMap(smap.file), problems)
        sub = (*path, key)
        if key in out:
            problems.append(
                f"{smap.file}:{line}: {dotted(sub)}: "
                "duplicate key (YAML would silently keep the last one)"
            )
        smap.lines[sub] = line
        out[key] = _build(value_node, sub, smap, problems)
    for key_node, value_node in merged:  # explicit keys win over merged ones
        key = _build(key_node, path, SourceMap(smap.file), problems)
        if key not in out:
            smap.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), smap, problems)
    return out


def _merge_pairs(
    value: yaml.Node, path: Path, smap: SourceMap, problems: list[str]
) -> list[tuple[yaml.Node, yaml.Node]]:
    """The (key, value) nodes a `<<:` merge brings in (a mapping or a list of mappings)."""
    sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    nested: list[tuple[yaml.Node, yaml.Node]] = []  # a source's own keys win over its merges
    for src in sources:
        if not isinstance(src, yaml.MappingNode):
            problems.append(
                f"{smap.file}:{src.start_mark.line + 1}: {dotted(path) or '(top level)'}: "
                "a merge key `<<` takes a mapping or a list of mappings"
            )
            continue
        for k, v in src.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == _TAG + "merge":
                nested += _merge_pairs(v, path, smap, problems)
            else:
                pairs.append((k, v))
    return pairs + nested
