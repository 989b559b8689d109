"""The contracts between normbench's stages, in one module (as AlgoPerf keeps its `spec.py`).

What an extension provides and what flows between the stages:

* `VariantClass`: a normalization layer class ([docs/variants.md#contract](../docs/variants.md)).
* `BackboneFactory`: builds a classifier with a given norm layer.
* `DatasetFactory`: loads a data set's splits; `DatasetFacts` are the numbers `--dry-run`
  needs without loading anything, declared where the data set is defined.
* `EpochRecord`: what `run_trial` yields once per epoch, what the store writes to
  `epochs.jsonl`, and what the live view, the runner and the reports read. Its keys exist
  here only; a reader that types its record as `EpochRecord` has every key checked by mypy.

This module imports neither torch nor pandas (the reports read records without torch); the
torch types appear under `TYPE_CHECKING` only. (No `from __future__ import annotations`
here: `TypedDict` needs evaluated annotations to tell required keys from `NotRequired` ones.)
"""

from collections.abc import Callable
from dataclasses import dataclass
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
    that sets the training image count instead (the synthetic set's `n_train`)."""

    train_images: int
    channels: int
    image_size: int
    count_option: str | None = None

    def __call__(self, factory: _F) -> _F:
        factory.facts = self  # type: ignore[attr-defined]
        return factory


def dataset_facts(factory: Any) -> DatasetFacts | None:
    """The facts a data-set factory declares, or None."""
    facts = getattr(factory, "facts", None)
    return facts if isinstance(facts, DatasetFacts) else None


# Record keys that measure speed or memory rather than what was computed.
TIMING_KEYS = ("epoch_time_s", "train_time_s", "images_per_s", "elapsed_s", "peak_mem_mb")
# Loss (mean cross-entropy) and accuracy (percent) per split.
METRIC_KEYS = (
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "test_loss",
    "test_top1",
    "test_top5",
)


class EpochRecord(TypedDict):
    """One epoch of one trial. Non-finite numbers are stored as None (strict JSON); a metric is
    None when its split does not exist or the trial diverged."""

    epoch: int  # 1-based
    status: Literal["ok", "diverged"]
    train_loss: float | None
    train_top1: float | None  # percent
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    test_loss: float | None
    test_top1: float | None
    test_top5: float | None
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
