"""Registries of variants, backbones and data sets, and the plugin doors into them.

Built-ins, entry-point plugins and plugin files all end in `Registry.register`, so a built-in
has no privilege a plugin lacks. Each entry remembers where it came from (`source`), and every
result records it. Unlike timm's registry (which warns and overwrites), a duplicate name raises.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata as md
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench.errors import DuplicateNameError, PluginError, UnknownNameError

BUILTIN = "built-in"


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    source: str  # "built-in", "file:<abs path>" or "package <dist> <version>"


def closest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to `name`, else ''."""
    match = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry:
    """Case-insensitive name -> object table, filled by built-ins, entry points and files."""

    def __init__(self, kind: str, group: str, builtins: Callable[[Registry], None]) -> None:
        self.kind = kind  # "variant", "backbone", "dataset"
        self.group = group  # entry-point group, e.g. "normbench.variants"
        self._builtins = builtins
        self._entries: dict[str, Entry] = {}
        self._broken: dict[str, str] = {}  # plugin name -> why it failed to load
        self._source_stack: list[str] = []
        self._loaded = False
        self._lock = threading.RLock()

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, obj: Any, *, source: str | None = None) -> Any:
        key = name.lower()
        src = source or (self._source_stack[-1] if self._source_stack else BUILTIN)
        with self._lock:
            if key in self._entries:
                old = self._entries[key]
                if old.obj is obj:  # the same file imported twice: not a conflict
                    return obj
                raise DuplicateNameError(
                    f"{self.kind} {key!r} is already registered (from {old.source}); "
                    f"cannot register it again from {src}"
                )
            self._entries[key] = Entry(key, obj, src)
        return obj

    def decorator(self, name: str | None = None) -> Callable[[Any], Any]:
        def wrap(obj: Any) -> Any:
            return self.register(name or obj.__name__, obj)

        return wrap

    @contextlib.contextmanager
    def attributed_to(self, source: str) -> Iterator[None]:
        """Registrations made inside this block are recorded as coming from `source`."""
        self._source_stack.append(source)
        try:
            yield
        finally:
            self._source_stack.pop()

    # -- loading --------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            self._builtins(self)
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=self.group):
            dist = ep.dist
            src = f"package {dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"
            try:
                self.register(ep.name, ep.load(), source=src)
            except Exception as exc:  # a broken plugin never takes down the built-ins
                self._broken[ep.name.lower()] = (
                    f"{self.kind} plugin {ep.name!r} ({src}, {ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                )

    def load_file(self, path: str | Path) -> list[str]:
        """Import a plugin file; its `register_*` calls land here. Returns the new names."""
        self._ensure_loaded()
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise PluginError(f"plugin file {str(path)!r} does not exist")
        before = set(self._entries)
        mod_name = f"normbench_plugin_{abs(hash(str(p))):x}"
        if mod_name in sys.modules:
            return []
        spec = importlib.util.spec_from_file_location(mod_name, p)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin file {str(p)!r} is not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            with all_attributed_to(f"file:{p}"):
                spec.loader.exec_module(module)
        except DuplicateNameError as exc:
            del sys.modules[mod_name]
            raise PluginError(f"plugin file {str(p)!r}: {exc}") from exc
        except Exception as exc:
            del sys.modules[mod_name]
            raise PluginError(
                f"plugin file {str(p)!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return sorted(set(self._entries) - before)

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

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._ensure_loaded()
        return [self._entries[k] for k in sorted(self._entries)]

    def broken(self) -> dict[str, str]:
        self._ensure_loaded()
        return dict(self._broken)

    def unregister(self, name: str) -> None:
        """Remove a name (tests and interactive sessions)."""
        self._entries.pop(name.lower(), None)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return isinstance(name, str) and name.lower() in self._entries


def _builtin_variants(reg: Registry) -> None:
    from normbench.variants import BUILTIN_VARIANTS

    for name, cls in BUILTIN_VARIANTS.items():
        reg.register(name, cls, source=BUILTIN)


def _builtin_backbones(reg: Registry) -> None:
    from normbench.models import BUILTIN_BACKBONES

    for name, fn in BUILTIN_BACKBONES.items():
        reg.register(name, fn, source=BUILTIN)


def _builtin_datasets(reg: Registry) -> None:
    from normbench.data import BUILTIN_DATASETS

    for name, fn in BUILTIN_DATASETS.items():
        reg.register(name, fn, source=BUILTIN)


VARIANTS = Registry("variant", "normbench.variants", _builtin_variants)
BACKBONES = Registry("backbone", "normbench.backbones", _builtin_backbones)
DATASETS = Registry("dataset", "normbench.datasets", _builtin_datasets)
REGISTRIES = {"variant": VARIANTS, "backbone": BACKBONES, "dataset": DATASETS}


@contextlib.contextmanager
def all_attributed_to(source: str) -> Iterator[None]:
    with VARIANTS.attributed_to(source), BACKBONES.attributed_to(source), DATASETS.attributed_to(
        source
    ):
        yield


def load_plugin(path: str | Path) -> list[str]:
    """Import a plugin file that may register variants, backbones or data sets.

    Every variant the file registers is checked against the constructor contract; a
    violation raises `PluginError` naming the file, and the file's names are removed again.
    """
    before = {k: set(r._entries) for k, r in REGISTRIES.items() if r._ensure_loaded() is None}
    names = VARIANTS.load_file(path)  # the import registers into all three registries
    added = {k: sorted(set(r._entries) - before[k]) for k, r in REGISTRIES.items()}
    from normbench.variants_api import check_variant_contract

    for name in added["variant"]:
        problem = check_variant_contract(VARIANTS.get(name).obj)
        if problem:
            for k, reg in REGISTRIES.items():
                for n in added[k]:
                    reg.unregister(n)
            raise PluginError(f"plugin file {str(path)!r}: variant {name!r} {problem}")
    del names
    return [f"{k}:{n}" for k in added for n in added[k]]
