"""Build everything a trial trains with, from a `TrialSpec`: plugins, runtime, task, data,
model, optimiser and schedule.

Order matters for determinism: plugins load, the global RNGs are seeded from `spec.seed`, then
data and model are built, so the model's initial weights depend on the seed alone. The task
(`normbench.tasks`) builds the model from the backbone with the variant placed
(`build_model`) and the variant's norm layer, and owns the loss and the evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from normbench.engine.device import Runtime, build_runtime
from normbench.engine.recipe import build_optimizer, build_scheduler
from normbench.errors import UserError
from normbench.spec import SpecError, TrialSpec

if TYPE_CHECKING:
    from normbench.data.shard import Shard


@dataclass
class Trial:
    """The live objects of one trial. `model` is the module to inspect and checkpoint;
    `forward` is what to call (the compiled model when `spec.compile`); `task` is the trial's
    task (`normbench.contract.TaskClass`): its training step's loss and its evaluation."""

    spec: TrialSpec
    runtime: Runtime
    data: Any  # normbench.data.Data
    model: nn.Module
    forward: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    task: Any
    batches_per_epoch: int
    params: int
    variant_source: str
    probe: Any  # the condensation probe's inputs (None: no probe)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_plugins(spec: TrialSpec) -> None:
    """Import the spec's plugin files (each registers its variants/backbones/data sets/tasks)."""
    from normbench.registry import load_plugin

    for path in spec.plugins:
        load_plugin(path)


def spec_refusals(spec: TrialSpec) -> dict[str, str]:
    """{spec field: why} for values no trial of this engine can run; suite validation reports
    them at the field's line, `build_trial` raises them."""
    out: dict[str, str] = {}
    if spec.sabn_index != "zeros":
        out["sabn_index"] = (
            f"sabn_index {spec.sabn_index!r} is not supported by this engine (its loaders do "
            "not mark augmented samples); use 'zeros'"
        )
    out.update(_uneven_batches(spec))
    if spec.init_from is not None:
        from normbench.engine.init_from import init_problem

        problem = init_problem(spec, lambda: _meta_backbone(spec))
        if problem is not None:
            out["init_from"] = problem
    return out


def _meta_backbone(spec: TrialSpec) -> nn.Module | None:
    """The backbone as `ModelContext.backbone` builds it for the trial's data (its channels,
    from the data set's `DatasetFacts`), on the meta device: no memory. None when the data set
    declares no facts, or the backbone cannot be built (the suite's other checks say why)."""
    from normbench.contract import dataset_facts
    from normbench.data import DATASETS

    facts = dataset_facts(DATASETS.get(spec.dataset).obj) if spec.dataset in DATASETS else None
    if facts is None:
        return None
    try:
        with torch.device("meta"):
            return build_model(
                spec, num_classes=1, in_channels=facts.channels_with(spec.dataset_options)
            )
    except Exception:  # a name or option problem: reported at its own key
        return None


def _uneven_batches(spec: TrialSpec) -> dict[str, str]:
    """A task whose norms see a different number of samples on each device (Mask R-CNN's
    mask head normalises each device's positive RoIs; class attribute `uneven_norm_batches`)
    cannot split a batch into virtual devices nor exchange moments across ranks."""
    from normbench.tasks import TASKS

    try:
        uneven = getattr(TASKS.get(spec.task).obj, "uneven_norm_batches", False)
    except UserError:  # an unknown task is reported by the task check
        return {}
    if spec.devices == 1 or not uneven:
        return {}
    why = (
        f"task {spec.task!r} normalises a different number of samples on each device (its "
        "heads' RoIs)"
    )
    if spec.parallel == "virtual":
        return {"parallel": f"{why}, which virtual devices cannot split; use parallel: ddp"}
    if spec.stats_scope == "global":
        return {
            "stats_scope": f"{why}, which global statistics cannot exchange across ranks; "
            "use stats_scope: device"
        }
    return {}


def build_trial(
    spec: TrialSpec, *, shard: Shard | None = None, run_trial: Callable[..., Any] | None = None
) -> Trial:
    """Everything `run_trial` needs, freshly initialised from `spec.seed`.

    `shard`: the data-parallel rank this process is (`Parallel.shard`); its loaders serve
    only that rank's part of each batch. None: one process serving whole batches.
    `run_trial`: the loop, handed to the task (`ModelContext.run_trial`) by the loop itself.
    """
    load_plugins(spec)
    refusals = spec_refusals(spec)
    if refusals:
        raise SpecError("; ".join(refusals.values()))
    runtime = build_runtime(
        spec.device,
        amp=spec.amp,
        channels_last=spec.channels_last,
        compile=spec.compile,
        num_threads=spec.num_threads,
        deterministic=spec.deterministic,
    )
    task = _build_task(spec)
    seed_everything(spec.seed)
    data = _build_data(spec, runtime, shard)
    model = _task_model(spec, task, data, runtime, run_trial)
    forward = runtime.prepare(model)
    batches = len(data.train)
    if spec.limit_batches is not None:
        batches = min(batches, spec.limit_batches)
    # fused SGD where the loop reads its divergence flag only every few steps (skips on device);
    # a task that keeps other networks' optimisers may build the loop's (a GAN's generator's)
    own = getattr(task, "build_optimizer", None)
    optimizer = (
        own(model, spec.recipe)
        if callable(own)
        else build_optimizer(model, spec.recipe, fused=runtime.check_every > 1)
    )
    scheduler = build_scheduler(
        optimizer, spec.recipe, epochs=spec.epochs, batches_per_epoch=max(batches, 1)
    )
    return Trial(
        spec=spec,
        runtime=runtime,
        data=data,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=scheduler,
        task=task,
        batches_per_epoch=batches,
        params=sum(p.numel() for p in model.parameters()),
        variant_source=_variant_source(spec.variant),
        probe=_probe_batch(spec, data, runtime),
    )


def _build_data(spec: TrialSpec, runtime: Runtime, shard: Shard | None) -> Any:
    from normbench.data import build_data

    ranks = 1 if shard is None else shard.ranks
    return build_data(
        spec.dataset,
        # the optimiser batch is devices x batch_size; each of the shard's ranks loads its part
        batch_size=spec.batch_size * spec.devices // ranks,
        eval_batch_size=spec.eval_batch_size,
        device=runtime.device,
        seed=spec.seed,
        limit_batches=spec.limit_batches,
        probe_batch_size=spec.probe_batch_size,
        shard=shard,
        cpus=runtime.num_threads,
        **spec.dataset_options,
    )


def _build_task(spec: TrialSpec) -> Any:
    from normbench.tasks import create_task

    return create_task(
        spec.task,
        spec.task_options,
        dataset=spec.dataset,
        backbone=spec.backbone,
        variant=spec.variant,
    )


def _task_model(
    spec: TrialSpec, task: Any, data: Any, runtime: Runtime, run_trial: Callable[..., Any] | None
) -> nn.Module:
    """The task's model (`build_model` of `normbench.contract.TaskClass`)."""
    from normbench.tasks import ModelContext
    from normbench.variants_api import norm_layer

    def backbone(num_outputs: int, *, in_channels: int = data.in_channels) -> nn.Module:
        model = build_model(spec, num_classes=num_outputs, in_channels=in_channels)
        if spec.init_from is not None:  # another run's classification weights
            from normbench.engine.init_from import load_init

            load_init(model, spec)
        return model

    ctx = ModelContext(
        backbone=backbone,
        # the task's own norm slots pass what it declares (a style network's: the style)
        norm_layer=norm_layer(
            spec.variant,
            conditioning=getattr(task, "norm_conditioning", None),
            **spec.variant_options,
        ),
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        recipe=spec.recipe,
        device=runtime.device,
        info=dict(data.info),
        spec=spec,
        run_trial=run_trial,
    )
    model = task.build_model(ctx)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"task {spec.task!r}: build_model returned {type(model).__name__}, not an nn.Module"
        )
    return model


def build_model(spec: TrialSpec, *, num_classes: int, in_channels: int) -> nn.Module:
    """The backbone with the spec's variant in the spec's placement
    (`normbench.models.placement`): classification's whole model, and what every task builds
    on (`ModelContext.backbone`).

    "last-in-block" (BNET's official placement) puts the variant only in the last norm of
    each residual block and plain BN everywhere else; "except-shortcut" (IEBN's official
    placement) keeps plain BN in the shortcut projections.
    """
    from normbench.models import create_backbone
    from normbench.models.placement import keep_bn_in_shortcuts
    from normbench.models.registry import backbone_conditioning
    from normbench.variants_api import VARIANTS, norm_layer

    slot = backbone_conditioning(spec.backbone)  # a style network's slot: forward(x, style)
    variant = norm_layer(spec.variant, conditioning=slot, **spec.variant_options)
    if spec.placement == "last-in-block":
        norm, last = norm_layer("bn"), variant
    else:
        norm, last = variant, None
    try:
        model = create_backbone(
            spec.backbone,
            num_classes,
            norm,
            in_channels=in_channels,
            last_norm_layer=last,
            **spec.backbone_options,
        )
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise SpecError(
            f"backbone {spec.backbone!r} with variant {spec.variant!r} "
            f"(placement {spec.placement!r}) cannot be built: {exc}"
        ) from exc
    if spec.placement == "except-shortcut":
        keep_bn_in_shortcuts(model, VARIANTS.get(spec.variant).obj, norm_layer("bn"))
    return model


def _variant_source(name: str) -> str:
    from normbench.variants_api import VARIANTS

    return VARIANTS.get(name).source


def _probe_batch(spec: TrialSpec, data: Any, runtime: Runtime) -> Any:
    """The fixed probe batch (first `probe_batch_size` samples of `data.probe`) on device: a
    tensor of images, or the inputs a data set's own loader gives (e.g. a list of images)."""
    probe = getattr(data, "probe", None)
    if not spec.probe or probe is None:
        return None
    if isinstance(probe, torch.Tensor):
        return probe[: spec.probe_batch_size].to(runtime.device)
    return probe[: spec.probe_batch_size]
