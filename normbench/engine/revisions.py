"""Which revision of the code computes a trial: its layer's, backbone's, data set's, task's.

Each component (layer, backbone, data set, task) declares the changes to what it computes
as its `revision` attribute (`normbench.contract.Revision`; the registries check the
declaration). A trial's revision of a component is the latest change that applies to it (a
change with `when` applies only when the trial's norm layer has that attribute true), else
1. `stamp` writes the revisions that are not 1 into the spec, so they enter the trial id,
and only then: a trial no change touched keeps its id
(docs/reproducibility.md#computation-revisions).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from normbench.contract import Revision, revision_at
from normbench.data.registry import DATASETS
from normbench.models.registry import BACKBONES, norm_widths
from normbench.options import freeze
from normbench.registry import Registry
from normbench.spec import REVISED_KINDS as KINDS
from normbench.spec import TrialSpec
from normbench.tasks.registry import TASKS
from normbench.variants_api import VARIANTS


def _registry(kind: str) -> Registry:
    return {"variant": VARIANTS, "backbone": BACKBONES, "dataset": DATASETS, "task": TASKS}[kind]


def changes(spec: TrialSpec) -> dict[str, Revision | None]:
    """{kind: the latest change of the trial's component of that kind that applies to it}
    (None: revision 1). Raises what the registries raise for an unknown name."""

    def flag(attribute: str) -> bool:  # keyed by the class: a reloaded plugin is asked anew
        return _norm_flag(
            VARIANTS.get(spec.variant).obj, freeze(spec.variant_options), spec.backbone,
            freeze(spec.backbone_options), attribute,
        )  # fmt: skip

    return {
        kind: revision_at(_registry(kind).revisions(getattr(spec, kind)), flag) for kind in KINDS
    }


def revisions(spec: TrialSpec) -> dict[str, int]:
    """{kind: revision} of every component the trial uses (what its records carry)."""
    return {kind: 1 if r is None else r.number for kind, r in changes(spec).items()}


def stamp(spec: TrialSpec) -> TrialSpec:
    """`spec` with `revisions` set from the code's declarations (only those that are not 1)."""
    now = {kind: n for kind, n in revisions(spec).items() if n != 1}
    return spec if now == spec.revisions else spec.replace(revisions=now)


def notes(spec: TrialSpec) -> dict[str, str]:
    """{kind: one line} for each component the trial uses at a revision other than 1:
    "evonorm_b0 in resnet20: revision 2 (no ReLU after normalization-activation layers)"."""
    out = {}
    for kind, r in changes(spec).items():
        if r is None:
            continue
        name = getattr(spec, kind)
        if r.when is not None:  # the change is the backbone's (or task's) for this layer
            name = f"{spec.variant} in {name}"
        elif kind in ("dataset", "task"):
            name = f"{kind} {name}"
        out[kind] = f"{name}: revision {r.number}" + (f" ({r.reason})" if r.reason else "")
    return out


@functools.cache
def _norm_flag(
    cls: type,
    options: tuple[tuple[str, Any], ...],
    backbone: str,
    backbone_options: tuple[tuple[str, Any], ...],
    attribute: str,
) -> bool:
    """Whether the trial's norm layer has `attribute` true: the class's own bool, else the
    layer built at the backbone's smallest norm width (FRN decides with its options), on the
    meta device, else on the CPU. A layer that builds on neither does not have it: a trial's
    id must not depend on the machine that computes it (a constructor that needs CUDA), and a
    layer that sets the attribute only on its instances is told to declare it on its class
    (docs/reproducibility.md#computation-revisions)."""
    value = getattr(cls, attribute, None)
    if isinstance(value, bool):
        return value
    try:
        width = min(norm_widths(backbone, backbone_options, False), default=64)
    except Exception:
        width = 64
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                layer = cls(width, **dict(options))
        except Exception:
            continue
        return bool(getattr(layer, attribute, False))
    return False


def code_change(spec: TrialSpec) -> str | None:
    """How the revisions of the code here differ from those `spec` was computed with (its
    components' plugins loaded), in words, or None when they agree."""
    now = stamp(spec)
    if now.revisions == spec.revisions:
        return None
    was, new, lines = spec.revisions, now.revisions, notes(now)
    kinds = [k for k in KINDS if was.get(k, 1) != new.get(k, 1)]
    return "; ".join(
        f"{lines.get(k) or f'{getattr(spec, k)} ({k}): revision 1'} now, revision "
        f"{was.get(k, 1)} when it ran"
        for k in kinds
    )
