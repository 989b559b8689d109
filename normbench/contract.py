"""The contracts between normbench's stages, in one module (as AlgoPerf keeps its `spec.py`).

What an extension provides and what flows between the stages:

* `VariantClass`: a normalization layer class ([docs/variants.md#contract](../docs/variants.md)).
* `BackboneFactory`: builds a classifier with a given norm layer.
* `DatasetFactory`: loads a data set's splits; `DatasetFacts` are the numbers `--dry-run`
  needs without loading anything, declared where the data set is defined.
* `TaskClass`: what a trial trains and how it is scored ([docs/tasks.md](../docs/tasks.md)):
  the model built from a backbone and the variant's norm layer, a training step's loss, the
  evaluation; its `Scoring` (the `Metric`s with unit and direction, and the headline) is plain
  data here, so the reports and the search read it without torch. `CLASSIFICATION` is the
  scoring of the built-in task, and of every record that names no other.
* `Revision`: a change to what a layer, backbone, data set or task computes, declared on it
  (`revision`), so a rerun never reuses results of the code before the change.
* `EpochRecord`: what `run_trial` yields once per epoch, what the store writes to
  `epochs.jsonl`, and what the live view, the runner and the reports read. Its keys exist
  here only; a reader that types its record as `EpochRecord` has every key checked by mypy.

This module imports neither torch nor pandas (the reports read records without torch); the
torch types appear under `TYPE_CHECKING` only. (No `from __future__ import annotations`
here: `TypedDict` needs evaluated annotations to tell required keys from `NotRequired` ones.)
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, NotRequired, Protocol, TypedDict, TypeVar

if TYPE_CHECKING:
    from torch import nn

NormLayer = Callable[[int], "nn.Module"]


class VariantClass(Protocol):
    """A normalization layer class: `Variant(num_features, *, options..., eps=1e-5,
    momentum=0.1, device=None, dtype=None)` (docs/variants.md#contract). Optional module hooks
    the loop calls when present: `end_epoch() -> None` after each training epoch, and
    `diagnostics() -> dict[str, float]` for the epoch record. Optional class hook the registry
    calls at validation: `check_options(options, *, batch_size=None, widths=None) ->
    dict[str, str]` ({option: message}; normbench/options.py)."""

    paper: str  # "Title (venue year), arXiv id"
    batch_dependent: bool  # statistics mix samples of a batch (BN family) or not (IN, GN)

    def __call__(self, num_features: int, /, **options: Any) -> "nn.Module": ...


class BackboneFactory(Protocol):
    """`fn(num_classes, norm_layer, *, in_channels=3, last_norm_layer=None, **options)`.

    `norm_layer(C)` goes wherever the original architecture has a BatchNorm (stem, blocks,
    shortcuts); `last_norm_layer`, when given, replaces it for the last norm of each residual
    block, and a backbone without blocks raises ValueError for it."""

    def __call__(
        self,
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        **options: Any,
    ) -> "nn.Module": ...


class DatasetFactory(Protocol):
    """`fn(*, root, download, image_size, val_fraction, split_seed, **options) -> DataSplits`
    (normbench/data/base.py, which holds torch tensors: typed Any here, so this module stays
    below the data package), decorated with its `DatasetFacts`."""

    def __call__(
        self,
        *,
        root: str | None,
        download: bool,
        image_size: int | None,
        val_fraction: float,
        split_seed: int,
        **options: Any,
    ) -> Any: ...


_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DatasetFacts:
    """What a data set is, known without loading it; used by `normbench run --dry-run`.

    Used as a decorator on the factory: `@DatasetFacts(train_images=1437, channels=1,
    image_size=16)`. `train_images` counts the training split before the validation carve;
    `image_size` is the default side length in pixels; `count_option` names a factory option
    that sets the training image count instead (the synthetic set's `n_train`); `test_images`
    and `test_count_option` do the same for the test split, which every epoch evaluates."""

    train_images: int
    channels: int
    image_size: int
    count_option: str | None = None
    test_images: int | None = None  # the test split (None: unknown; no evaluation counted)
    test_count_option: str | None = None  # the factory option that sets it instead (`n_test`)

    def __call__(self, factory: _F) -> _F:
        factory.facts = self  # type: ignore[attr-defined]
        return factory

    def channels_with(self, options: Mapping[str, Any]) -> int:
        """The image channels of the data set built with `options` (its `channels` option,
        when it has one and it is given, else the declared count)."""
        return int(options.get("channels") or self.channels)


def dataset_facts(factory: Any) -> DatasetFacts | None:
    """The facts a data-set factory declares, or None."""
    facts = getattr(factory, "facts", None)
    return facts if isinstance(facts, DatasetFacts) else None


@dataclass(frozen=True)
class TaskCost:
    """What a task's work costs per image, in forward passes of the trial's backbone (its
    conv and linear multiply-adds at the data's image size), for `normbench run --dry-run`.

    `train`: per training image and epoch (classification: 3, forward + backward ~ 3
    forwards); `evaluate`: per image of each evaluated split, val and test, every epoch
    (classification: 1). `what` says in words what the numbers count. A task returns one
    from its optional classmethod `cost(options)`, or a string saying why it cannot."""

    train: float
    evaluate: float
    what: str = ""


# -- computation revisions (docs/reproducibility.md#computation-revisions) -----------------
@dataclass(frozen=True)
class Revision:
    """One change to what a component computes: a layer (its class), a backbone or data set
    (its factory) or a task (its class) declares its changes as its `revision` attribute,
    which the registry reads for built-ins and plugins alike (`revisions_of`).

    `number` (>= 2; a component without a declaration is at revision 1) is the revision the
    change starts; `reason` says in one line what changed; `when` names an attribute of the
    trial's norm layer that must be true for the change to apply (a backbone's change that
    only alters the trials of normalization-activation layers: `when="norm_activation"`),
    None for every trial. A trial's revision of a component is the highest `number` that
    applies to it, else 1; the trial id includes it when it is not 1 (`TrialSpec.revisions`).
    Used as a decorator on a factory it appends itself to the factory's declaration."""

    number: int
    reason: str
    when: str | None = None

    def __call__(self, factory: _F) -> _F:
        known = revisions_of(factory)
        if self not in known:  # a module imported twice declares once
            factory.revision = (*known, self)  # type: ignore[attr-defined]
            revisions_of(factory)  # the numbers must still increase
        return factory

    def applies(self, flag: Callable[[str], bool]) -> bool:
        """Whether the change applies to a trial; `flag(attribute)` asks its norm layer."""
        return self.when is None or flag(self.when)


def revisions_of(obj: Any) -> tuple[Revision, ...]:
    """The changes `obj` declares in its `revision` attribute: nothing or 1 (revision 1), a
    `Revision`, a tuple of them in increasing `number`, or a dict {number: reason} (what a
    layer of `variants/`, which imports nothing of normbench, writes). The changes are
    numbered 2, 3, ... without a gap, each with a one-line reason (a bare int `n` >= 2 has
    none). Raises ValueError naming the rule and the value."""
    declared = getattr(obj, "revision", None)
    if declared is None:
        return ()
    if isinstance(declared, Mapping):  # {number: reason}: needs no import (variants/ layers)
        declared = tuple(Revision(n, r) for n, r in sorted(declared.items(), key=_number))
    items = declared if isinstance(declared, tuple) else (declared,)
    out = tuple(
        Revision(r, "") if isinstance(r, int) and not isinstance(r, bool) else r for r in items
    )
    numbers = [r.number for r in out if isinstance(r, Revision)]
    shown = f"revision={getattr(obj, 'revision', None)!r}"
    if len(numbers) != len(out) or any(not _revision_ok(r) for r in out):
        raise ValueError(
            "revision must be a dict {number: reason}, a normbench.contract.Revision(number, "
            f"reason, when=None) or a tuple of them (1: unchanged), but got {shown}"
        )
    if numbers != sorted(set(numbers)):
        raise ValueError(f"revision numbers must increase, but got {numbers}")
    changes = tuple(r for r in out if r.number > 1)
    if [r.number for r in changes] != list(range(2, 2 + len(changes))):
        raise ValueError(f"revision numbers must run 2, 3, ... without a gap, but got {shown}")
    blank = next((r.number for r in changes if not r.reason.strip() or "\n" in r.reason), None)
    if blank is not None:
        raise ValueError(
            f"revision {blank} needs a one-line reason saying what changed "
            f'(revision = {{{blank}: "what changed"}}), but got {shown}'
        )
    return changes


def _number(item: tuple[Any, Any]) -> Any:
    return item[0] if isinstance(item[0], int) else 0


def _revision_ok(r: Revision) -> bool:
    n = r.number
    return (
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(r.reason, str)
        and (r.when is None or isinstance(r.when, str))
    )  # fmt: skip


def revision_at(changes: tuple[Revision, ...], flag: Callable[[str], bool]) -> Revision | None:
    """The latest change that applies to a trial (None: the trial is at revision 1)."""
    return next((r for r in reversed(changes) if r.applies(flag)), None)


# -- tasks: what a trial trains and how it is scored (docs/tasks.md) ------------------------
SPLITS = ("train", "val", "test")
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Metric:
    """One number a task reports per split: the record key `{split}_{name}` (`train_loss`,
    `val_top1`, `test_box_AP`), in `unit` ("%", "nats", "" for a plain number), with a
    direction. `splits` says where it is measured: "train" (summed over the training pass
    by the training step), "val" and "test" (by the task's evaluation)."""

    name: str
    label: str  # a table's column head: "top-1", "box AP", "RMSE"
    unit: str
    higher_is_better: bool
    splits: tuple[str, ...] = ("val", "test")
    description: str = ""  # one line for docs and report legends

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(
                f"metric name {self.name!r} must start with a letter and hold only letters, "
                "digits and '_' (it becomes a record key)"
            )
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ValueError(
                f"metric {self.name!r}: splits must be a non-empty subset of {SPLITS}, but got "
                f"{self.splits!r}"
            )

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Optuna's word for which way is better."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def mode(self) -> Literal["max", "min"]:
        """A suite search's (and Ray Tune's) word for which way is better."""
        return "max" if self.higher_is_better else "min"


@dataclass(frozen=True)
class Scoring:
    """How a task's trials are scored: its metrics, the `headline` one that leaderboards sort
    by (with intervals, paired tests, ranks and time-to-target) and a search optimises on the
    validation split by default, and the `shown` ones that leaderboards give a column.

    Every scoring has a `loss` measured on "train" (the mean training loss the optimiser
    minimised, `train_loss`); the headline is measured on "val" and "test"."""

    metrics: tuple[Metric, ...]
    headline: str
    shown: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        problems = []
        if len(set(names)) != len(names):
            problems.append(f"metric names repeat: {names}")
        loss = next((m for m in self.metrics if m.name == "loss"), None)
        if loss is None or "train" not in loss.splits:
            problems.append("it needs a metric 'loss' measured on 'train' (the training loss)")
        head = next((m for m in self.metrics if m.name == self.headline), None)
        if head is None or not {"val", "test"} <= set(head.splits):
            problems.append(
                f"headline {self.headline!r} must be one of its metrics measured on val and test"
            )
        for name in self.shown:
            if name not in names or name == self.headline:
                problems.append(f"shown {name!r} must be another of its metrics {names}")
        if problems:
            raise ValueError("scoring: " + "; ".join(problems))

    def metric(self, name: str) -> Metric:
        """The metric `name`; KeyError naming the metrics when there is none."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r}; metrics: {', '.join(m.name for m in self.metrics)}")

    @property
    def best(self) -> Metric:
        """The headline metric."""
        return self.metric(self.headline)

    def on(self, split: str) -> tuple[Metric, ...]:
        """The metrics measured on `split`, in declaration order."""
        return tuple(m for m in self.metrics if split in m.splits)

    def keys(self) -> tuple[str, ...]:
        """Every metric's record key, `{split}_{name}`: train's, then val's, then test's."""
        return tuple(f"{split}_{m.name}" for split in SPLITS for m in self.on(split))

    def key_metric(self, key: str) -> Metric | None:
        """The metric of a record key (`val_top1` -> top1), or None."""
        split, _, name = key.partition("_")
        found = [m for m in self.on(split) if m.name == name] if split in SPLITS else []
        return found[0] if found else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (what a record of a task other than classification carries)."""
        return {
            "metrics": [{**asdict(m), "splits": list(m.splits)} for m in self.metrics],
            "headline": self.headline,
            "shown": list(self.shown),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scoring":
        metrics = tuple(
            Metric(**{**m, "splits": tuple(m.get("splits", ("val", "test")))}) for m in d["metrics"]
        )
        return cls(metrics, str(d["headline"]), tuple(d.get("shown", ())))


CLASSIFICATION = Scoring(
    metrics=(
        Metric(
            "loss", "loss", "nats", False, SPLITS, "mean cross-entropy (label-smoothed in training)"
        ),
        Metric("top1", "top-1", "%", True, SPLITS, "share of images whose top logit is the label"),
        Metric("top5", "top-5", "%", True, ("val", "test"), "share with the label in the top 5"),
    ),
    headline="top1",
    shown=("top5",),
)


def scoring_of(record: Mapping[str, Any]) -> Scoring:
    """The scoring a stored record (or summary line) was written under: its `scoring`, else
    classification's (every record of a classification trial, and every record before tasks
    existed)."""
    stored = record.get("scoring")
    return Scoring.from_dict(stored) if isinstance(stored, dict) else CLASSIFICATION


class TaskClass(Protocol):
    """A task, registered like a layer (`normbench.tasks.register_task`, entry-point group
    `normbench.tasks`): `Task(**options)` builds one trial's task; keyword-only options with
    defaults. `scoring` is a class attribute. The instance methods, which the one training
    loop calls (types in `normbench/tasks/base.py`; docs/tasks.md):

    * `build_model(ctx) -> nn.Module`: the model from `ctx.backbone(num_outputs, ...)` (the
      suite's backbone with the variant's norm placed) and `ctx.norm_layer` for the task's
      own parts (heads, necks), with the data's facts in `ctx.data`;
    * `training_step(forward, batch) -> Step`: the loss to minimise on one batch (a scalar
      with its graph), and per-sample sums of the train metrics;
    * `evaluate(forward, batches, ctx) -> {metric: value}`: the metrics of one split;
    * optional `check_options(options, *, dataset=None, backbone=None, variant=None) ->
      {option: why}` (it declares the context it reads: the trial's data set, backbone and
      variant names);
    * optional `norm_widths() -> {where: widths}`: the channel counts its own parts (a
      detector's FPN and heads) give `ctx.norm_layer`, which validation checks the variant's
      options at besides the backbone's;
    * optional `state_dict()` / `load_state_dict(state)`: the task's own training state;
    * optional `build_optimizer(model, recipe) -> Optimizer`: the optimiser the loop steps
      on the step's loss, in place of the recipe's SGD (a GAN's generator's Adam);
    * optional classmethod `preflight(options) -> line`: files the task reads at run time,
      found before Ray starts (UserError, one line, when missing);
    * optional classmethod `cost(options, *, variant=None, ...) -> TaskCost | str`: its work
      per image in backbone forwards, for the dry run's estimate, or why it cannot say (no
      hook: no estimate); context keywords as `check_options`'.
    """

    scoring: Scoring

    def __call__(self, **options: Any) -> Any: ...


# Record keys that measure speed or memory rather than what was computed.
TIMING_KEYS = ("epoch_time_s", "train_time_s", "images_per_s", "elapsed_s", "peak_mem_mb")
# Classification's metric keys (`CLASSIFICATION.keys()`): loss (mean cross-entropy) and
# accuracy (percent) per split. Another task's keys are its `Scoring.keys()`.
METRIC_KEYS = CLASSIFICATION.keys()


class EpochRecord(TypedDict):
    """One epoch of one trial. Non-finite numbers are stored as None (strict JSON); a metric is
    None when its split does not exist or the trial diverged."""

    epoch: int  # 1-based
    status: Literal["ok", "diverged"]
    # The metrics: one key `{split}_{name}` per metric and split of the trial's task
    # (`Scoring.keys()`), None when the split does not exist or the trial diverged. Every task
    # has `train_loss`; these are classification's (`METRIC_KEYS`), on each of its records.
    train_loss: float | None  # the task's loss (classification: mean cross-entropy, nats)
    train_top1: NotRequired[float | None]  # percent
    val_loss: NotRequired[float | None]
    val_top1: NotRequired[float | None]
    val_top5: NotRequired[float | None]
    test_loss: NotRequired[float | None]
    test_top1: NotRequired[float | None]
    test_top5: NotRequired[float | None]
    # a task other than classification: its `Scoring.to_dict()` (`scoring_of` reads it)
    scoring: NotRequired[dict[str, Any]]
    lr: float  # the rate of the epoch's last training batch
    epoch_time_s: float | None  # the whole epoch: training, hooks, evaluation, probes
    train_time_s: float | None  # the training pass alone
    images_per_s: float | None  # training images / train_time_s
    peak_mem_mb: float | None  # MiB, the trial's own peak (normbench/engine/memory.py)
    peak_mem_method: str | None  # how: "cuda_max_allocated" or "cpu_profiler_step_peak"
    elapsed_s: float | None  # sum of epoch_time_s so far, across resumes
    params: int
    devices: int  # data-parallel devices of the trial (train.devices)
    optimizer_batch_size: int  # images per optimiser step: devices x batch_size
    device: str
    variant_source: str
    condensation: dict[str, float | None]  # layer -> similarity probe (docs/variants.md#ubn)
    diagnostics: dict[str, dict[str, float | None]]  # layer -> its diagnostics()
    # what can change a number without changing the experiment (Runtime.environment();
    # docs/reproducibility.md): device, threads, dtype, deterministic flags, versions
    environment: dict[str, Any]
    # the revision of each component the trial used, as its code declared it when the epoch
    # ran ({"variant": 1, "backbone": 2, "dataset": 1, "task": 1}; normbench.engine.revisions)
    revisions: NotRequired[dict[str, int]]
    # compile: true: graphs torch.compile captured and graph breaks it met since the trial
    # started in this process (a resumed trial counts again); None without compile
    compile_graphs: NotRequired[int | None]
    compile_graph_breaks: NotRequired[int | None]
    diverged_epoch: NotRequired[int]
    diverged_reason: NotRequired[str]
    # added by the Ray adapter and the store
    ray_node_id: NotRequired[str | None]
    ray_gpu_ids: NotRequired[list[Any]]
    finished_at: NotRequired[float]
    trial_id: NotRequired[str]
    spec: NotRequired[dict[str, Any]]  # the trial's spec and suite cell, on stored lines
    cell: NotRequired[dict[str, Any]]
    study: NotRequired[str]  # searched trials: the Optuna study, trial number and parameters
    study_trial: NotRequired[int | None]
    search_params: NotRequired[dict[str, Any] | None]


RECORD_KEYS: frozenset[str] = frozenset(EpochRecord.__annotations__)
REQUIRED_RECORD_KEYS: frozenset[str] = EpochRecord.__required_keys__
