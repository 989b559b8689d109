"""`describe(suite)`: the text `normbench run --dry-run` prints: trial matrix, resources and a
cost estimate.

The estimate is arithmetic, not a measurement of this suite:
images = sum over trials of epochs x images per epoch (train split, or limit_batches x batch);
work = 3 x forward multiply-adds per image x images (forward + backward ~ 3 forwards), with the
forward count taken from the backbone itself (conv and linear layers, counted by a forward
pass on the meta device, so nothing is allocated); time = work / an assumed rate:
* CPU: 25 GMAC/s per core, measured: ResNet-20 on 16x16 digits (10.1 M MACs forward per
  image, 1293 training images) takes ~1.7 CPU-seconds per epoch on one thread of this
  project's 2-core dev machine, averaged over the 11 built-in variants (23 GMAC/s);
* GPU: 8 TMAC/s per GPU, assumed for an A100-class card (about 10 s per ResNet-18 CIFAR-10
  epoch in fp32/tf32).
Norm layers are not counted (UBN, RBN, BNET and IEBN cost noticeably more than BN on small
backbones) and evaluation adds ~15%; read the result as an order of magnitude.
"""

from __future__ import annotations

import functools
from typing import Any

from normbench.options import freeze
from normbench.suite.loader import Suite

CPU_MACS_PER_S = 25e9  # per core
GPU_MACS_PER_S = 8e12  # per GPU


def describe(suite: Suite) -> str:
    """A plain-text summary of what `normbench run` would do with this suite."""
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
        f"  resources {per}: {r.cpus:g} CPU, {r.gpus:g} GPU; max_concurrent="
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
    lines += _table(trials)
    lines.append("")
    lines += _cost(suite)
    return "\n".join(lines)


def _table(trials: list[Any]) -> list[str]:
    head = ("trial_id", "dataset", "backbone", "variant", "batch", "seed", "epochs")
    rows = [
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
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), *(fmt.format(*r) for r in rows), f"{len(trials)} trials"]


def _cost(suite: Suite) -> list[str]:
    trials = suite.trials()
    samples = suite.search.num_samples if suite.search else 1
    images = macs = 0.0
    for t in trials:
        facts = _data_facts(t.spec)
        if facts is None:
            return [
                f"no cost estimate: data set {t.spec.dataset!r} declares no image count "
                "(decorate its factory with normbench.contract.DatasetFacts)"
            ]
        n, channels, size = facts
        per_epoch = min(n, t.spec.limit_batches * t.spec.batch_size) if t.spec.limit_batches else n
        imgs = t.spec.epochs * per_epoch * samples
        images += imgs
        options = freeze(t.spec.backbone_options)
        macs += 3 * imgs * forward_macs(t.spec.backbone, channels, size, options)
    gpu = suite.resources.gpus > 0
    rate = (
        GPU_MACS_PER_S * suite.resources.gpus
        if gpu
        else CPU_MACS_PER_S * max(1.0, suite.resources.cpus)
    )
    seconds = macs / rate
    conc = suite.max_concurrent or 1
    unit = "GPU" if gpu else "CPU"
    return [
        f"estimated images processed: {images:.3g} (epochs x train images x trials"
        + (f" x {samples} samples" if suite.search else "")
        + ")",
        f"estimated training work: {macs / 1e12:.3g} TMAC (3 x forward conv/linear MACs)",
        f"estimated time: {_hms(seconds)} of trial time on {unit} at the assumed rate "
        f"(~{_hms(seconds / conc)} with {conc} trials at once); see normbench.suite.describe",
    ]


def _data_facts(spec: Any) -> tuple[int, int, int] | None:
    """(training images after the validation carve, channels, image size) from the facts the
    data set declares (`normbench.contract.DatasetFacts`) and the suite's data-set options."""
    from normbench.contract import dataset_facts
    from normbench.data import DATASETS

    facts = dataset_facts(DATASETS.get(spec.dataset).obj)
    if facts is None:
        return None
    opts = spec.dataset_options
    n = int(opts.get(facts.count_option or "", facts.train_images))
    size = int(opts.get("image_size") or facts.image_size)
    channels = int(opts.get("channels") or facts.channels)
    return int(n * (1 - float(opts.get("val_fraction", 0.1)))), channels, size


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
