"""The trial declaration: every field of a trial, once, with its role, bounds, default and help.

`TrialSpec` (with its `Recipe`) is everything one trial needs, as a frozen, JSON-serialisable
value; its id is a hash of the fields that change results. Each field is declared once below
with `param(...)`, which says:

* its **role**:
  - `identity`: changes what the trial computes; part of the trial id (`trial_id` hashes
    `identity(spec)`), of a run directory's compatibility check and of report merging.
    `epochs` and `limit_batches` are identity too, and also its *length* (`LENGTH_FIELDS`): a
    truncated run is a different trial of the same *family*.
  - `environment`: where and how fast it runs (device, CPU threads, how data-parallel devices
    are run). Not in the id, so a suite moved to another machine keeps its trials; but it can
    change numbers (threads change float reduction order), so every epoch record carries it and
    a trial never resumes from a checkpoint written in a different environment.
  - `location`: where files are and how they are read (the data set's `root`, the loader's
    workers); never changes a number.
  - `bookkeeping`: how often to checkpoint; never changes a number.
  A mapping field may give its keys their own roles (`keys=`; the data set's `root`).
* its **bounds** (`ge`, `gt`, `le`, `lt`; for a tuple, of each item) and its type (the
  annotation: `Literal[...]` lists the choices); `TrialSpec.validate` checks them.
* its **default** (none: required) and one line of **help**.
* where a user sets it: `suite=True` makes it a key of a suite's `train:` section
  (`normbench.suite.schema` builds the pydantic model from these fields); every field that
  holds a value a command line can give is a `normbench train` flag (`normbench.cli_train`
  builds them, `flag=` renames one). `variant_override=True`: a suite's variant entry may set it
  for its own cells. `axis="variant"`: it tells the variants of one leaderboard apart.

Everything else derives from these declarations: the trial id and family, the environment a
record carries, the searchable paths, report merging, the suite schema and the command line.
The bounds of the suite (`MAX_*`) live here because they are bounds of these fields.

**Adding a field.** A field whose value changes results goes in with `new=True`: it is left out
of the trial id while it holds its default, so every stored trial keeps its id and resumes
(`tests/test_trial_ids.py` pins the committed quickstart's 33 ids and one id per shipped suite,
and fails when a field changes them). An environment, location or bookkeeping field never
enters the id. The fields of other tasks than classification went in that way: `task`
with the default "classification" and `task_options`, both `new=True`, so every
classification id stays.

**Changing what a component computes** (not a field): the layer, backbone, data set or task
declares a
new computation revision; `revisions` (derived: set from the declarations, no suite key or
flag) puts the revisions that are not 1 into the id, so only the trials the change touches
get new ids (docs/reproducibility.md#computation-revisions).

This module imports neither torch nor pydantic: the results store and the reports read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from normbench.declare import (
    BOOKKEEPING,
    ENVIRONMENT,
    IDENTITY,
    LOCATION,
    ROLES,
    Declared,
    Param,
    declared,
    jsonable,
    param,
    rule_problems,
    value_rule,
)
from normbench.errors import UserError

__all__ = [
    "BOOKKEEPING", "ENVIRONMENT", "IDENTITY", "LOCATION", "ROLES", "DatasetOptions", "Declared",
    "LoaderOptions", "Param", "Recipe", "SpecError", "TrialSpec", "declared", "family",
    "family_hash", "fields_on", "fields_with", "flat_fields", "identity", "input_problems",
    "value_rule",
]  # fmt: skip


# Sizes a suite (or a command line) may ask for, checked before anything is allocated: a typo
# such as `seeds: 100000000000` must be refused, not turned into a list of 10^11 seeds.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536  # the largest batch in the large-batch literature (Goyal et al. 2017: 8k)
MAX_SEED = 2**32 - 1  # NumPy's seed range
MAX_IMAGE_SIZE = 4_096
MAX_THREADS = 4_096

# Identity fields that only say how long a trial runs (a truncated run is the same family).
LENGTH_FIELDS = ("epochs", "limit_batches")
# The identity field that says which revision of the code computes a trial (`TrialSpec`).
REVISION_FIELD = "revisions"
# The fields naming a registered component whose code computes the trial: each declares its
# revision (normbench.engine.revisions).
REVISED_KINDS = ("variant", "backbone", "dataset", "task")


class SpecError(UserError, ValueError):
    """A trial spec whose values no trial can run with."""


def _increasing(ms: Any) -> bool:
    return list(ms) == sorted(set(ms))


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule. Every paper recipe of the built-in suites fits here exactly;
    `normbench.engine.recipe` says what each weight-decay switch covers."""

    lr: float = param(0.1, gt=0, suite=True, help="Peak learning rate.")
    optimizer: Literal["sgd", "adam"] = param(
        "sgd",
        suite=True,
        new=True,
        help="sgd: SGD with momentum; adam: torch's Adam (betas 0.9, 0.999; weight decay as L2 "
        "in the gradient), AdaIN's and SaBN's style transfer optimiser.",
    )
    momentum: float = param(0.9, ge=0, lt=1, suite=True, help="SGD momentum.")
    nesterov: bool = param(False, suite=True, help="Nesterov momentum.")
    weight_decay: float = param(
        5e-4,
        ge=0,
        suite=True,
        variant_override=True,
        help="L2 on every parameter the two switches below leave alone.",
    )
    norm_weight_decay: float | None = param(
        None,
        ge=0,
        suite=True,
        variant_override=True,
        help="L2 on every parameter of a normalization layer (None: weight_decay).",
    )
    bias_weight_decay: float | None = param(
        None,
        ge=0,
        suite=True,
        variant_override=True,
        help="L2 on the biases of the other layers (None: weight_decay).",
    )
    norm_decay_toward: Literal["zero", "identity"] = param(
        "zero",
        suite=True,
        variant_override=True,
        help="Where L2 pulls each norm layer's decayed-toward-identity parameters: 0, or the "
        "identity the layer names (gamma 1, a delta kernel).",
    )
    no_decay_norm_and_bias: bool = param(
        False,
        suite=True,
        variant_override=True,
        help="Alias: norm_weight_decay 0 and bias_weight_decay 0.",
    )
    warmup_epochs: float = param(
        0.0, ge=0, suite=True, help="Linear warm-up per batch, from lr/warmup_batches to lr."
    )
    schedule: Literal["multistep", "cosine", "constant", "inverse_time"] = param(
        "multistep",
        suite=True,
        help="Learning-rate schedule after warm-up (inverse_time: lr / (1 + lr_decay * t) "
        "at batch t, AdaIN's).",
    )
    lr_decay: float = param(
        0.0, ge=0, suite=True, new=True, help="The inverse_time schedule's decay per batch."
    )
    milestones: tuple[int, ...] = param(
        (),
        ge=1,
        suite=True,
        flag="--milestone",
        check=("increasing", _increasing),
        help="Epochs at which multistep decays by gamma.",
    )
    gamma: float = param(0.1, gt=0, suite=True, help="Multistep decay factor.")
    label_smoothing: float = param(
        0.0, ge=0, lt=1, suite=True, help="Label smoothing of the cross-entropy."
    )
    grad_clip: float | None = param(
        None, gt=0, suite=True, help="Clip the gradient norm to this (None: no clipping)."
    )

    def __post_init__(self) -> None:
        _raise(rule_problems(self, "recipe."))

    def decays(self) -> tuple[float, float, float]:
        """(other, norm, bias) weight decay after the alias and the None defaults."""
        wd = self.weight_decay
        if self.no_decay_norm_and_bias:
            return wd, 0.0, 0.0
        norm = wd if self.norm_weight_decay is None else self.norm_weight_decay
        bias = wd if self.bias_weight_decay is None else self.bias_weight_decay
        return wd, norm, bias

    @property
    def decay_toward(self) -> str:
        """Where norm parameters decay: "identity" when asked and their decay is not 0."""
        return self.norm_decay_toward if self.decays()[1] != 0 else "zero"


@dataclass(frozen=True)
class DatasetOptions:
    """The options every data set takes (the keywords of `contract.DatasetFactory`), as keys of
    `TrialSpec.dataset_options` and of a suite's `dataset:`; a data set's own options (e.g.
    synthetic's `n_train`) and the loader's (`augment`, `num_workers`) come beside them."""

    root: str | None = param(
        None, role=LOCATION, help="Folder of the data set's files (None: its default)."
    )
    download: bool = param(
        False, role=LOCATION, help="Download the files when missing (needs the internet)."
    )
    image_size: int | None = param(
        None, ge=1, le=MAX_IMAGE_SIZE, help="Side length in pixels (None: the data set's own)."
    )
    val_fraction: float = param(
        0.1, ge=0, lt=1, help="Share of the training images held out for validation."
    )
    split_seed: int = param(0, help="Seed of the train/validation split.")


@dataclass(frozen=True)
class LoaderOptions:
    """The options every data set's loaders take (`normbench.data.build`), as keys of
    `TrialSpec.dataset_options` beside `DatasetOptions`; checked by the data sets' option
    rules (`normbench.data.registry`)."""

    augment: dict[str, Any] | bool | None = param(
        None, help="{crop_padding, hflip, rotation} over the data set's own; false: none."
    )
    # how the files are read, not what they hold (each sample's augmentation is seeded per
    # sample): more workers must not turn finished trials into new ones
    num_workers: int | None = param(
        None,
        role=LOCATION,
        ge=0,
        help="DataLoader worker processes of folder data sets (None: from the CPUs granted).",
    )


@dataclass(frozen=True)
class InitFrom:
    """The keys of `TrialSpec.init_from`: the weights a trial's backbone starts from, those
    of a finished classification trial of another normbench run (`normbench.engine.init_from`).
    The run's location is not part of the trial id; the cell that picks its trial is."""

    run: str = param(role=LOCATION, help="The run directory (absolute once a suite loads it).")
    cell: dict[str, Any] = param(
        factory=dict,
        help="Spec fields that pick the trial (seed, batch_size, dataset, ...); the variant, "
        "its options, the backbone, its options and the placement are this trial's unless given.",
    )


Placement = Literal["everywhere", "last-in-block", "except-shortcut"]


@dataclass(frozen=True)
class TrialSpec:
    """One trial: what it computes (identity), where it runs (environment), where its files
    are (location) and how often it saves (bookkeeping). Validates itself on construction."""

    variant: str = param(axis="variant", help="Normalization variant (see `normbench variants`).")
    backbone: str = param(help="Backbone, e.g. resnet20, resnet18.")
    dataset: str = param(help="Data set, e.g. digits, synthetic, cifar10.")
    epochs: int = param(ge=1, le=MAX_EPOCHS, suite=True, help="Training epochs.")
    batch_size: int = param(128, ge=1, le=MAX_BATCH, help="Training batch size (per device).")
    seed: int = param(0, ge=0, le=MAX_SEED, help="Seed for weights, data order and augmentation.")
    variant_options: dict[str, Any] = param(
        factory=dict, axis="variant", flag="--option", help="Variant option key=value."
    )
    backbone_options: dict[str, Any] = param(
        factory=dict, flag="--backbone-option", help="Backbone option key=value."
    )
    dataset_options: dict[str, Any] = param(
        factory=dict,
        flag="--dataset-option",
        keys=(DatasetOptions, LoaderOptions),
        help="Data-set option key=value: root, image_size, val_fraction, augment, ...",
    )
    recipe: Recipe = param(factory=Recipe, help="Optimiser and schedule.")
    placement: Placement = param(
        "everywhere",
        suite=True,
        axis="variant",
        help="Where the variant goes: everywhere, last-in-block (BNET's official placement) or "
        "except-shortcut (IEBN's); a suite that sets none takes each variant's own.",
    )
    sabn_index: Literal["zeros", "augmented"] = param(
        "zeros", suite=True, help="SaBN's branch index: all zeros, or the augmentation applied."
    )
    device: str = param(
        "auto",
        role=ENVIRONMENT,
        suite=True,
        help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1' ...",
    )
    amp: bool | None = param(None, suite=True, help="bf16 autocast (None: on CUDA only).")
    channels_last: bool | None = param(
        None, suite=True, help="Channels-last memory format (None: on CUDA only)."
    )
    compile: bool = param(False, suite=True, help="torch.compile the model.")
    deterministic: bool = param(
        False,
        role=ENVIRONMENT,
        suite=True,
        help="Deterministic algorithms, cuDNN without autotuning, a fixed cuBLAS workspace "
        "(normbench.engine.device.set_determinism): repeatable GPU runs at a speed cost.",
    )
    limit_batches: int | None = param(
        None, ge=1, suite=True, help="Smoke mode: at most this many training batches per epoch."
    )
    eval_batch_size: int = param(
        512, ge=1, le=MAX_BATCH, suite=True, help="Batch size of evaluation."
    )
    probe: bool = param(
        True, suite=True, help="Per-layer feature condensation on a fixed probe batch each epoch."
    )
    probe_batch_size: int = param(
        32, ge=2, le=MAX_BATCH, suite=True, help="Images in the probe batch."
    )
    plugins: tuple[str, ...] = param(
        (),
        by_file_name=True,
        flag="--plugin",
        help="Plugin file to load (identity by file name, location by the rest of the path).",
    )
    num_threads: int | None = param(
        None,
        role=ENVIRONMENT,
        ge=1,
        le=MAX_THREADS,
        suite=True,
        help="CPU threads (None: the CPUs this process may use; a suite: resources.cpus).",
    )
    checkpoint_every: int = param(
        1, role=BOOKKEEPING, ge=1, suite=True, help="Save a checkpoint every this many epochs."
    )
    # Data parallelism (normbench.engine.distributed): `batch_size` is per device, so one
    # optimiser step sees devices * batch_size images. "ddp" and "virtual" compute the same.
    devices: int = param(
        1, ge=1, suite=True, new=True, help="Data-parallel devices; batch_size is per device."
    )
    parallel: Literal["ddp", "virtual"] = param(
        "ddp",
        role=ENVIRONMENT,
        suite=True,
        help="ddp: one DDP rank per device (Ray Train workers); virtual: all devices in one "
        "process, statistics per device slice.",
    )
    stats_scope: Literal["device", "global"] = param(
        "device",
        suite=True,
        new=True,
        help="device: each device normalises its own slice; global: moments over all devices.",
    )
    # What the trial trains and how it is scored (normbench.tasks; docs/tasks.md): a registered
    # task and its options. New fields: every classification trial keeps its id.
    task: str = param(
        "classification",
        new=True,
        help="Task: what is trained and how it is scored (see `normbench tasks`).",
    )
    task_options: dict[str, Any] = param(
        factory=dict, new=True, flag="--task-option", help="Task option key=value."
    )
    # A backbone that starts from another run's classification weights (a detector from a
    # classifier, UBN Tables 5-6): {run: DIR, cell: {seed: 0, ...}}; normbench.engine.init_from.
    init_from: dict[str, Any] | None = param(
        None,
        new=True,
        suite=True,
        keys=(InitFrom,),
        help="Start the backbone from a finished classification trial of another run: "
        "{run: DIR, cell: {seed: 0}} (normbench train: --init-from run=DIR "
        "--init-from 'cell={seed: 0}').",
    )

    # What the code computes changes between normbench versions: the revisions of the layer,
    # backbone, data set and task the trial uses that are not 1 (normbench.contract.Revision), set
    # from their declarations (normbench.engine.revisions.stamp) wherever a spec is made from a
    # suite or the command line. A new field: every trial at revision 1 keeps its id.
    revisions: dict[str, int] = param(
        factory=dict,
        new=True,
        derived=True,
        help="Computation revisions not at 1 of the trial's variant, backbone, data set and task "
        "({backbone: 2}; declared by each component, docs/reproducibility.md).",
    )

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        d = dict(d)
        recipe = d.pop("recipe", {}) or {}
        if "milestones" in recipe:
            recipe = {**recipe, "milestones": tuple(recipe["milestones"])}
        d["plugins"] = tuple(d.get("plugins", ()))
        return cls(recipe=Recipe(**recipe), **d)

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TrialSpec:
        """Raise SpecError naming every value that breaks a rule; return self when valid.

        Names (variant, backbone, data set, options) are checked by the registries when the
        trial is built; this checks the declared types and bounds."""
        _raise(rule_problems(self, ""))
        return self

    @property
    def trial_id(self) -> str:
        blob = json.dumps(identity(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- the declarations, read back ----------------------------------------------------------


def flat_fields() -> Iterator[Declared]:
    """Every field a user sets, the recipe's flattened in (as a suite's `train:` has them)."""
    for d in declared(TrialSpec):
        if d.param.derived:
            continue
        if d.name == "recipe":
            yield from declared(Recipe)
        else:
            yield d


def fields_with(*roles: str) -> tuple[str, ...]:
    """Names of the TrialSpec fields whose role is one of `roles`, in declaration order."""
    return tuple(d.name for d in declared(TrialSpec) if d.param.role in roles)


def fields_on(axis: str) -> tuple[str, ...]:
    """Names of the TrialSpec fields on a cell axis ("variant": what tells the variants of one
    leaderboard apart)."""
    return tuple(d.name for d in declared(TrialSpec) if d.param.axis == axis)


def identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The identity part of a spec dict (what `trial_id` hashes): environment, location and
    bookkeeping fields and keys dropped, plugin paths reduced to file names, and `new` fields
    dropped at their defaults. Keys that are no declared field are kept as they are."""
    return _identity(TrialSpec, spec)


def _identity(cls: type, spec: Mapping[str, Any]) -> dict[str, Any]:
    fields = {d.name: d for d in declared(cls)}
    out: dict[str, Any] = {}
    for key, value in spec.items():
        d = fields.get(key)
        if d is None:
            out[key] = value
            continue
        p = d.param
        if p.role != IDENTITY or (p.new and value == jsonable(d.default)):
            continue
        if dataclasses.is_dataclass(d.type) and isinstance(value, Mapping):
            value = _identity(d.type, value)  # type: ignore[arg-type]
        elif p.keys and isinstance(value, Mapping):
            roles = {k.name: k.param.role for cls in p.keys for k in declared(cls)}
            value = {k: v for k, v in value.items() if roles.get(k, IDENTITY) == IDENTITY}
        elif p.by_file_name and isinstance(value, list | tuple):
            value = [Path(v).name for v in value]
        out[key] = value
    return out


def family(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The identity without its length (`LENGTH_FIELDS`) and its computation revisions
    (`REVISION_FIELD`): smoke, truncated and full runs of one experiment, and its runs before
    and after a revision of the code, share a family."""
    skip = (*LENGTH_FIELDS, REVISION_FIELD)
    return {k: v for k, v in identity(spec).items() if k not in skip}


def unrevised_id(spec: Mapping[str, Any]) -> str:
    """The trial id `spec` has at revision 1 of every component: what a trial and its runs
    under other revisions of the code share (`normbench.results.revisions`)."""
    return TrialSpec.from_dict({**spec, REVISION_FIELD: {}}).trial_id


def family_hash(spec: Mapping[str, Any]) -> str:
    """A short hash of `family(spec)` (the run directory's compatibility check)."""
    blob = json.dumps(family(spec), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _raise(problems: list[str]) -> None:
    if problems:
        raise SpecError("trial spec: " + "; ".join(problems))


def environment_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The environment fields of a spec dict."""
    return {k: spec.get(k) for k in fields_with(ENVIRONMENT)}


def environment_conflict(spec: TrialSpec, recorded: dict[str, Any] | None) -> str | None:
    """How `spec`'s environment fields disagree with an epoch record's `environment` (the one
    a stored, unfinished trial ran in), or None. Checked by the driver before any trial
    starts; the worker checks the full environment against the checkpoint."""
    if not recorded:
        return None
    diffs = []
    if spec.num_threads is not None and recorded.get("num_threads") not in (None, spec.num_threads):
        diffs.append(f"num_threads={recorded['num_threads']} then, {spec.num_threads} now")
    was = recorded.get("deterministic_algorithms")
    if was is not None and was != spec.deterministic:
        diffs.append(f"deterministic={was} then, {spec.deterministic} now")
    wanted = spec.device.partition(":")[0]
    if spec.device != "auto" and recorded.get("device_type") not in (None, wanted):
        diffs.append(f"device {recorded['device_type']!r} then, {wanted!r} now")
    return ", ".join(diffs) or None


# -- rules that cross fields, for what a user writes (a suite's `train:`, `normbench train`) ---


def input_problems(values: Mapping[str, Any]) -> list[str]:
    """Rules across the flat user-set fields (`flat_fields`) of one trial or suite, as written:
    the decay alias against explicit decays, milestones against the schedule and the epochs.
    (A spec itself may be shorter than its milestones: `--max-epochs` truncates a run.)"""
    problems = []
    given = {
        k: v
        for k in ("norm_weight_decay", "bias_weight_decay")
        if (v := values.get(k)) not in (None, 0.0)
    }
    if values.get("no_decay_norm_and_bias") and given:
        problems.append(
            "no_decay_norm_and_bias: true means norm_weight_decay: 0 and bias_weight_decay: "
            f"0, but {', '.join(f'{k}: {v}' for k, v in given.items())} is also set; "
            "drop one of the two"
        )
    ms, schedule = list(values.get("milestones") or ()), values.get("schedule", "multistep")
    if ms and schedule != "multistep":
        problems.append(f"milestones {ms} only apply to schedule multistep, not {schedule!r}")
    if values.get("lr_decay") and schedule != "inverse_time":
        problems.append(
            f"lr_decay {values['lr_decay']} only applies to schedule inverse_time, not {schedule!r}"
        )
    for d in flat_fields():  # rules beyond types and bounds, e.g. increasing milestones
        v = values.get(d.name)
        if d.param.check is not None and v is not None and not d.param.check[1](v):
            problems.append(f"{d.name} must be {value_rule(d.type, d.param)}, but got {v}")
    epochs = values.get("epochs")
    if ms and isinstance(epochs, int) and ms[-1] >= epochs:
        problems.append(
            f"milestone {ms[-1]} is not before the last epoch {epochs} "
            "(to shorten a run keep the recipe and use --max-epochs)"
        )
    return problems
