"""Global statistics scope under real DDP: 2 gloo ranks == the same layer on the one batch.

Every built-in batch-dependent layer (and the option settings that take its other code
paths) runs two training steps and an eval forward as a 2-rank DDP module (float64, gloo,
`global_statistics` installed as a DDP trial with `stats_scope: global` does). The reference
is the same layer, in one process, on the concatenated 2 x 6 batch. Compared: outputs, input
gradients, parameter gradients (DDP averages them over ranks, so x 2 against the sum of the
ranks' losses), every buffer after each step (running statistics, counters, UBN's
similarity), and the eval output.

One pair of gloo processes runs every case (process start-up dominates).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from normbench.variants import BUILTIN_VARIANTS
from normbench.variants._fused import global_statistics

RANKS, PER_RANK, C, HW = 2, 6, 8, 4
# Cases: (variant, options). Several take a layer's other code paths: ghost batches that
# straddle the two ranks (4 | 12, 4 ∤ 6), one ghost batch over both ranks, BGN's channel
# groups / G = C / spatial groups, FourThings with example groups and whole-batch statistics,
# UBN with its per-step similarity decision and with the epoch decision.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    name: (name, {}) for name, cls in BUILTIN_VARIANTS.items() if cls.batch_dependent
}
CASES.update(
    {
        "ghost_bn": ("ghost_bn", {"ghost_batch_size": 4}),
        "ghost_bn(one ghost batch)": ("ghost_bn", {"ghost_batch_size": 12}),
        "ghost_bn(num_splits)": ("ghost_bn", {"num_splits": 3}),
        "bgn": ("bgn", {"num_groups": 2}),
        "bgn(G=C)": ("bgn", {"num_groups": 8}),
        "bgn(spatial)": ("bgn", {"num_groups": 16, "allow_spatial_groups": True}),
        "fourthings": ("fourthings", {"examples_per_group": 4, "channels_per_group": 2}),
        "fourthings(whole batch)": ("fourthings", {"channels_per_group": 2}),
        "ubn": ("ubn", {"decide": "step", "tau": 0.05, "sim_init": "zero"}),
        "ubn(epoch, centered gap)": ("ubn", {"sim_source": "centered", "sim_features": "gap"}),
        "bn(momentum None)": ("bn", {"momentum": None}),
        # r and d from the first step, clipped on some channels and not on others
        "brn(relaxed)": ("brn", {"relax_from": 0, "rmax_at": 1, "dmax_at": 1, "rmax": 1.5}),
        "brn(momentum None)": ("brn", {"momentum": None, "relax_from": 0, "rmax_at": 0}),
        "evonorm_b0(momentum None)": ("evonorm_b0", {"momentum": None}),
    }
)
STEPS = 2


def _layer(case: str) -> nn.Module:
    name, options = CASES[case]
    torch.manual_seed(0)
    layer = BUILTIN_VARIANTS[name](C, **options).double()
    with torch.no_grad():  # parameters off their identity init, so every gradient matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch (12, C, HW, HW) of a step and the loss weights: loss = sum(y * w)."""
    g = torch.Generator().manual_seed(100 + step)
    x = 2.0 + 3.0 * torch.randn(RANKS * PER_RANK, C, HW, HW, generator=g, dtype=torch.float64)
    x[:, :, 0, 0] += torch.arange(RANKS * PER_RANK, dtype=torch.float64)[:, None]
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, w


def _run(layer: nn.Module, rows: slice, scale: float, sync: bool) -> list[dict[str, Any]]:
    """Per step: output, input gradient, parameter gradients (x `scale`), buffers; then eval."""
    out = []
    for step in range(STEPS):
        x, w = _data(step)
        x = x[rows].clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        with global_statistics() if sync else _nothing():
            y = layer(x)
        (y * w[rows]).sum().backward()
        raw = layer.module if isinstance(layer, nn.parallel.DistributedDataParallel) else layer
        out.append(
            {
                "y": y.detach(),
                "x.grad": x.grad,
                **{f"grad {k}": scale * p.grad for k, p in raw.named_parameters()},
                **{f"buffer {k}": b.clone() for k, b in raw.named_buffers()},
            }
        )
        if hasattr(raw, "end_epoch"):
            raw.end_epoch()
    layer.eval()
    out.append({"eval y": layer(_data(STEPS)[0][rows]).detach()})
    return out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _rank(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=RANKS)
    try:
        results = {}
        for case in CASES:
            ddp = nn.parallel.DistributedDataParallel(_layer(case))
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            results[case] = _run(ddp, rows, float(RANKS), sync=True)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("global")
    init = f"file://{tempfile.mktemp(prefix='nbgs', dir=out)}"
    mp.start_processes(_rank, args=(init, str(out)), nprocs=RANKS, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


# float64 throughout: the only differences are summation orders (measured: max |difference|
# <= 1.1e-15 x the largest |value| of the compared tensor, over every case and key).
RTOL, ATOL = 1e-12, 1e-12


@pytest.mark.parametrize("case", list(CASES))
def test_global_scope_equals_the_layer_on_the_whole_batch(ranks: list, case: str) -> None:
    reference = _run(_layer(case), slice(None), 1.0, sync=False)
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        got_steps = result[case]
        assert len(got_steps) == len(reference)
        for step, (got, want) in enumerate(zip(got_steps, reference, strict=True)):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if key in ("y", "x.grad", "eval y"):
                    value = value[rows]
                where = f"{case} rank {rank} step {step}: {key}"
                torch.testing.assert_close(got[key], value, rtol=RTOL, atol=ATOL, msg=where)


def test_the_device_scope_differs(ranks: list) -> None:
    """The comparison has teeth: without the context the ranks' BN outputs are different."""
    x, _ = _data(0)
    local = _layer("bn")(x[:PER_RANK])
    assert not torch.allclose(local, ranks[0]["bn"][0]["y"], rtol=1e-6)
