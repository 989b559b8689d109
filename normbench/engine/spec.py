"""`TrialSpec`: everything one trial needs, as a frozen, JSON-serialisable value.

Every field says once, in its metadata, what it is (`ROLE`):

* `identity`: changes what the trial computes; part of the trial id (`trial_id` hashes the
  resolved spec), of a suite's compatibility check and of report grouping. `epochs` and
  `limit_batches` are identity too, and are also its *length* (`LENGTH_FIELDS`): a truncated
  run is a different trial, but belongs to the same family of trials.
* `environment`: where and how fast it runs (device, CPU threads). Not in the id, so moving a
  suite to another machine keeps its trials; but it can change numbers (thread count changes
  float reduction order), so it is recorded in every epoch record and a trial never resumes
  from a checkpoint written in a different environment (`engine.environment`).
* `location`: where files are (plugin paths beyond their file names, the data set's `root`
  and `download`); never changes a number.
* `bookkeeping`: how often to checkpoint; never changes a number.

Every "which fields matter" list (trial id, resume checks, the store's compatibility check,
the searchable paths, the matrix's shared settings) is derived from these tags. `TrialSpec` and
`Recipe` validate themselves on construction (as Optuna's distributions do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normbench.errors import UserError


class SpecError(UserError, ValueError):
    """A trial spec whose values no trial can run with."""


ROLE = "role"
IDENTITY, ENVIRONMENT, LOCATION, BOOKKEEPING = "identity", "environment", "location", "bookkeeping"
# Data-parallel fields left out of the id at their defaults, so a single-device trial keeps the
# id it had before they existed.
_DEFAULT_NOT_IN_ID = {"devices": 1, "stats_scope": "device"}
# Data-set options that say where the files are or how they are read, not what they are:
# moving the data (or the suite folder with its plugins) or decoding it with more loader
# workers (each sample's augmentation is seeded per sample) must not turn finished trials
# into new ones.
DATASET_LOCATION_OPTIONS = ("root", "download", "num_workers")
# Identity fields that only say how long a trial runs (a truncated run is the same family).
LENGTH_FIELDS = ("epochs", "limit_batches")


def _f(default: Any = dataclasses.MISSING, *, role: str = IDENTITY, factory: Any = None) -> Any:
    meta = {ROLE: role}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule. Every paper recipe of the built-in suites fits here exactly."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2 on every parameter the two switches below leave alone
    # L2 on every parameter of a normalization layer (gamma, beta, BNET/UBN kernels, RBN/UBN
    # calibration weights, SaBN tables); None: `weight_decay`. See `normbench.engine.recipe`.
    norm_weight_decay: float | None = None
    # L2 on the biases of the other layers (convolutions, linear); None: `weight_decay`.
    bias_weight_decay: float | None = None
    # "zero": L2 pulls norm parameters toward 0; "identity": each norm layer's `.weight`
    # (gamma, or a BNET depthwise kernel) toward the identity affine (gamma 1), the rest to 0.
    norm_decay_toward: Literal["zero", "identity"] = "zero"
    # Alias kept for old suites: True means norm_weight_decay=0 and bias_weight_decay=0.
    no_decay_norm_and_bias: bool = False
    warmup_epochs: float = 0.0  # linear warm-up per batch, from lr/warmup_batches to lr
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[int, ...] = ()  # epochs at which multistep decays (after warm-up)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        problems = [
            f"recipe.{name} must be {rule}, but got {name}={getattr(self, name)!r}"
            for name, rule, ok in (
                ("lr", "a number > 0", _number(self.lr) and self.lr > 0),
                ("momentum", "a number in [0, 1)",
                 _number(self.momentum) and 0 <= self.momentum < 1),
                ("weight_decay", "a number >= 0",
                 _number(self.weight_decay) and self.weight_decay >= 0),
                ("warmup_epochs", "a number >= 0",
                 _number(self.warmup_epochs) and self.warmup_epochs >= 0),
                ("schedule", "one of 'multistep', 'cosine', 'constant'",
                 self.schedule in ("multistep", "cosine", "constant")),
                ("gamma", "a number > 0", _number(self.gamma) and self.gamma > 0),
                ("label_smoothing", "a number in [0, 1)",
                 _number(self.label_smoothing) and 0 <= self.label_smoothing < 1),
                ("grad_clip", "None or a number > 0",
                 self.grad_clip is None or (_number(self.grad_clip) and self.grad_clip > 0)),
                ("milestones", "increasing epochs >= 1",
                 all(_int_at_least(m, 1) for m in self.milestones)
                 and list(self.milestones) == sorted(set(self.milestones))),
            )
            if not ok
        ]  # fmt: skip
        if problems:
            raise SpecError("trial spec: " + "; ".join(problems))


@dataclass(frozen=True)
class TrialSpec:
    variant: str
    backbone: str
    dataset: str
    epochs: int
    batch_size: int = 128
    seed: int = 0
    variant_options: dict[str, Any] = _f(factory=dict)
    backbone_options: dict[str, Any] = _f(factory=dict)
    # data-set options: root, download (location), image_size, val_fraction, augment flags ...
    dataset_options: dict[str, Any] = _f(factory=dict)
    recipe: Recipe = _f(factory=Recipe)
    # "everywhere" (default), "last-in-block" (BNET's official placement) or "except-shortcut"
    # (IEBN's official placement); see normbench.models.placement
    placement: Literal["everywhere", "last-in-block", "except-shortcut"] = "everywhere"
    sabn_index: Literal["zeros", "augmented"] = "zeros"
    device: str = _f("auto", role=ENVIRONMENT)  # "auto" picks cuda when available
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False
    # deterministic algorithms, cuDNN without autotuning, a fixed cuBLAS workspace
    # (normbench.engine.device.set_determinism): repeatable GPU runs at a speed cost
    deterministic: bool = _f(False, role=ENVIRONMENT)
    limit_batches: int | None = None  # smoke mode: at most this many train batches per epoch
    eval_batch_size: int = 512
    probe: bool = True  # per-layer feature condensation on a fixed probe batch each epoch
    probe_batch_size: int = 32
    plugins: tuple[str, ...] = ()  # identity by file name, location by the rest of the path
    num_threads: int | None = _f(None, role=ENVIRONMENT)
    checkpoint_every: int = _f(1, role=BOOKKEEPING)
    # Data parallelism (normbench.engine.distributed): `batch_size` is per device, so one
    # optimiser step sees devices * batch_size images. "ddp": one DDP rank per device (Ray
    # Train workers); "virtual": all devices in one process, statistics per device slice;
    # both compute the same, so `parallel` is environment.
    devices: int = 1
    parallel: Literal["ddp", "virtual"] = _f("ddp", role=ENVIRONMENT)
    # "device": each device normalises its own slice; "global": moments over all devices.
    stats_scope: Literal["device", "global"] = "device"

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

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
        trial is built; this checks the numbers and switches.
        """
        problems = [
            f"{name} must be {rule}, but got {name}={getattr(self, name)!r}"
            for name, rule, ok in (
                ("epochs", "an integer >= 1", _int_at_least(self.epochs, 1)),
                ("batch_size", "an integer >= 1", _int_at_least(self.batch_size, 1)),
                ("eval_batch_size", "an integer >= 1", _int_at_least(self.eval_batch_size, 1)),
                ("probe_batch_size", "an integer >= 2", _int_at_least(self.probe_batch_size, 2)),
                ("checkpoint_every", "an integer >= 1", _int_at_least(self.checkpoint_every, 1)),
                (
                    "limit_batches",
                    "None or an integer >= 1",
                    self.limit_batches is None or _int_at_least(self.limit_batches, 1),
                ),
                (
                    "num_threads",
                    "None or an integer >= 1",
                    self.num_threads is None or _int_at_least(self.num_threads, 1),
                ),
                (
                    "placement",
                    "one of 'everywhere', 'last-in-block', 'except-shortcut'",
                    self.placement in ("everywhere", "last-in-block", "except-shortcut"),
                ),
                (
                    "sabn_index",
                    "one of 'zeros', 'augmented'",
                    self.sabn_index in ("zeros", "augmented"),
                ),
                ("devices", "an integer >= 1", _int_at_least(self.devices, 1)),
                ("deterministic", "true or false", isinstance(self.deterministic, bool)),
                (
                    "parallel",
                    "one of 'ddp', 'virtual'",
                    self.parallel in ("ddp", "virtual"),
                ),
                (
                    "stats_scope",
                    "one of 'device', 'global'",
                    self.stats_scope in ("device", "global"),
                ),
                (
                    "seed",
                    "an integer",
                    isinstance(self.seed, int) and not isinstance(self.seed, bool),
                ),
            )
            if not ok
        ]
        if problems:
            raise SpecError("trial spec: " + "; ".join(problems))
        return self

    @property
    def trial_id(self) -> str:
        d = identity(self.to_dict())
        for k, default in _DEFAULT_NOT_IN_ID.items():
            if d.get(k) == default:
                d.pop(k)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def fields_with(*roles: str) -> tuple[str, ...]:
    """Names of the TrialSpec fields tagged with one of `roles`, in declaration order."""
    return tuple(
        f.name for f in dataclasses.fields(TrialSpec) if f.metadata.get(ROLE, IDENTITY) in roles
    )


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The identity part of a spec dict (what `trial_id` hashes): environment and bookkeeping
    fields dropped, locations reduced to what they name (plugin file names, no data root)."""
    drop = set(fields_with(ENVIRONMENT, BOOKKEEPING))
    d = {k: v for k, v in spec.items() if k not in drop}
    if "dataset_options" in d:
        d["dataset_options"] = {
            k: v for k, v in d["dataset_options"].items() if k not in DATASET_LOCATION_OPTIONS
        }
    if "plugins" in d:
        d["plugins"] = [Path(p).name for p in d["plugins"]]
    return d


def family(spec: dict[str, Any]) -> dict[str, Any]:
    """The identity without its length (`LENGTH_FIELDS`): smoke, truncated and full runs of
    one experiment share a family."""
    return {k: v for k, v in identity(spec).items() if k not in LENGTH_FIELDS}


def environment_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The execution-environment fields of a spec dict."""
    return {k: spec.get(k) for k in fields_with(ENVIRONMENT)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


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
