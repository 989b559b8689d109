"""`describe(suite)`: the text `normbench run --dry-run` prints: trial matrix, resources, what
an existing run directory holds (the resume) and a cost estimate.

The estimate is arithmetic, not a measurement of this suite. Per trial and epoch:
images trained = the train split (or limit_batches x batch), images evaluated = val + test
splits (evaluation is never limited by limit_batches: every epoch scores both whole);
work = (train x images trained + evaluate x images evaluated) x forward multiply-adds of one
image, where `train` and `evaluate` are the trial's task's cost per image in forward passes of
the backbone (`normbench.contract.TaskCost`, the task's classmethod `cost(options)`;
classification: 3, forward + backward ~ 3 forwards, and 1) and the forward count is taken
from the backbone itself (conv and linear layers, counted by a forward pass on the meta
device, so nothing is allocated). A task that cannot say its cost gets no estimate, said so.
Time = work / an assumed rate (per trial: its CPUs or GPUs, times its devices in DDP):
* CPU: 25 GMAC/s per core, measured: ResNet-20 on 16x16 digits (10.1 M MACs forward per
  image, 1293 training images) takes ~1.7 CPU-seconds per epoch on one thread of this
  project's 2-core dev machine, averaged over the 11 built-in variants (23 GMAC/s);
* GPU: 8 TMAC/s per GPU, assumed for an A100-class card (about 10 s per ResNet-18 CIFAR-10
  epoch in fp32/tf32).
Norm layers are not counted (UBN, RBN, BNET and IEBN cost noticeably more than BN on small
backbones); read the result as an order of magnitude. The wall time divides the trial time by
the trials that run at once: max_concurrent, the trials whose resources fit side by side on
this machine or the cluster (the preflight's count), and the trials there are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.options import freeze
from normbench.suite.loader import Suite

CPU_MACS_PER_S = 25e9  # per core
GPU_MACS_PER_S = 8e12  # per GPU


def describe(
    suite: Suite, *, fits: int | None = None, where: str = "", run_dir: Path | None = None
) -> str:
    """A plain-text summary of what `normbench run` would do with this suite. `fits`: trials
    whose resources fit side by side on `where` (the preflight's count; None: unknown);
    `run_dir`: an existing run directory to report the resume of."""
    from normbench.suite.preflight import amount
    from normbench.suite.rundir import stored_progress

    trials = suite.trials()
    lines = [f"suite {suite.name} (version {suite.version}) from {suite.path}"]
    if suite.description:
        lines.append(f"  {suite.description}")
    if suite.overrides:
        lines.append(f"  overrides: {' '.join(suite.overrides)}")
    if suite.max_epochs or suite.limit_batches:
        lines.append(
            f"  capped: max_epochs={suite.max_epochs} limit_batches="
            f"{suite.limit_batches} (different trial ids from the full run)"
        )
    r = suite.resources
    n = suite.ddp_devices
    per = "per trial" if n == 1 else f"per device ({n} devices a trial)"
    lines.append(
        f"  resources {per}: {amount(r.cpus, r.gpus)}; max_concurrent="
        f"{suite.max_concurrent or 'unlimited'}; retries={suite.retries}"
    )
    if suite.task.get("name", "classification") != "classification":
        h = suite.scoring.best
        options = ", ".join(f"{k}={v!r}" for k, v in (suite.task.get("options") or {}).items())
        lines.append(
            f"  task {suite.task['name']}" + (f" ({options})" if options else "") + ": headline "
            f"{h.label}, {'higher' if h.higher_is_better else 'lower'} is better"
        )
    if suite.search:
        s = suite.search
        lines.append(
            f"  search per cell: {s.num_samples} samples ({s.sampler}, "
            f"scheduler {s.scheduler}) {s.mode} {s.metric} over "
            f"{', '.join(s.space)}"
        )
    lines.append("")
    progress = stored_progress(run_dir, suite) if run_dir is not None else None
    lines += _table(trials, progress.stored if progress is not None and not suite.search else None)
    if progress is not None and run_dir is not None:
        lines.append(progress.text(run_dir))
    lines.append("")
    lines += _cost(suite, fits, where, progress)
    return "\n".join(lines)


def _table(trials: list[Any], stored: dict[str, str] | None = None) -> list[str]:
    """One line per trial; with `stored` (a run directory's statuses), what it holds of each
    ("new" for a trial it does not hold)."""
    head: tuple[str, ...] = (
        "trial_id",
        "dataset",
        "backbone",
        "variant",
        "batch",
        "seed",
        "epochs",
    )
    rows: list[tuple[str, ...]] = [
        (
            t.trial_id,
            t.cell["dataset"],
            t.cell["backbone"],
            t.cell["variant"],
            str(t.cell["batch_size"]),
            str(t.cell["seed"]),
            str(t.spec.epochs),
        )
        for t in trials
    ]
    if stored is not None:
        head += ("stored",)
        rows = [(*r, stored.get(t.trial_id, "new")) for r, t in zip(rows, trials, strict=True)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), *(fmt.format(*r) for r in rows), _trials(len(trials))]


@dataclass
class Work:
    """What the trials of a suite would process: images trained and evaluated, and the
    multiply-adds of both; `notes` say what is left out."""

    trained: float = 0.0
    evaluated: float = 0.0
    train_macs: float = 0.0
    eval_macs: float = 0.0
    what: dict[str, None] = field(default_factory=dict)  # each distinct task cost, in words
    notes: dict[str, None] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        return self.train_macs + self.eval_macs


def work(suite: Suite, skip: frozenset[str] = frozenset()) -> Work | str:
    """The suite's work (its trials but those in `skip`, each search sample counted), or why
    there is no estimate (a data set without facts, a task that cannot say its cost)."""
    samples = suite.search.num_samples if suite.search else 1
    out = Work()
    for t in suite.trials():
        if t.trial_id in skip:
            continue
        cost = _task_cost(t.spec)
        if isinstance(cost, str):
            return f"no cost estimate: task {t.spec.task!r} {cost}"
        facts = _data_facts(t.spec)
        if facts is None:
            return (
                f"no cost estimate: data set {t.spec.dataset!r} declares no image count "
                "(decorate its factory with normbench.contract.DatasetFacts)"
            )
        train, val, test, channels, size = facts
        limit = t.spec.limit_batches
        trained = (
            t.spec.epochs * samples * (min(train, limit * t.spec.batch_size) if limit else train)
        )
        if test is None:
            out.notes[f"the test split of {t.spec.dataset} (it declares no test image count)"] = (
                None
            )
        evaluated = t.spec.epochs * samples * (val + (test or 0))
        forward = forward_macs(t.spec.backbone, channels, size, freeze(t.spec.backbone_options))
        out.trained += trained
        out.evaluated += evaluated
        out.train_macs += cost.train * trained * forward
        out.eval_macs += cost.evaluate * evaluated * forward
        text = f"{t.spec.task} {cost.train:g} a trained image, {cost.evaluate:g} an evaluated one"
        out.what[text + (f" ({cost.what})" if cost.what else "")] = None
    return out


def _cost(suite: Suite, fits: int | None, where: str, progress: Any) -> list[str]:
    found = work(suite)
    if isinstance(found, str):
        return [found]
    x = f" x {suite.search.num_samples} samples" if suite.search else ""
    lines = [
        f"estimated images: {found.trained:.3g} trained (epochs x train images x trials{x}), "
        f"{found.evaluated:.3g} evaluated (epochs x val + test images x trials{x})",
        f"estimated work: {found.macs / 1e12:.3g} TMAC, {found.train_macs / 1e12:.3g} training "
        f"and {found.eval_macs / 1e12:.3g} evaluation (the backbone's forward conv/linear "
        f"MACs x the forwards an image costs: {'; '.join(found.what)})",
    ]
    lines += [f"not counted: {', '.join(found.notes)}"] if found.notes else []
    gpu = suite.resources.gpus > 0
    rate = (
        GPU_MACS_PER_S * suite.resources.gpus
        if gpu
        else CPU_MACS_PER_S * max(1.0, suite.resources.cpus)
    ) * suite.ddp_devices
    seconds = found.macs / rate
    total = len(suite.trials()) * (suite.search.num_samples if suite.search else 1)
    text = (
        f"estimated time: {_hms(seconds)} of trial time for {'all ' if total != 1 else ''}"
        f"{_trials(total)} on "
        f"{'GPU' if gpu else 'CPU'} at the assumed rate"
    )
    todo, todo_s = total, seconds
    if progress is not None:  # a rerun runs what is left (interrupted trials counted whole)
        todo = progress.left
        rest = work(suite, skip=progress.done) if suite.search is None else None
        todo_s = rest.macs / rate if isinstance(rest, Work) else seconds * todo / max(total, 1)
        text += f"; the {todo} left: ~{_hms(todo_s)}" if todo else "; nothing left to run"
    text += f", {_wall(suite, todo_s, todo, fits, where)}" if todo else ""
    return [
        *lines,
        text + "; an order of magnitude: norm layers, Ray's start-up and data loading are not "
        "counted (normbench.suite.describe)",
    ]


def _wall(suite: Suite, seconds: float, count: int, fits: int | None, where: str) -> str:
    """The wall time of `count` trials with the trials that run at once, and what bounds
    them: the trials there are (a search: one cell's samples at a time), max_concurrent, and
    the trials whose resources fit side by side on `where`."""
    limit = suite.max_concurrent
    if suite.search is not None:
        bounds = [(min(count, suite.search.num_samples), "a search runs one cell at a time")]
    else:
        bounds = [(count, f"{_trials(count)} to run")]
    bounds += [(limit, f"max_concurrent {limit}")] if limit else []
    if fits is not None:
        bounds += [(fits, f"{where or 'the nodes'} fits {_trials(fits)} side by side")]
    at_once, why = min(bounds, key=lambda b: b[0])
    if fits is None and not limit:
        why += "; room on the nodes unknown"
    at_once = max(1, at_once)
    return f"~{_hms(seconds / at_once)} wall time with {_trials(at_once)} at once ({why})"


def _trials(n: int) -> str:
    return f"{n} trial{'' if n == 1 else 's'}"


def _task_cost(spec: Any) -> Any:
    """The trial's task's `TaskCost`, or a string saying why there is none."""
    from normbench.tasks.registry import task_cost

    return task_cost(
        spec.task,
        spec.task_options,
        variant=spec.variant,
        variant_options=dict(spec.variant_options),
        backbone=spec.backbone,
        dataset=spec.dataset,
    )


def _data_facts(spec: Any) -> tuple[int, int, int | None, int, int] | None:
    """(training images after the validation carve, validation images, test images or None,
    channels, image size) from the facts the data set declares
    (`normbench.contract.DatasetFacts`) and the suite's data-set options."""
    from normbench.contract import dataset_facts
    from normbench.data import DATASETS

    facts = dataset_facts(DATASETS.get(spec.dataset).obj)
    if facts is None:
        return None
    opts = spec.dataset_options
    n = int(opts.get(facts.count_option or "", facts.train_images))
    test = opts.get(facts.test_count_option or "", facts.test_images)
    size = int(opts.get("image_size") or facts.image_size)
    train = int(n * (1 - float(opts.get("val_fraction", 0.1))))
    return train, n - train, None if test is None else int(test), facts.channels_with(opts), size


@functools.cache
def forward_macs(
    backbone: str, in_channels: int, image_size: int, options: tuple[tuple[str, Any], ...] = ()
) -> float:
    """Multiply-adds of one forward pass of one image (conv + linear) of the backbone with
    its (frozen) options, on the meta device."""
    import torch
    from torch import nn

    from normbench.models import BACKBONES
    from normbench.models.std_conv import split_harness_options

    total = [0.0]

    def count(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            total[0] += out.numel() * k / module.groups
        elif isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features

    class Through(nn.Module):  # a norm slot's stand-in: x through, whatever else it passes
        def forward(self, x: torch.Tensor, *conditioning: Any) -> torch.Tensor:
            return x

    fn = BACKBONES.get(backbone).obj
    # the options every backbone takes (weight standardization) act around the factory and
    # leave the multiply-adds as they are
    _, own = split_harness_options(dict(options))
    with torch.device("meta"):
        model = fn(10, lambda c: Through(), in_channels=in_channels, **own)
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.register_forward_hook(count)
        model.eval()
        with torch.no_grad():
            model(torch.empty(1, in_channels, image_size, image_size))
    return total[0]


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
