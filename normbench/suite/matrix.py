"""The trial matrix: grid cells from the suite's lists, `exclude`, `include`, and their specs.

Semantics (the schema reference in `normbench.suite.schema` repeats them):
* The grid is the product backbones x variants x batch_sizes x seeds, in that nesting order.
* `exclude` entries are partial cells; one removes every grid cell that agrees on all its keys.
  A backbone/variant key matches the entry's label or its registry name. An exclude entry that
  matches nothing is an error (almost always a typo).
* `include` entries name a backbone and a variant (each a name or `{name, options, ...}`) and
  may name a batch_size and a seed; a missing one takes every value of `batch_sizes`/`seeds`.
  Includes are added after excludes, so an include can bring an excluded cell back.
* A cell that appears twice (same trial id) runs once, at its first position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from normbench.spec import REVISED_KINDS, Recipe, TrialSpec, declared
from normbench.suite.schema import BackboneEntry, NamedEntry, SuiteModel, VariantEntry
from normbench.suite.yamlmap import Path


@dataclass(frozen=True)
class Trial:
    """One trial to run: its spec (identity) and its human-readable grid coordinates."""

    spec: TrialSpec
    cell: dict[str, Any]

    @property
    def trial_id(self) -> str:
        return self.spec.trial_id


@dataclass(frozen=True)
class RawCell:
    """A grid cell before it becomes a spec; paths say where its parts were written."""

    backbone: BackboneEntry
    backbone_path: Path
    variant: VariantEntry
    variant_path: Path
    batch_size: int
    batch_path: Path
    seed: int


def label_of(entry: NamedEntry, ambiguous: bool) -> str:
    """The entry's label: explicit, else the name, plus options when the name is ambiguous."""
    if entry.label:
        return entry.label
    placement = getattr(entry, "placement", None)
    ws = getattr(entry, "weight_standardization", None)
    if not ambiguous or not (entry.options or placement or ws):
        return entry.name.lower()
    short = _option_labels(entry)
    parts = [f"{short.get(k, k)}={_fmt(v)}" for k, v in sorted(entry.options.items())]
    if placement:
        parts.append(placement)
    if ws:
        parts.append("ws")
    return f"{entry.name.lower()}({','.join(parts)})"


def _option_labels(entry: NamedEntry) -> dict[str, str]:
    """A variant's short option names for labels (its class attribute `option_labels`,
    e.g. GN's {"num_groups": "G"}); none for backbones or unknown names."""
    if not isinstance(entry, VariantEntry):
        return {}
    from normbench.variants_api import VARIANTS

    name = entry.name.lower()
    cls = VARIANTS.get(name).obj if name in VARIANTS else None
    labels = getattr(cls, "option_labels", None)
    return dict(labels) if isinstance(labels, dict) else {}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _key(entry: NamedEntry) -> tuple[str, str, str]:
    recipe = getattr(entry, "recipe", None)
    ws = getattr(entry, "weight_standardization", None)
    return (
        entry.name.lower(),
        repr(sorted(entry.options.items())),
        str(getattr(entry, "placement", None))
        + (repr(sorted(recipe.model_dump(exclude_none=True).items())) if recipe else "")
        + ("" if ws is None else f"ws={ws}"),
    )


def cell_backbone_options(cell: RawCell) -> dict[str, Any]:
    """The backbone's options in this cell: its entry's, with the variant entry's
    `weight_standardization` (when set) on top."""
    options = dict(cell.backbone.options)
    if cell.variant.weight_standardization is not None:
        options["weight_standardization"] = cell.variant.weight_standardization
    return options


def make_labels(entries: Sequence[NamedEntry]) -> dict[tuple[str, str, str], str]:
    """Label per distinct entry; a name used with different options gets them in its label."""
    distinct: dict[tuple[str, str, str], NamedEntry] = {}
    for e in entries:
        distinct.setdefault(_key(e), e)
    counts: dict[str, int] = {}
    for name, _, _ in distinct:
        counts[name] = counts.get(name, 0) + 1
    return {k: label_of(e, counts[k[0]] > 1) for k, e in distinct.items()}


def expand(model: SuiteModel) -> tuple[list[RawCell], list[tuple[Path, str]]]:
    """The cells of the matrix in run order, and problems (unmatched excludes, bad labels)."""
    problems: list[tuple[Path, str]] = []
    labels = _all_labels(model, problems)
    grid = [
        RawCell(b, ("backbones", i), v, ("variants", j), bs, ("batch_sizes", k), seed)
        for i, b in enumerate(model.backbones)
        for j, v in enumerate(model.variants)
        for k, bs in enumerate(model.batch_sizes)
        for seed in model.seeds
    ]
    for n, ex in enumerate(model.exclude):
        kept = [c for c in grid if not _matches(ex.model_dump(exclude_none=True), c, labels)]
        if len(kept) == len(grid):
            problems.append((("exclude", n), "this entry matches no cell of the grid"))
        grid = kept
    for n, inc in enumerate(model.include):
        sizes = (
            [(inc.batch_size, ("include", n, "batch_size"))]
            if inc.batch_size
            else [(bs, ("batch_sizes", k)) for k, bs in enumerate(model.batch_sizes)]
        )
        seeds = [inc.seed] if inc.seed is not None else model.seeds
        grid += [
            RawCell(
                inc.backbone,
                ("include", n, "backbone"),
                inc.variant,
                ("include", n, "variant"),
                bs,
                bpath,
                seed,
            )
            for bs, bpath in sizes
            for seed in seeds
        ]
    return grid, problems


def _all_labels(model: SuiteModel, problems: list[tuple[Path, str]]) -> dict[Any, str]:
    backbones = [*model.backbones, *(c.backbone for c in model.include)]
    variants = [*model.variants, *(c.variant for c in model.include)]
    labels = {("b", *k): v for k, v in make_labels(backbones).items()}
    labels.update({("v", *k): v for k, v in make_labels(variants).items()})
    for kind, entries, section in (("b", backbones, "backbones"), ("v", variants, "variants")):
        owner: dict[str, tuple[str, str, str]] = {}
        for i, e in enumerate(entries):
            lab, key = labels[(kind, *_key(e))], _key(e)
            if owner.setdefault(lab, key) != key:
                where = (
                    (section, i)
                    if i < len(getattr(model, section))
                    else ("include", i - len(getattr(model, section)))
                )
                problems.append((where, f"label {lab!r} is used by two different entries"))
    return labels


def _matches(partial: dict[str, Any], cell: RawCell, labels: dict[Any, str]) -> bool:
    for key, want in partial.items():
        if key == "backbone":
            ok = want.lower() in (
                cell.backbone.name.lower(),
                labels[("b", *_key(cell.backbone))].lower(),
            )
        elif key == "variant":
            ok = want.lower() in (
                cell.variant.name.lower(),
                labels[("v", *_key(cell.variant))].lower(),
            )
        else:
            ok = getattr(cell, key) == want
        if not ok:
            return False
    return True


def build_trials(
    model: SuiteModel,
    cells: list[RawCell],
    *,
    plugins: tuple[str, ...],
    max_epochs: int | None,
    limit_batches: int | None,
) -> list[Trial]:
    """One Trial per distinct cell, in order. Capped epochs and smoke mode are in the spec, so
    they change the trial id: a smoke or truncated run never passes for a full one."""
    from normbench.engine.revisions import stamp

    labels = _all_labels(model, [])
    base = _base_spec(model, plugins, max_epochs, limit_batches)
    t = model.train
    trials: dict[str, Trial] = {}
    for c in cells:
        recipe = cell_recipe(model, c, base.recipe)
        spec = base.replace(  # at the revisions the code declares (they enter the id)
            variant=c.variant.name.lower(),
            backbone=c.backbone.name.lower(),
            batch_size=c.batch_size,
            seed=c.seed,
            variant_options=dict(c.variant.options),
            backbone_options=cell_backbone_options(c),
            dataset_options=dict(base.dataset_options),
            recipe=recipe,
            placement=c.variant.placement or _train_placement(t, c.variant.name),
        )
        spec = stamp(spec)
        cell = {
            "dataset": spec.dataset,
            "backbone": labels[("b", *_key(c.backbone))],
            "variant": labels[("v", *_key(c.variant))],
            "backbone_name": spec.backbone,
            "variant_name": spec.variant,
            "batch_size": c.batch_size,
            "seed": c.seed,
        }
        trials.setdefault(spec.trial_id, Trial(spec, cell))
    return list(trials.values())


def cell_recipe(model: SuiteModel, c: RawCell, base: Recipe | None = None) -> Recipe:
    """The recipe of one cell: `train:`'s (or `base`), the lr scaled to the cell's batch by the
    linear scaling rule when asked, the variant entry's own weight decay on top."""
    t = model.train
    recipe = base or train_recipe(model)
    if t.lr_reference_batch:  # linear scaling rule
        lr = t.lr * c.batch_size / t.lr_reference_batch
        recipe = dataclasses.replace(recipe, lr=float(f"{lr:.10g}"))
    if c.variant.recipe is not None:  # a cell group's own weight decay
        recipe = dataclasses.replace(recipe, **c.variant.recipe.model_dump(exclude_none=True))
    return recipe


def train_recipe(model: SuiteModel) -> Recipe:
    """The `Recipe` fields of `train:`."""
    values = model.train.model_dump()
    return Recipe(**{d.name: values[d.name] for d in declared(Recipe) if d.param.suite}
                  | {"milestones": tuple(values["milestones"])})  # fmt: skip


# Suite-key fields of TrialSpec that `_base_spec` (or the cell) resolves rather than copies.
_RESOLVED = ("epochs", "limit_batches", "num_threads", "placement")


def _base_spec(
    model: SuiteModel, plugins: tuple[str, ...], max_epochs: int | None, limit: int | None
) -> TrialSpec:
    """The fields every trial of the suite shares (recipe, data set, engine settings)."""
    t = model.train
    values = t.model_dump()
    recipe = train_recipe(model)
    shared = {
        d.name: values[d.name]
        for d in declared(TrialSpec)
        if d.param.suite and d.name not in _RESOLVED
    }
    dataset_options = model.dataset.model_dump()
    return TrialSpec(
        variant="",
        backbone="",
        dataset=dataset_options.pop("name").lower(),
        epochs=min(t.epochs, max_epochs) if max_epochs else t.epochs,
        dataset_options=dataset_options,
        recipe=recipe,
        limit_batches=limit or t.limit_batches,
        plugins=plugins,
        num_threads=t.num_threads or max(1, int(model.resources.cpus)),
        placement=t.placement,
        task=model.task.name.lower(),
        task_options=dict(model.task.options),
        **shared,
    )


def apply_params(spec: TrialSpec, params: dict[str, Any]) -> TrialSpec:
    """The spec with search parameters set by dotted path: 'recipe.lr', 'variant_options.tau',
    'dataset_options.x', 'backbone_options.x' or a top-level field such as 'batch_size'.

    A searched `variant` (or `backbone`) that differs from the spec's starts from no options:
    the cell's options belong to the cell's layer; the sampled ones are set on top."""
    changes: dict[str, Any] = {}
    recipe: dict[str, Any] = {}
    for owner in ("variant", "backbone"):
        if owner in params and params[owner] != getattr(spec, owner):
            changes[f"{owner}_options"] = {}
    for path, value in params.items():
        head, _, rest = path.partition(".")
        if head == "recipe":
            recipe[rest] = tuple(value) if rest == "milestones" else value
        elif head.endswith("_options"):
            changes.setdefault(head, dict(getattr(spec, head)))[rest] = value
        else:
            changes[head] = value
    if recipe:
        changes["recipe"] = dataclasses.replace(spec.recipe, **recipe)
    return spec.replace(**changes)


def searched_spec(spec: TrialSpec, params: dict[str, Any]) -> TrialSpec:
    """The spec of a sampled trial: `apply_params`, at the revisions of the components it
    then uses (the base spec's, unless a parameter picks another layer, backbone, data set or
    task, or their options; a plugin of the suite may declare them, so it is loaded first)."""
    spec = apply_params(spec, params)
    changed = {path.partition(".")[0].removesuffix("_options") for path in params}
    if not changed & set(REVISED_KINDS):
        return spec
    from normbench.engine.build import load_plugins
    from normbench.engine.revisions import stamp

    load_plugins(spec)
    return stamp(spec)


def _train_placement(train: Any, variant: str) -> str:
    """`train.placement` when the suite sets it, else the variant's official placement."""
    from normbench.variants_api import default_placement

    if "placement" in train.model_fields_set:
        return str(train.placement)
    return default_placement(variant)
