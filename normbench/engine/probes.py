"""Per-epoch probes: feature condensation at every norm layer, and the layers' diagnostics.

Condensation (UBN Definition 1, Appendix A): the average pairwise cosine similarity of the
samples of a fixed probe batch, measured on each norm layer's *input* (per-sample features
flattened to C*H*W). It is computed in O(B*D) from unit vectors u_i = f_i / max(|f_i|, eps):

    s = (|sum_i u_i|^2 - sum_i |u_i|^2) / (B (B - 1)),

which equals the mean of cos(f_i, f_j) over pairs i != j (the diagonal excluded; a zero sample
contributes 0, as in the eps-guarded Gram form). This is written here, independently of UBN's
own running similarity, so the probe can check that layer rather than repeat it.

The probe must not disturb training (docs/variants.md#pitfalls, state pollution): it runs in eval
mode under no_grad, restores every module's train flag, copies all buffers back afterwards (in case
a plugin layer updates state in eval), and runs inside `torch.random.fork_rng` so the global RNG
streams are untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_EPS = 1e-12


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Average cos(f_i, f_j) over pairs i != j of a (B, ...) batch, in fp32; NaN when B < 2."""
    b = features.shape[0]
    if b < 2:
        return math.nan
    f = features.detach().reshape(b, -1).float()  # (B, D)
    norms = f.norm(dim=1, keepdim=True)  # (B, 1)
    u = f / norms.clamp_min(_EPS)  # (B, D) unit rows, zero rows stay zero
    total = u.sum(dim=0)  # (D,)
    diag = (u * u).sum()  # sum_i |u_i|^2 (B, minus zero samples)
    return float((total.dot(total) - diag) / (b * (b - 1)))


def norm_classes() -> tuple[type[nn.Module], ...]:
    """Classes that count as norm layers: registered variants and torch's own norms."""
    from normbench.variants_api import VARIANTS

    classes: list[type[nn.Module]] = [
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
    ]
    # Only module classes can match a layer of a model (named_modules yields modules).
    classes += [
        e.obj
        for e in VARIANTS.entries()
        if isinstance(e.obj, type) and issubclass(e.obj, nn.Module)
    ]
    return tuple(classes)


def norm_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every norm layer, outermost first.

    A norm nested inside another norm (e.g. a BN held by a wrapper variant) is skipped: the
    wrapper is the layer the backbone placed.
    """
    classes = norm_classes()
    inside: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        inside.append(name)
        yield name, module


def condensation(model: nn.Module, probe: Any, autocast: Any = None) -> dict[str, float]:
    """{norm layer name: average pairwise cosine similarity of its input on `probe`}, the
    model's eval forward on the probe's inputs (images (P, C, H, W), or the structure a
    task's model takes, e.g. a list of images).

    Leaves parameters, buffers, train flags and RNG streams exactly as it found them.
    """
    layers = list(norm_layers(model))
    sims: dict[str, list[float]] = {name: [] for name, _ in layers}
    handles = [module.register_forward_pre_hook(_recorder(sims[name])) for name, module in layers]
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    first = probe if isinstance(probe, torch.Tensor) else probe[0]
    devices = [first.device] if first.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            with autocast if autocast is not None else contextlib.nullcontext():
                model(probe)
    finally:
        for h in handles:
            h.remove()
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
    return {name: sum(v) / len(v) for name, v in sims.items() if v}


def _recorder(store: list[float]) -> Any:
    def hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            value = mean_pairwise_cosine(args[0])
            if not math.isnan(value):
                store.append(value)

    return hook


def diagnostics(model: nn.Module) -> dict[str, dict[str, float]]:
    """{layer name: layer.diagnostics()} for every submodule that has that hook."""
    out: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        fn = getattr(module, "diagnostics", None)
        if callable(fn):
            out[name] = {str(k): _to_float(v) for k, v in fn().items()}
    return out


def _to_float(v: Any) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)
