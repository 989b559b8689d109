"""Options of registered entries: the one door they are checked through.

Each kind (variants, backbones, data sets) describes how its entries take options with an
`OptionDoor` beside its registry, including the kind's own rules (step 3 below);
`Registry.check_options(name, options, build=..., **context)` (normbench.registry) calls
`check_entry_options`, which runs, for any entry, built-in or plugin:

1. names: every option must be a keyword of the constructor / factory (or one every entry of
   the kind takes, e.g. a data set's `augment`), with a did-you-mean (`errors.closest`);
2. types: a value has the YAML type of the option's default (an int where the default is an
   int; a float default also takes an int; a None default takes anything);
3. the kind's rules (`OptionDoor.rules`): a batch-dependent variant cannot train at batch size
   1; with `build=True` a variant is constructed at every norm width the backbone has and a
   backbone is constructed with its norm layers recorded, on the meta device (no memory), so
   every constructor refusal surfaces at validation (`normbench.variants_api`,
   `normbench.models.registry`); a plugin variant is also run (train with backward, and
   eval, on a (batch size, width, 4, 4) CPU batch) at every width, so a layer that works only
   at some widths is refused before Ray starts; a data set's `augment` mapping is parsed
   (`normbench.data.registry`);
4. the entry's own hook, when it defines one (a classmethod on a layer, an attribute of a
   factory function):

       check_options(options, *, batch_size=None, widths=None) -> dict[str, str]

   `options` are the options as written (defaults not filled in); `batch_size` is the
   training batch size and `widths` the frozenset of channel counts the backbone passes to
   the layer (None when the caller does not know them: every keyword the hook names is
   passed, None when unknown). It returns {option: message} for every option that cannot
   work there (empty when all is well). Suite validation calls it for every (entry, batch size,
   backbone) of the matrix; `create_norm`/`norm_layer`/`create_backbone`/`build_data` call
   it with what they know. A hook that raises is reported as a problem, never a crash.

Suite validation and trial building go through this same function, so a suite accepts
exactly what a trial can build.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from normbench.errors import closest, describe_failure, one_line


@dataclass(frozen=True)
class OptionProblem:
    """One problem with an entry's options. `option` names the option it is about (None:
    the options as a whole); `context` names a context key it is about instead (e.g.
    "batch_size"), so a suite can point at the line that set it."""

    message: str
    option: str | None = None
    context: str | None = None
    unknown: bool = False  # an option name the entry does not take
    error: type[Exception] | None = None  # the exception type to raise it as (default UserError)


# A kind's own rules (step 3): (entry name, entry object, options, build, context) -> problems.
Rules = Callable[[str, Any, dict[str, Any], bool, dict[str, Any]], list[OptionProblem]]


@dataclass(frozen=True)
class OptionDoor:
    """How the entries of one kind take options: which leading parameters of the constructor
    or factory are not options (`skip`: num_features; num_classes and norm_layer), which
    keywords the harness fills in (`internal`), the options every entry of the kind takes with
    their defaults (`common`, e.g. a data set's `augment`) and the kind's own rules."""

    kind: str = ""
    skip: int = 0
    internal: frozenset[str] = frozenset({"device", "dtype"})
    common: Callable[[], dict[str, Any]] = dict
    rules: Rules | None = None

    def options(self, obj: Any) -> dict[str, Any] | None:
        """Options with defaults (the kind's common ones first); None when `obj` takes
        any **options."""
        try:
            params = list(inspect.signature(obj).parameters.values())[self.skip :]
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        own = {p.name: p.default for p in params if p.kind in kinds and p.name not in self.internal}
        return {**self.common(), **own}


def check_entry_options(
    door: OptionDoor,
    name: str,
    obj: Any,
    options: dict[str, Any],
    build: bool,
    context: dict[str, Any],
) -> list[OptionProblem]:
    """Steps 1-4 of the module docstring; stops after the first step that finds problems."""
    problems = _unknown_or_mistyped(door.kind, name, door.options(obj), options)
    if problems:
        return problems
    if door.rules is not None:
        problems = door.rules(name, obj, options, build, context)
    return problems or _call_hook(door.kind, name, obj, options, context)


def type_ok(default: Any, value: Any) -> bool:
    """A value has the YAML type of the option's default (None on either side passes)."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _unknown_or_mistyped(
    kind: str, name: str, allowed: dict[str, Any] | None, options: dict[str, Any]
) -> list[OptionProblem]:
    if allowed is None:
        return []
    problems = []
    listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
    for key, value in options.items():
        if key not in allowed:
            problems.append(
                OptionProblem(
                    f"{kind} {name!r} has no option {key!r}{closest(key, list(allowed))}; "
                    f"options: {listing}",
                    option=str(key),
                    unknown=True,
                )
            )
        elif not type_ok(allowed[key], value):
            default = allowed[key]
            problems.append(
                OptionProblem(
                    f"{kind} {name!r} option {key!r} expects {_article(default)} like "
                    f"the default {default!r}, but got {value!r}",
                    option=str(key),
                )
            )
    return problems


def _article(default: Any) -> str:
    kind = type(default).__name__
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _call_hook(
    kind: str, name: str, obj: Any, options: dict[str, Any], context: dict[str, Any]
) -> list[OptionProblem]:
    """The entry's `check_options` hook (step 4)."""
    hook = getattr(obj, "check_options", None)
    if not callable(hook):
        return []
    try:
        params = list(inspect.signature(hook).parameters.values())[1:]  # after `options`
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        kwargs = {p.name: context.get(p.name) for p in params if p.kind in named}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            kwargs.update({k: v for k, v in context.items() if not k.startswith("_")})
        items = list(dict(hook(dict(options), **kwargs) or {}).items())
    except BaseException as exc:  # plugin code: sys.exit() included
        return [OptionProblem(f"{kind} {name!r}: check_options failed: {describe_failure(exc)}")]
    return [
        OptionProblem(
            f"{kind} {name!r}: {one_line(str(msg))}",
            option=str(key) if key in options else None,
        )
        for key, msg in items
    ]


def freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Options as a hashable key (for the caches of what was built)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))
