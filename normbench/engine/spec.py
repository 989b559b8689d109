"""`TrialSpec`: everything one trial needs, as a frozen, JSON-serialisable value.

A trial's identity is a hash of its resolved spec (`trial_id`), so a rerun recognises
finished and interrupted trials. Fields that do not change the result (`num_threads`,
`device` when "auto", `checkpoint_every`) are left out of the hash.
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


# Fields that change how fast a trial runs, not what it computes.
_NOT_IN_ID = ("num_threads", "device", "checkpoint_every")
# Data-set options that say where the files are, not what they are: moving the data (or the
# suite folder with its plugins) must not turn finished trials into new ones.
_DATASET_NOT_IN_ID = ("root", "download")


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


@dataclass(frozen=True)
class TrialSpec:
    variant: str
    backbone: str
    dataset: str
    epochs: int
    batch_size: int = 128
    seed: int = 0
    variant_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # data-set options: root, download, image_size, val_fraction, augment flags ...
    dataset_options: dict[str, Any] = field(default_factory=dict)
    recipe: Recipe = field(default_factory=Recipe)
    # "everywhere" (default), "last-in-block" (BNET's official placement) or "except-shortcut"
    # (IEBN's official placement); see normbench.models.placement
    placement: Literal["everywhere", "last-in-block", "except-shortcut"] = "everywhere"
    sabn_index: Literal["zeros", "augmented"] = "zeros"
    device: str = "auto"  # "auto" picks cuda when available
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False
    limit_batches: int | None = None  # smoke mode: at most this many train batches per epoch
    eval_batch_size: int = 512
    probe: bool = True  # per-layer feature condensation on a fixed probe batch each epoch
    probe_batch_size: int = 32
    plugins: tuple[str, ...] = ()
    num_threads: int | None = None
    checkpoint_every: int = 1

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
        d = self.to_dict()
        for k in _NOT_IN_ID:
            d.pop(k, None)
        d["dataset_options"] = {
            k: v for k, v in d["dataset_options"].items() if k not in _DATASET_NOT_IN_ID
        }
        d["plugins"] = [Path(p).name for p in d["plugins"]]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
