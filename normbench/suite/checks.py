"""Suite checks that need the registries: names, options, cross-field rules, search paths.

Every check returns `(path, message)` pairs instead of raising, so the loader reports all
problems of a file at once. Options are checked by the registry (`Registry.check_options`,
normbench/options.py), the same check a trial's build runs, with the suite's context: every
variant entry is checked once per (batch size, backbone, placement) of the matrix, with the
norm widths that backbone really has (recorded by building it on the meta device), and built at
each width. So a constructor's refusal, or a rule of the layer's `check_options` hook (GhostBN's
ghost batch dividing the batch, GN's explicit `num_groups` dividing every width), is reported
here with its line, not hours into a run. A plugin's rules go through the same door.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from normbench.contract import Scoring
from normbench.data import DATASETS
from normbench.errors import UserError, closest, describe_failure
from normbench.models import BACKBONES
from normbench.models.registry import backbone_conditioning, norm_widths
from normbench.options import OptionProblem, freeze
from normbench.registry import Registry, load_plugin
from normbench.spec import IDENTITY, Recipe, TrialSpec, fields_with
from normbench.suite.matrix import RawCell, cell_backbone_options, cell_recipe
from normbench.suite.schema import SuiteModel
from normbench.suite.yamlmap import Path
from normbench.tasks import TASKS, task_norm_widths
from normbench.variants_api import VARIANTS

Problems = list[tuple[Path, str]]


def load_plugins(paths: tuple[str, ...]) -> Problems:
    """Import each plugin file (before any name check, so its names count)."""
    problems: Problems = []
    for i, p in enumerate(paths):
        try:
            load_plugin(p)
        except UserError as exc:
            problems.append((("plugins", i), str(exc)))
    return problems


def lookup(reg: Registry, name: str, path: Path) -> tuple[Any, Problems]:
    """The registered object, or a problem naming the closest known name."""
    if name.lower() in reg:
        return reg.get(name).obj, []
    names = reg.names()
    broken = reg.broken().get(name.lower())
    msg = broken or (
        f"unknown {reg.kind} {name!r}{closest(name, names)}; available: {', '.join(names)}"
    )
    return None, [(path, msg)]


def located(
    found: list[OptionProblem], options_path: Path, context: dict[str, Path] | None = None
) -> Problems:
    """Registry problems at suite paths: the option's key, the context's line, or the options."""
    out: Problems = []
    for p in found:
        if p.context and context and p.context in context:
            out.append((context[p.context], p.message))
        else:
            out.append(((*options_path, p.option) if p.option else options_path, p.message))
    return out


def check_entry(reg: Registry, name: str, options: dict[str, Any], path: Path) -> Problems:
    """Name and options of one entry, without context (what a schema-broken suite still
    allows us to check)."""
    obj, problems = lookup(reg, name, (*path, "name"))
    if obj is not None:
        problems += located(reg.check_options(name, options), (*path, "options"))
    return problems


def check_names(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Dataset, backbone and variant names and options, each entry once."""
    ds = model.dataset.model_dump()
    name = ds.pop("name")
    obj, problems = lookup(DATASETS, name, ("dataset", "name"))
    if obj is not None:
        problems += located(DATASETS.check_options(name, ds), ("dataset",))
    seen: set[Path] = set()
    for c in cells:
        for reg, entry, path in (
            (BACKBONES, c.backbone, c.backbone_path),
            (VARIANTS, c.variant, c.variant_path),
        ):
            if path not in seen:
                seen.add(path)
                problems += check_entry(reg, entry.name, entry.options, path)
    return problems


def check_cells(model: SuiteModel, cells: list[RawCell], known: Problems) -> Problems:
    """Each variant entry in the context of its cells: batch size, backbone, placement.
    Entries that already have a problem in `known` (names, option names) are skipped."""
    broken = [path for path, _ in known]
    parts, problems = task_parts(model)
    done: set[Any] = set()
    for c in cells:
        if any(p[: len(c.variant_path)] == c.variant_path for p in broken) or any(
            p[: len(c.backbone_path)] == c.backbone_path for p in broken
        ):
            continue
        placement = c.variant.placement or model.train.placement
        key = (c.variant_path, c.backbone_path, c.batch_size, placement)
        if key in done:
            continue
        done.add(key)
        problems += _check_cell(
            c, placement == "last-in-block", _statistics_devices(model), _decay(model, c), parts
        )
    return problems


@dataclasses.dataclass(frozen=True)
class TaskParts:
    """The norms the suite's task builds besides the backbone's (a detector's FPN and heads):
    {where: widths}, each `where` naming the task, and what its norm slots pass besides x."""

    widths: dict[str, frozenset[int]] = dataclasses.field(default_factory=dict)
    slot: str | None = None


def task_parts(model: SuiteModel) -> tuple[TaskParts, Problems]:
    """The task's own norm widths (`normbench.tasks.task_norm_widths`); none when its name or
    options are refused (`check_task` says why)."""
    name, options = model.task.name, model.task.options
    if name.lower() not in TASKS or TASKS.check_options(name, options):
        return TaskParts(), []
    try:
        found = task_norm_widths(name, options)
    except UserError:  # the task refuses to exist here (files it reads): its preflight says why
        return TaskParts(), []
    except BaseException as exc:  # plugin code
        why = f"task {name!r}: norm_widths() failed: {describe_failure(exc)}"
        return TaskParts(), [(("task", "name"), why)]
    slot = getattr(TASKS.get(name).obj, "norm_conditioning", None)
    return TaskParts({f"task {name}'s {part}": w for part, w in found.items()}, slot), []


def _decay(model: SuiteModel, c: RawCell) -> tuple[str, Path]:
    """Where the cell's norm parameters decay ("identity" or "zero") and the key that says so
    (the variant entry's own recipe, else `train:`)."""
    own = c.variant.recipe is not None and c.variant.recipe.norm_decay_toward is not None
    where = (*c.variant_path, "recipe") if own else ("train",)
    return cell_recipe(model, c).decay_toward, (*where, "norm_decay_toward")


def _statistics_devices(model: SuiteModel) -> int:
    """Devices whose batches a batch-dependent layer normalises together: all of them with
    `stats_scope: global` (its statistics batch is devices x batch_size), else one."""
    t = model.train
    return t.devices if t.stats_scope == "global" else 1


def _check_cell(
    c: RawCell,
    last: bool,
    devices: int,
    decay: tuple[str, Path] = ("zero", ()),
    parts: TaskParts | None = None,
) -> Problems:
    """The variant at every norm width of the backbone, then at the task's own (`parts`)."""
    backbone = c.backbone.name
    built = BACKBONES.check_options(backbone, c.backbone.options, build=True, last_in_block=last)
    if built:
        return located(built, (*c.backbone_path, "options"))
    widths = norm_widths(backbone.lower(), freeze(c.backbone.options), last)
    slot = backbone_conditioning(backbone.lower())  # what its norm slots pass besides x
    found = _at_widths(
        c, devices, decay, widths, slot, f" of {backbone} (norm widths {sorted(widths)})"
    )
    if not found and parts is not None:
        found = _at_task_widths(c, devices, decay, parts)
    if devices > 1:  # say where a batch size the file does not show comes from
        shown, note = (
            f"batch size {c.batch_size * devices}",
            f" ({devices} devices x {c.batch_size}, stats_scope: global)",
        )
        found = [
            dataclasses.replace(p, message=p.message.replace(shown, shown + note)) for p in found
        ]
    context = {"batch_size": c.batch_path, "decay_toward": decay[1]}
    return located(found, (*c.variant_path, "options"), context)


def _at_task_widths(
    c: RawCell, devices: int, decay: tuple[str, Path], parts: TaskParts
) -> list[OptionProblem]:
    """The variant at the task's own norm widths; a problem that does not say where (a
    `check_options` hook's) is told which part of the task has the width."""
    for part, widths in parts.widths.items():
        found = _at_widths(c, devices, decay, widths, parts.slot, f" of {part}")
        shown = f"width {min(widths)}" if len(widths) == 1 else f"widths {sorted(widths)}"
        told = [
            p
            if part in p.message
            else dataclasses.replace(p, message=f"{p.message}; {shown}: {part}")
            for p in found
        ]
        if told:
            return told
    return []


def _at_widths(
    c: RawCell,
    devices: int,
    decay: tuple[str, Path],
    widths: frozenset[int],
    slot: str | None,
    where: str,
) -> list[OptionProblem]:
    """The variant entry's options checked by the registry at these norm widths."""
    return VARIANTS.check_options(
        c.variant.name,
        c.variant.options,
        build=True,
        batch_size=c.batch_size * devices,
        widths=widths,
        decay_toward=decay[0],
        _slot=slot,
        _where=where,
    )


# Searchable: identity fields (environment, location and bookkeeping fields never change what
# a trial computes, so searching them is meaningless), except the data set and the seed.
_SEARCHABLE = set(fields_with(IDENTITY)) - {"dataset", "seed", "plugins"}


def check_search(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Each search dimension must name a TrialSpec field every searched cell understands, and
    the space must build exactly as written (`normbench.suite.search.space_problems`)."""
    if model.search is None:
        return []
    from normbench.suite.search import space_problems

    searched = set(model.search.space)
    variants = set() if "variant" in searched else {c.variant.name.lower() for c in cells}
    problems = check_search_paths(list(model.search.space), variants)
    return problems or space_problems(model.search, _bases(cells))


def _bases(cells: list[RawCell]) -> list[TrialSpec]:
    """The searched cells as specs (what the search space is conditional on)."""
    return [
        TrialSpec(
            variant=c.variant.name.lower(), backbone=c.backbone.name.lower(), dataset="",
            epochs=1, batch_size=c.batch_size, variant_options=dict(c.variant.options),
            backbone_options=cell_backbone_options(c),
        )
        for c in cells
    ]  # fmt: skip


def check_search_paths(paths: list[str], variants: set[str]) -> Problems:
    """Problems with the dotted paths of a search space, given the variants searched."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    problems: Problems = []
    for path in paths:
        where = ("search", "space", path)
        head, _, rest = path.partition(".")
        if head == "recipe":
            if rest not in recipe_fields:
                problems.append(
                    (where, f"recipe has no field {rest!r}{closest(rest, sorted(recipe_fields))}")
                )
        elif head.endswith("_options") and head in _SEARCHABLE:
            if not rest or "." in rest:
                problems.append((where, f"name one option, e.g. {head}.tau"))
            elif head == "variant_options":
                problems += _search_variant_option(rest, variants, where)
        elif head not in _SEARCHABLE or rest:
            problems.append(
                (
                    where,
                    f"not a searchable path{closest(head, sorted(_SEARCHABLE))};"
                    " use recipe.<field>, variant_options.<option>, "
                    "backbone_options.<option>, dataset_options.<option> or one of "
                    f"{', '.join(sorted(_SEARCHABLE - {'recipe'}))}",
                )
            )
    return problems


def _search_variant_option(option: str, variants: set[str], where: Path) -> Problems:
    for name in sorted(variants):
        if name not in VARIANTS:
            continue
        allowed = VARIANTS.options(name)
        if allowed and option not in allowed:
            return [
                (
                    where,
                    f"variant {name!r} has no option {option!r}"
                    f"{closest(option, list(allowed))}; options: {', '.join(allowed)}",
                )
            ]
    return []


def check_parallel(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """Data-parallel rules: resources are per device; global statistics need layers that
    support them."""
    problems: Problems = []
    gpus, devices = model.resources.gpus, model.train.devices
    if gpus > 1:
        n = f"{gpus:g}" if gpus == int(gpus) else "N"
        problems.append(
            (
                ("resources", "gpus"),
                f"gpus: {gpus:g} is per device, and a trial has train.devices: {devices}; "
                f"for a {n}-GPU data-parallel trial write `train: {{devices: {n}}}` and "
                f"`resources: {{gpus: 1}}`",
            )
        )
    t = model.train
    if 0 < gpus < 1 and devices > 1 and t.parallel == "ddp":
        problems.append(
            (
                ("resources", "gpus"),
                f"gpus: {gpus:g} is per device, so the {devices} DDP ranks of a trial would share "
                "one GPU, which NCCL refuses; give each rank a whole GPU (`resources: {gpus: "
                "1}`), or run the devices in one process on a shared GPU with `train.parallel: "
                "virtual`",
            )
        )
    if t.device.startswith("cuda") and gpus == 0:
        problems.append(
            (
                ("train", "device"),
                f"{t.device!r} needs a GPU, but resources.gpus is 0: a trial that asks Ray for no "
                "GPU is given none (it would share one unaccounted, since Ray >= 2.60 leaves "
                "GPUs visible); set `resources: {gpus: 1}` (or 0.5 to share one GPU between "
                "two trials)",
            )
        )
    if t.stats_scope == "global" and t.devices > 1:
        problems += _global_stats_support(cells)
    return problems


def _global_stats_support(cells: list[RawCell]) -> Problems:
    """`stats_scope: global` over several devices needs layers that declare `global_stats`.

    Refused with either `parallel` (virtual mode could run any layer on the unsplit batch, but
    a suite must mean the same on DDP ranks and virtual devices).
    """
    problems: Problems = []
    seen: set[str] = set()
    for cell in cells:
        name = cell.variant.name.lower()
        if name in seen or name not in VARIANTS:
            continue
        seen.add(name)
        cls = VARIANTS.get(name).obj
        if (
            getattr(cls, "batch_dependent", False)
            and getattr(cls, "global_stats", False) is not True
        ):
            problems.append(
                (
                    cell.variant_path,
                    f"variant {name!r} does not declare global_stats = True (moments "
                    "all-reduced across devices), so it cannot run with stats_scope: global "
                    "on several devices; use `stats_scope: device` or another variant",
                )
            )
    return problems


# -- the task: its name and options, and what the suite says about its metrics --------------
def check_task(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """The task's name and options (with each backbone and variant of the matrix and the data
    set as context, for the task's own rules), and the suite keys read in the task's metrics: the
    search's metric and mode, the target and the reference rows' metrics."""
    name, options = model.task.name, model.task.options
    obj, problems = lookup(TASKS, name, ("task", "name"))
    if obj is None:
        return problems
    found: dict[tuple[Path, str], None] = {}
    pairs = {(c.backbone.name.lower(), c.variant_path): c.variant for c in cells}
    for (backbone, variant_path), variant in pairs.items() or [((None, ()), None)]:
        context: dict[str, Any] = {"backbone": backbone}  # each backbone and variant
        if variant is not None:
            context.update(variant=variant.name.lower(), variant_options=dict(variant.options))
        checked = TASKS.check_options(name, options, dataset=model.dataset.name.lower(), **context)
        for item in located(checked, ("task", "options"), {"variant": variant_path}):
            found[item] = None
    problems += list(found)
    scoring: Scoring = obj.scoring
    problems += _search_metric(model, scoring)
    problems += _target(model.target_accuracy, scoring)
    for i, ref in enumerate(model.reference):
        for metric in ref.metrics:
            if metric not in {m.name for m in scoring.on("test")}:
                problems.append(
                    (
                        ("reference", i, "metrics", metric),
                        f"task {name!r} has no test metric {metric!r}"
                        f"{closest(metric, [m.name for m in scoring.on('test')])}",
                    )
                )
    return problems


def check_baseline(model: SuiteModel, cells: list[RawCell]) -> Problems:
    """`baseline` names a variant of the matrix, by label or by registered name (the
    leaderboards compare every row with it: normbench.reports.leaderboard)."""
    if model.baseline is None:
        return []
    known = dict.fromkeys(
        n.lower() for c in cells for n in (c.variant.label, c.variant.name) if n is not None
    )
    if model.baseline.lower() in known:
        return []
    return [
        (
            ("baseline",),
            f"baseline {model.baseline!r} is not a variant of this suite"
            f"{closest(model.baseline, list(known))}; its variants: {', '.join(known)}",
        )
    ]


def task_scoring(model: SuiteModel) -> Scoring:
    """The scoring of the suite's task (validated: the name is registered)."""
    scoring: Scoring = TASKS.get(model.task.name).obj.scoring
    return scoring


def search_objective(metric: str | None, mode: str | None, scoring: Scoring) -> tuple[str, str]:
    """(metric, mode) a search optimises: as written, else the headline on the validation
    split, in the metric's direction."""
    metric = metric or f"val_{scoring.headline}"
    found = scoring.key_metric(metric)
    return metric, mode or (found.mode if found is not None else "max")


def _search_metric(model: SuiteModel, scoring: Scoring) -> Problems:
    if model.search is None:
        return []
    metric, _ = search_objective(model.search.metric, None, scoring)
    found = scoring.key_metric(metric)
    keys = ", ".join(k for k in scoring.keys() if not k.startswith("train_"))
    if found is None:
        return [
            (
                ("search", "metric"),
                f"{metric!r} is not a metric of task {model.task.name!r}"
                f"{closest(metric, list(scoring.keys()))}; its metrics: {keys}",
            )
        ]
    mode = model.search.mode
    if mode is not None and mode != found.mode:
        better = "higher" if found.higher_is_better else "lower"
        return [
            (
                ("search", "mode"),
                f"mode {mode} would optimise {metric} the wrong way: {better} is better for "
                f"{found.label}; write mode: {found.mode}, or leave mode out",
            )
        ]
    return []


def _target(target: float | None, scoring: Scoring) -> Problems:
    best = scoring.best
    if target is None or best.unit != "%" or 0 < target <= 100:
        return []
    return [
        (
            ("target_accuracy",),
            f"target_accuracy is test {best.label} in percent: it must be in (0, 100], "
            f"but got {target}",
        )
    ]
