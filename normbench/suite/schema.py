"""The suite file format, version 1, as pydantic models (strict types, unknown keys rejected).

These models check shape and types only; names, options and cross-field rules that need the
registries live in `normbench.suite.checks`. `train:` and the data set's common keys are built
from the trial declaration (`normbench.spec`): their types, bounds and defaults are written
there once, so a key the file leaves out means exactly what `normbench train` does without
its flag.

Reference (see suites/*.yaml for commented examples):

    version: 1                      # required; the only version
    name: my_suite                  # letters, digits, _ . -; names the run directory
    description: free text
    task: classification            # or {name: my_task, options: {...}}: what the trials train
                                    # and how they are scored (docs/tasks.md)
    dataset: {name: cifar100, root: null, download: false, image_size: null,
              val_fraction: 0.1, split_seed: 0, augment: {crop_padding, hflip, rotation},
              ...}                  # other keys: the data set's own options (signature-checked)
                                    # a relative root: from this file's folder (from the
                                    # current directory when given by --set)
    backbones: [resnet50, {name: resnet20, options: {width: 32}, label: r20w32}]
    variants: [bn, {name: gn, options: {num_groups: 16}, label: gn16,
                    placement: last-in-block,    # placement overrides train.placement
                    recipe: {norm_weight_decay: 0},  # and recipe train's decay keys
                    weight_standardization: true}]   # WS convs in this entry's cells
                                    # (the backbone option every backbone takes: GN+WS in
                                    # the same table as GN and BN)
    batch_sizes: [128]
    seeds: 3                        # a count means seeds 0..n-1; or a list [0, 5, 7]
    train: {epochs: 5, lr: 0.1, schedule: cosine, ...}   # epochs required; every key, with its
                                    # bounds, default and meaning, is a field of
                                    # normbench/spec.py marked `suite=True` (the same keys
                                    # are the flags of `normbench train --help`), plus
            lr_reference_batch      # linear scaling: lr is the rate at this batch size
                                    # placement unset: each variant's official placement
    resources: {cpus: 1, gpus: 0}   # per trial; fractions share a device
    max_concurrent: null            # cap on trials at once
    retries: 0                      # re-runs of a failed trial (from its checkpoint)
    plugins: [my_norm.py]           # relative to this file; loaded before names are checked
    exclude: [{backbone, variant, batch_size, seed}]  # partial cells; each removes all cells
                                    # agreeing on its keys (variant/backbone: name or label)
    include: [{backbone, variant, batch_size, seed}]  # backbone and variant required; a
                                    # missing batch_size/seed takes every listed value
    search: {metric: val_top1, mode: max, num_samples, sampler: tpe|random, seed,
             # metric default: val_<the task's headline>; mode default: its direction
             scheduler: none|asha, grace_period, reduction_factor, storage, study_name,
             space: {"variant_options.tau": {type: float|int|loguniform|categorical,
                                             low, high, step, log, choices}}}
    reference: [{dataset, backbone, variant, batch_size, top1, top5, metrics: {AP: 37.7},
                 source, note}]     # top1/top5: classification's; metrics: any task's, by name
    target_accuracy: 77.0           # the task's headline on test (its unit; classification:
                                    # top-1 %) for epochs/time-to-target in reports
    baseline: bn                    # the variant (label or name) every row is compared with:
                                    # Δ, paired tests, Holm, the target; default bn

The matrix is backbones x variants x batch_sizes x seeds, minus `exclude`, plus `include`
(see `normbench.suite.matrix`). A search runs once per cell of that matrix.

The file is YAML 1.2 plain data (`normbench.suite.yamlmap`: `1e-3` is a float, `yes` a string,
no tags beyond !!str/int/float/bool/null/seq/map). Sizes are bounded before anything is
allocated: epochs <= 10,000, batch sizes <= 65,536, at most 1,000 seeds each < 2^32, at most
10,000 cells, num_samples <= 10,000, image_size <= 4,096, retries <= 100 (the `MAX_*`
constants below and in `normbench.spec`); infinities and NaN are refused everywhere.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from normbench.spec import (
    MAX_BATCH,
    MAX_SEED,
    DatasetOptions,
    Declared,
    Placement,
    declared,
    flat_fields,
    input_problems,
)

# Sizes of the suite itself (the fields' own bounds are in normbench.spec).
MAX_SEEDS = 1_000
MAX_TRIALS = 10_000  # cells of the matrix (a search runs num_samples trials per cell)
MAX_SAMPLES = 10_000
MAX_RETRIES = 100


class Strict(BaseModel):
    # allow_inf_nan=False: `lr: .inf` passes `gt=0`, and `.nan` compares false to everything
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class NamedEntry(Strict):
    """A registry name with options; a bare string `gn` is short for `{name: gn}`."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    what: ClassVar[str] = "a name"  # what a bare entry names, for the message below

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if not isinstance(value, dict | NamedEntry):
            raise ValueError(
                f"expected {cls.what} or a mapping {{name: ..., options: {{...}}}}, "
                f"but got {value!r}"
            )
        return value


class BackboneEntry(NamedEntry):
    what: ClassVar[str] = "a backbone name (e.g. resnet20)"


def pydantic_field(d: Declared, *, optional: bool = False) -> tuple[Any, Any]:
    """A declared field as a pydantic (type, Field): its bounds, default and help.
    `optional`: None (unset) is allowed and is the default."""
    tp, p = d.type, d.param
    bounds = {k: getattr(p, k) for k in ("ge", "gt", "le", "lt") if getattr(p, k) is not None}
    if typing.get_origin(tp) is tuple:  # YAML gives lists; the bounds are each item's
        tp, bounds = list[Annotated[typing.get_args(tp)[0], Field(**bounds)]], {}  # type: ignore[misc]
    if optional:
        return tp | None, Field(default=None, description=p.help, **bounds)
    if d.required:
        return tp, Field(description=p.help, **bounds)
    if isinstance(d.default, tuple | list | dict):
        empty = type(d.default) if not isinstance(d.default, tuple) else list
        return tp, Field(default_factory=empty, description=p.help, **bounds)
    return tp, Field(default=d.default, description=p.help, **bounds)


class _RecipeOverrideBase(Strict):
    """The recipe keys a variant entry may set for its own cells (a cell group's own weight
    decay, e.g. "four things" #3: `variant_override=True` in normbench.spec); unset keys keep
    `train:`."""


class _DatasetBase(BaseModel):
    """The data set; keys beyond these are the factory's own options (checked by signature)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    name: str


class _TrainBase(Strict):
    """Recipe and engine settings shared by every trial of the suite: the fields of
    `normbench.spec` marked `suite=True`, plus the suite's own `lr_reference_batch`."""

    # Linear scaling rule (Goyal et al. 2017): when set, `lr` is the rate at this batch size and
    # a trial at batch B trains at lr * B / lr_reference_batch. None: `lr` at every batch size.
    lr_reference_batch: int | None = Field(default=None, gt=0, le=MAX_BATCH)

    @model_validator(mode="after")
    def _across_fields(self) -> _TrainBase:
        problems = input_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self


if TYPE_CHECKING:  # the generated models' fields are normbench.spec's; mypy sees Any

    class RecipeOverride(_RecipeOverrideBase):
        def __getattr__(self, name: str) -> Any: ...

    class DatasetModel(_DatasetBase):
        def __getattr__(self, name: str) -> Any: ...

    class TrainModel(_TrainBase):
        def __getattr__(self, name: str) -> Any: ...

else:
    RecipeOverride = create_model(
        "RecipeOverride",
        __base__=_RecipeOverrideBase,
        **{
            d.name: pydantic_field(d, optional=True)
            for d in flat_fields()
            if d.param.variant_override
        },
    )
    DatasetModel = create_model(
        "DatasetModel",
        __base__=_DatasetBase,
        **{d.name: pydantic_field(d) for d in declared(DatasetOptions)},
    )
    TrainModel = create_model(
        "TrainModel",
        __base__=_TrainBase,
        **{d.name: pydantic_field(d) for d in flat_fields() if d.param.suite},
    )


class VariantEntry(NamedEntry):
    what: ClassVar[str] = "a layer name (e.g. gn)"
    placement: Placement | None = None  # overrides train.placement for this variant
    # overrides train's weight-decay keys for this variant's cells (e.g. "four things" #3)
    recipe: RecipeOverride | None = None
    # the backbone's `weight_standardization` for this variant's cells (GN+WS): a backbone
    # option every backbone takes, set here so the cells share their backbone's table
    weight_standardization: bool | None = None


class ResourcesModel(Strict):
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)


class IncludeCell(Strict):
    """An extra cell: names a backbone and a variant; missing axes take every listed value."""

    backbone: BackboneEntry
    variant: VariantEntry
    batch_size: int | None = Field(default=None, gt=0, le=MAX_BATCH)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class ExcludeCell(Strict):
    """A partial cell: removes every cell that agrees on all the keys it gives."""

    backbone: str | None = None
    variant: str | None = None
    batch_size: int | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ExcludeCell:
        if not self.model_dump(exclude_none=True):
            raise ValueError(
                "an exclude entry must give at least one of backbone, variant, batch_size, seed"
            )
        return self


class ParamModel(Strict):
    """One search dimension, in Optuna's terms."""

    type: Literal["float", "int", "loguniform", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamModel:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError(
                    "a categorical parameter needs a non-empty `choices` list and no low/high"
                )
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high` (no choices)")
        if not self.low < self.high:
            raise ValueError(f"`low < high` must hold, but got (low={self.low}, high={self.high})")
        if (self.log or self.type == "loguniform") and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, but got low={self.low}")
        if self.type == "int" and not (
            float(self.low).is_integer() and float(self.high).is_integer()
        ):
            raise ValueError(f"an int parameter needs integer bounds, got {self.low}..{self.high}")
        return self


class SearchModel(Strict):
    # None: the task's headline on the validation split, and its direction (the suite checks
    # resolve both from the task's scoring, normbench.contract.Scoring)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    num_samples: int = Field(gt=0, le=MAX_SAMPLES)
    space: dict[str, ParamModel] = Field(min_length=1)
    sampler: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, gt=0)
    reduction_factor: int = Field(default=4, ge=2)
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0


class ReferenceRow(Strict):
    """A published number a report shows beside ours (never measured by this project)."""

    dataset: str
    backbone: str
    variant: str
    batch_size: int | None = None
    top1: float | None = Field(default=None, ge=0, le=100)
    top5: float | None = Field(default=None, ge=0, le=100)
    # a task's published numbers by metric name (e.g. {AP: 37.7, AP50: 58.6}); classification's
    # are top1 and top5 above
    metrics: dict[str, float] = Field(default_factory=dict)
    source: str
    note: str | None = None


class SuiteModel(Strict):
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    task: NamedEntry = Field(default_factory=lambda: NamedEntry(name="classification"))
    dataset: DatasetModel
    backbones: list[BackboneEntry] = Field(min_length=1, max_length=MAX_TRIALS)
    variants: list[VariantEntry] = Field(min_length=1, max_length=MAX_TRIALS)
    batch_sizes: list[int] = Field(min_length=1, max_length=MAX_TRIALS)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    train: TrainModel
    resources: ResourcesModel = Field(default_factory=ResourcesModel)
    max_concurrent: int | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    plugins: list[str] = Field(default_factory=list)
    include: list[IncludeCell] = Field(default_factory=list, max_length=MAX_TRIALS)
    exclude: list[ExcludeCell] = Field(default_factory=list)
    search: SearchModel | None = None
    reference: list[ReferenceRow] = Field(default_factory=list)
    # the task's headline metric on test, in its unit (a percent: in (0, 100]; checked with the
    # task, normbench.suite.checks.check_task)
    target_accuracy: float | None = None
    # the variant label (or name) the leaderboards compare every row with; None: "bn"
    # (checked against the matrix, normbench.suite.checks.check_baseline)
    baseline: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _matrix_size(self) -> SuiteModel:
        """The grid is a product of lists: bound it before `expand` builds it."""
        n = len(self.backbones) * len(self.variants) * len(self.batch_sizes) * len(self.seeds)
        n += len(self.include) * len(self.batch_sizes) * len(self.seeds)
        if n > MAX_TRIALS:
            raise ValueError(
                f"the trial matrix has {n} cells (backbones x variants x batch_sizes x seeds, "
                f"plus includes); the limit is {MAX_TRIALS}"
            )
        return self

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        """`seeds: 3` means seeds 0, 1, 2 (bounded before the list is made)."""
        if isinstance(value, float) and not isinstance(value, bool):
            raise ValueError(f"a seed count must be an integer, but got {value:g}")
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_SEEDS:
                raise ValueError(
                    f"a seed count must be between 1 and {MAX_SEEDS} (the limit), but got {value}"
                )
            return list(range(value))
        return value

    @field_validator("batch_sizes", "seeds")
    @classmethod
    def _positive_unique(cls, value: list[int], info: Any) -> list[int]:
        lowest, highest = (1, MAX_BATCH) if info.field_name == "batch_sizes" else (0, MAX_SEED)
        bad = [v for v in value if not lowest <= v <= highest]
        if bad:
            raise ValueError(
                f"every value must be between {lowest} and {highest} (the limit), but got {bad}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"values must be unique, but got {value}")
        return value
