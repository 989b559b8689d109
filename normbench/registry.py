"""The registry mechanism: a name -> object table per kind, and the plugin doors into them.

This module knows none of its clients (as torchvision's `models/_api.py`): each kind makes its
own registry beside its code with `kind_registry(...)`, giving its built-ins, its contract
check and its option door (`normbench.options`): `VARIANTS` in `normbench.variants_api`,
`BACKBONES` in `normbench.models.registry`, `DATASETS` in `normbench.data.registry`, `TASKS`
in `normbench.tasks.registry`.

Built-ins, entry-point plugins and plugin files all end in `Registry.register`, so a built-in
has no privilege a plugin lacks. Each entry remembers where it came from (`source`), and every
result records it. Unlike timm's registry (which warns and overwrites), a duplicate name raises
(as torchvision's `_api.py` does).

Plugins reach the registries through two doors:
- an entry point in the group `normbench.variants` (or `.backbones`, `.datasets`, `.tasks`)
  naming either the object itself (`mynorm = pkg.mod:MyNorm`) or a module whose import
  registers things;
- a local Python file (`--plugin FILE`, or `plugins:` in a suite) loaded by `load_plugin`.
A plugin that fails to import or breaks the contract is reported by name; the built-ins and the
other plugins stay usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import importlib.util
import itertools
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench.contract import Revision, revisions_of
from normbench.errors import (
    DuplicateNameError,
    PluginError,
    UnknownNameError,
    UserError,
    closest,
    describe_failure,
    one_line,
)
from normbench.options import OptionDoor, OptionProblem, check_entry_options

# Where registrations made now come from (innermost last): a plugin file or package being
# loaded. One stack for every kind, since a plugin may register any kind.
_SOURCE_STACK: list[str] = []

BUILTIN = "built-in"
_NAME_RULE = re.compile(r"^[a-z][a-z0-9_.\-]*$")


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    source: str  # "built-in", "file:<abs path>" or "package <dist> <version>"


def _default_source(obj: Any) -> str:
    """Where a direct `register` call (no plugin door) comes from: normbench itself is
    built-in; a module of an installed distribution is that package; else the module."""
    module = str(getattr(obj, "__module__", "") or "")
    top = module.split(".")[0]
    if top == "normbench":
        return BUILTIN
    for dist in md.packages_distributions().get(top, []):
        with contextlib.suppress(md.PackageNotFoundError):
            return f"package {dist} {md.version(dist)}"
    return f"module:{module or '?'}"


class Registry:
    """Case-insensitive name -> object table, filled by built-ins, entry points and files.

    `builtins() -> {name: object}` gives the kind's built-ins, registered on first use (so a
    kind's module need not import its heavy built-ins until a name is looked up).
    `check(obj) -> str | None` (optional) describes how a plugin's object breaks the contract;
    it runs for every non-built-in registration (after the whole plugin is imported, so a
    class may use helpers defined further down its file).
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: Callable[[], Mapping[str, Any]],
        check: Callable[[Any], str | None] | None = None,
        door: OptionDoor | None = None,
    ) -> None:
        self.kind = kind  # "variant", "backbone", "dataset"
        self.door = door or OptionDoor(kind)
        self.group = group  # entry-point group, e.g. "normbench.variants"
        self._builtins = builtins
        self._check = check
        self._entries: dict[str, Entry] = {}
        self._broken: dict[str, str] = {}  # plugin name -> why it failed to load
        self._loaded = False
        self._lock = threading.RLock()

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, obj: Any, *, source: str | None = None) -> Any:
        """Add `name` -> `obj`. Raises DuplicateNameError if the name is taken."""
        if not isinstance(name, str) or not _NAME_RULE.match(name.lower()):
            raise PluginError(
                f"{self.kind} name {name!r} is invalid: it must start with a letter and hold "
                f"only letters, digits, '_', '.' or '-'"
            )
        key = name.lower()
        src = source or (_SOURCE_STACK[-1] if _SOURCE_STACK else _default_source(obj))
        try:
            revisions_of(obj)  # a malformed declaration is refused, built-in or plugin
        except ValueError as exc:
            raise PluginError(f"{self.kind} {key!r} (from {src}): {exc}") from None
        with self._lock:
            self._ensure_loaded()
            old = self._entries.get(key)
            if old is not None:
                if old.obj is obj:  # the same module imported twice: not a conflict
                    return obj
                raise DuplicateNameError(
                    f"{self.kind} {key!r} is already registered (from {old.source}); "
                    f"cannot register it again from {src}"
                )
            if src != BUILTIN and not _SOURCE_STACK:
                self._verify(key, obj)  # a direct call, e.g. @register_variant in a script
            self._entries[key] = Entry(key, obj, src)
            self._broken.pop(key, None)
        return obj

    def decorator(self, name: str | None = None) -> Callable[[Any], Any]:
        """`@reg.decorator("name")`; without a name the object's `__name__` is used."""

        def wrap(obj: Any) -> Any:
            return self.register(name or obj.__name__, obj)

        return wrap

    def _verify(self, key: str, obj: Any) -> None:
        problem = self._check(obj) if self._check is not None else None
        if problem:
            raise PluginError(f"{self.kind} {key!r} {one_line(problem)}")

    # -- loading --------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: the built-ins register through self.register
            try:
                for name, obj in self._builtins().items():
                    self.register(name, obj, source=BUILTIN)
            except BaseException:
                self._entries.clear()
                self._loaded = False
                raise
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        seen: set[tuple[str, str]] = set()
        for ep in md.entry_points(group=self.group):
            if (ep.name, ep.value) in seen:  # a distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            self._load_entry_point(ep)

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        """Import one entry point; on any failure record it in `broken()` and roll back."""
        dist = ep.dist
        src = (
            f"package {dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"
        )
        before = _snapshot()
        try:
            with attributed_to(src):
                obj = ep.load()
                if not isinstance(obj, types.ModuleType):  # a module registers by importing
                    self.register(ep.name, obj)
            for reg, key in _added_since(before, src):
                reg._verify(key, reg._entries[key].obj)
        except BaseException as exc:  # a broken plugin never takes down the built-ins
            for reg, key in _added_since(before, src):
                reg.unregister(key)
            self._broken[ep.name.lower()] = one_line(
                f"{self.kind} plugin {ep.name!r} ({src}, entry point {ep.value}) failed to "
                f"load: {describe_failure(exc)}"
            )

    def load_file(self, path: str | Path) -> list[str]:
        """Import a plugin file (see `load_plugin`); returns the names it added here."""
        prefix = f"{self.kind}:"
        return [n.removeprefix(prefix) for n in load_plugin(path) if n.startswith(prefix)]

    def _reset(self) -> None:
        """Forget every entry and reload on next use (tests that install plugins)."""
        with self._lock:
            self._entries.clear()
            self._broken.clear()
            self._loaded = False

    # -- lookup ---------------------------------------------------------------------------
    def get(self, name: str) -> Entry:
        self._ensure_loaded()
        key = str(name).lower()
        if key in self._entries:
            return self._entries[key]
        if key in self._broken:
            raise PluginError(self._broken[key])
        names = self.names()
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{closest(key, names)}; available: {', '.join(names)}"
        )

    def revisions(self, name: str) -> tuple[Revision, ...]:
        """The computation changes entry `name` declares (`normbench.contract.Revision`; its
        `revision` attribute, checked at registration): () while it is at revision 1."""
        return revisions_of(self.get(name).obj)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._ensure_loaded()
        return [self._entries[k] for k in sorted(self._entries)]

    def broken(self) -> dict[str, str]:
        """Plugins (by entry-point name) that failed to load, with the reason."""
        self._ensure_loaded()
        return dict(self._broken)

    def unregister(self, name: str) -> None:
        """Remove a name (tests and interactive sessions)."""
        with self._lock:
            self._entries.pop(name.lower(), None)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return isinstance(name, str) and name.lower() in self._entries

    # -- options: the one place they are checked --------------------------------------------
    def options(self, name: str) -> dict[str, Any] | None:
        """Options of entry `name` with their defaults; None when it takes any `**options`."""
        return self.door.options(self.get(name).obj)

    def check_options(
        self, name: str, options: dict[str, Any], *, build: bool = False, **context: Any
    ) -> list[OptionProblem]:
        """Every problem with `options` for entry `name` (already known to exist), in order:
        unknown option names (with a did-you-mean), values whose YAML type differs from the
        default's, then, if those pass, the kind's own rules (with `build=True` they construct
        what a trial constructs, on the meta device) and the entry's `check_options` hook.

        `context` is what the caller knows (`batch_size`, `widths` for variants); a key the
        caller does not know is None. Suite validation and trial building both call this, so
        a suite accepts exactly what a trial can build.
        """
        entry = self.get(name)
        return check_entry_options(self.door, entry.name, entry.obj, options, build, context)

    def require_options(self, name: str, options: dict[str, Any], **context: Any) -> None:
        """`check_options` for code paths that raise: UnknownNameError for an unknown option
        name, else UserError, with every problem in one line."""
        problems = self.check_options(name, options, **context)
        if not problems:
            return
        text = "; ".join(p.message for p in problems)
        error = problems[0].error or (UnknownNameError if problems[0].unknown else UserError)
        raise error(text)


# The registry of each kind, by kind ("variant", "backbone", "dataset"): filled by
# `kind_registry` as each kind's module is imported; plugin files may register any of them.
REGISTRIES: dict[str, Registry] = {}


def kind_registry(
    kind: str,
    group: str,
    builtins: Callable[[], Mapping[str, Any]],
    *,
    check: Callable[[Any], str | None] | None = None,
    door: OptionDoor | None = None,
) -> Registry:
    """The one registry of `kind`, which plugin files and entry points reach (`Registry`
    made directly stays private, e.g. in tests)."""
    if kind in REGISTRIES:
        raise DuplicateNameError(f"the registry of kind {kind!r} already exists")
    REGISTRIES[kind] = Registry(kind, group, builtins, check=check, door=door)
    return REGISTRIES[kind]


# Plugin files already imported: resolved path -> the "kind:name" list they added.
_PLUGIN_FILES: dict[Path, tuple[str, list[str]]] = {}  # file -> (content digest, "kind:name"s)
_MODULE_COUNTER = itertools.count()


def _snapshot() -> dict[Registry, set[str]]:
    return {reg: set(reg._entries) for reg in REGISTRIES.values()}


def _added_since(before: dict[Registry, set[str]], source: str) -> list[tuple[Registry, str]]:
    """(registry, name) pairs registered from `source` after `before` was taken, in every
    registry (one a plugin's own import created too); built-ins loaded on the way, by a
    plugin touching another registry first, are not included."""
    return [
        (reg, key)
        for reg in list(REGISTRIES.values())
        for key in sorted(set(reg._entries) - before.get(reg, set()))
        if reg._entries[key].source == source
    ]


@contextlib.contextmanager
def attributed_to(source: str) -> Iterator[None]:
    """Registrations made inside this block, in any registry, come from `source`."""
    _SOURCE_STACK.append(source)
    try:
        yield
    finally:
        _SOURCE_STACK.pop()


def load_plugin(path: str | Path) -> list[str]:
    """Import a plugin file that may register variants, backbones or data sets.

    Returns the "kind:name" entries it added. A file that fails to import, registers a taken
    name, or holds a variant that breaks the constructor contract raises `PluginError` naming
    the file; everything that file registered is removed again. Loading the same file twice
    is a no-op; a file whose content changed since it was loaded (an edited plugin in a
    long-lived process: a notebook, a Ray worker of a cluster reached by address) has what it
    registered before removed and is loaded again, so no stale code runs under its names.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        what = "is a directory, not a Python file" if p.is_dir() else "does not exist"
        raise PluginError(f"plugin file {str(path)!r} {what}")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if p in _PLUGIN_FILES:
        loaded, entries = _PLUGIN_FILES.pop(p)
        if loaded == digest:
            _PLUGIN_FILES[p] = (loaded, entries)
            return list(entries)
        for entry in entries:
            kind, _, name = entry.partition(":")
            REGISTRIES[kind].unregister(name)
    for reg in REGISTRIES.values():  # built-ins first, so a clash always blames the plugin
        with contextlib.suppress(ImportError):  # a kind whose built-ins are not importable
            reg._ensure_loaded()
    mod_name = f"normbench_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', p.stem)}_{next(_MODULE_COUNTER)}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {str(p)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    before, src = _snapshot(), f"file:{p}"
    try:
        with attributed_to(src):
            spec.loader.exec_module(module)
        for reg, key in _added_since(before, src):
            reg._verify(key, reg._entries[key].obj)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: see describe_failure
        del sys.modules[mod_name]
        for reg, key in _added_since(before, src):
            reg.unregister(key)
        why = str(exc) if isinstance(exc, UserError) else describe_failure(exc)
        raise PluginError(one_line(f"plugin file {str(p)!r} failed to load: {why}")) from None
    entries = [f"{reg.kind}:{key}" for reg, key in _added_since(before, src)]
    _PLUGIN_FILES[p] = (digest, entries)
    return list(entries)


def _reset_all() -> None:
    """Tests: empty every registry and forget imported plugin files."""
    for reg in REGISTRIES.values():
        reg._reset()
    _PLUGIN_FILES.clear()
    _SOURCE_STACK.clear()
