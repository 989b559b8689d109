"""Global statistics at the edges, on 2 gloo ranks: one image per rank, uneven batches, and
torch.compile.

* One sample per rank with 1x1 maps: the "more than one value per channel" check counts the
  whole statistics batch (2 values), so BN trains as on the 2-sample batch in one process;
  UBN's similarity is the one of the whole batch (a rank alone has no pair).
* Uneven per-rank batches (3 and 2 samples) raise ValueError on every rank, naming the sizes,
  instead of aborting both processes in the backend.
* DDP + `stats_scope: global` + `torch.compile(fullgraph=True)`: the collectives trace, so the
  model is one graph that does not recompile across steps, with eager's numbers.
* DDP + `stats_scope: global` on the accelerator path (the coefficients as compiled regions,
  forced on the CPU, EvoNorm-B0's batch variance included): eager's numbers.
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

from normbench.variants import global_statistics
from normbench.variants_api import create_norm

RANKS, C = 2, 4
DT = torch.float64


def _batch(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(shape, generator=g, dtype=DT)


def _tiny(rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, options, shape in (
        ("bn", {}, (2, C, 1, 1)),
        ("ubn", {"decide": "step"}, (2, C, 2, 2)),
    ):
        torch.manual_seed(0)
        layer = create_norm(name, C, **options).to(DT)
        x = _batch(shape, 1)[rank : rank + 1]
        with global_statistics():
            y = layer(x)
        out[name] = {"y": y.detach(), **{k: b.clone() for k, b in layer.named_buffers()}}
    return out


def _uneven(rank: int) -> str:
    layer = create_norm("iebn", C).to(DT)
    try:
        with global_statistics():
            layer(_batch((3 - rank, C, 2, 2), 2))
    except ValueError as exc:
        return str(exc)
    return "no error"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1),
        create_norm("iebn", C),
        nn.ReLU(),
        nn.Conv2d(C, C, 1),
        create_norm("ghost_bn", C, ghost_batch_size=4),  # ghost batches across the ranks
        create_norm("bn", C),
        nn.Conv2d(C, C, 1),
        # r and d relaxed from the second step: the warm-up counter and renorm averages too
        create_norm("brn", C, rmax=1.2, dmax=0.5, relax_from=1, rmax_at=2, dmax_at=2),
    ).to(DT)


def _compiled(rank: int) -> dict[str, Any]:
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    eager = nn.parallel.DistributedDataParallel(_model())
    inner = _model()
    compiled = nn.parallel.DistributedDataParallel(
        torch.compile(inner, backend=counter, fullgraph=True)
    )
    frames, diffs = [], []
    for step in range(3):
        x = _batch((6, 3, 5, 5), 10 + step)[3 * rank : 3 * rank + 3]
        outs = []
        for model in (eager, compiled):
            with global_statistics():
                y = model(x)
            y.square().sum().backward()
            outs.append(y.detach())
        frames.append(counter.frame_count)
        grads = zip(eager.module.parameters(), inner.parameters(), strict=True)
        diffs.append(max([float((outs[0] - outs[1]).abs().max())]
                         + [float((a.grad - b.grad).abs().max()) for a, b in grads]))  # fmt: skip
    return {"frames": frames, "diffs": diffs}


def _regions(rank: int) -> list[float]:
    """The accelerator path's compiled coefficient regions (forced on the CPU, `aot_eager`)
    inside global statistics: each step's largest difference from the eager coefficients."""
    from normbench.variants import _region

    def model() -> nn.Module:  # EvoNorm-B0: the element-wise layers' region (batch moments)
        return nn.Sequential(_model(), create_norm("evonorm_b0", C).to(DT))

    models = [nn.parallel.DistributedDataParallel(model()) for _ in range(2)]
    diffs = []
    for step in range(2):
        x = _batch((6, 3, 5, 5), 20 + step)[3 * rank : 3 * rank + 3]
        outs = []
        for model, mode in zip(models, ("eager", "compiled"), strict=True):
            with _region.coefficient_mode(mode), _region.compiled_with("aot_eager"):
                with global_statistics():
                    y = model(x)
                y.square().sum().backward()
            outs.append(y.detach())
        grads = zip(models[0].parameters(), models[1].parameters(), strict=True)
        diffs.append(max([float((outs[0] - outs[1]).abs().max())]
                         + [float((a.grad - b.grad).abs().max()) for a, b in grads]))  # fmt: skip
    return diffs


def _rank(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=RANKS)
    try:
        results = {
            "tiny": _tiny(rank),
            "uneven": _uneven(rank),
            "compiled": _compiled(rank),
            "regions": _regions(rank),
        }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("edges")
    init = f"file://{tempfile.mktemp(prefix='nbge', dir=out)}"
    mp.start_processes(_rank, args=(init, str(out)), nprocs=RANKS, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


@pytest.mark.parametrize(("name", "shape"), [("bn", (2, C, 1, 1)), ("ubn", (2, C, 2, 2))])
def test_one_image_per_rank_counts_the_whole_batch(ranks: list, name: str, shape: tuple) -> None:
    torch.manual_seed(0)
    options = {"decide": "step"} if name == "ubn" else {}
    reference = create_norm(name, C, **options).to(DT)
    y = reference(_batch(shape, 1)).detach()
    for rank, result in enumerate(ranks):
        got = result["tiny"][name]
        torch.testing.assert_close(got["y"], y[rank : rank + 1], rtol=1e-12, atol=1e-12)
        for key, buf in reference.named_buffers():
            torch.testing.assert_close(got[key], buf, rtol=1e-12, atol=1e-12, msg=key)
    if name == "ubn":  # the pair of the two ranks' images was seen
        assert int(reference.sim_count) == 1 and float(reference.running_sim) != 0.0


def test_uneven_batches_are_refused_on_every_rank(ranks: list) -> None:
    for result in ranks:
        message = result["uneven"]
        assert "same batch size on every rank" in message and "from 2 to 3" in message


def test_compiled_ddp_with_global_statistics_is_one_graph(ranks: list) -> None:
    for result in ranks:
        frames, diffs = result["compiled"]["frames"], result["compiled"]["diffs"]
        assert frames[0] >= 1 and frames == frames[:1] * len(frames), frames  # no recompiles
        assert max(diffs) < 1e-10, diffs


def test_compiled_regions_under_global_statistics_match_eager(ranks: list) -> None:
    """The coefficient regions (the CUDA path's) see the whole batch's moments too."""
    for result in ranks:
        assert max(result["regions"]) < 1e-10, result["regions"]


def test_the_layer_alone_refuses_one_value(ranks: list) -> None:
    """Without the context, one 1x1 image is refused as before (the check has teeth)."""
    with pytest.raises(ValueError, match="more than 1 value"):
        create_norm("bn", C).to(DT)(_batch((1, C, 1, 1), 1))
