"""The task `darts`: SaBN's architecture search (its `NAS` experiments) through normbench's one
training loop: DARTS' first-order bilevel search on the NAS-Bench-201 space with the trial's
variant inside every candidate operation, then the found cell scored as the paper scores it
(recipe, numbers and readings: docs/recipes.md, "Architecture search with SaBN").

- **Model.** The supernet (`normbench.tasks.nas.supernet.Supernet`) on the skeleton of the
  trial's backbone, which must be `nas201` (its `channels` C and `cells_per_stage` N; its
  `genotype` is not used). Its operations' norms are the trial's variant (a branch-indexed one
  gets a branch per sub-architecture feeding the operation's source node); the skeleton's are
  affine BN as in the official supernet (`skeleton_norm: bn`), or the variant
  (`skeleton_norm: variant`).
- **Training step** (one per training batch): first the architecture step, DARTS' original
  order (Liu et al.'s `architect.step` precedes the weight step; the NAS-Bench-201 code runs
  them the other way round, the same alternation half a step apart): the cross-entropy of the
  next batch of the architecture stream (the data set's validation split, shuffled and
  augmented as training data, batch size the trial's), its gradient with respect to alpha
  alone, and Adam on alpha (lr `arch_lr`, betas (0.5, 0.999), weight decay
  `arch_weight_decay`). Then the weight step's loss on the training batch with alpha held
  fixed, which the loop minimises with the trial's recipe (SGD, clipping, schedule): alpha
  gets no gradient from it, so the loop's optimiser never moves alpha. Without gradients
  (the loop's divergence replay, `normbench evaluate`'s recalibration) only the weight loss is
  computed.
- **Metrics.** `loss` and `top1`: the supernet's cross-entropy (nats) and top-1 (%) on the
  weights' batches in training, on val and test in evaluation (the supernet in eval mode, as
  the official `valid_func`); `arch_loss` (train): the architecture steps' cross-entropy;
  `cell_top1`, the headline: the top-1 (%) of the found cell (the operation of largest alpha on
  every edge, `none` included) on val and test, from the NAS-Bench-201 table
  (`nas201_table` with `trust_pickle`: the table's `x-valid` and test sets of `nas201_dataset`)
  or, without a table, by training the cell as a classification trial through the one loop
  (`retrain_epochs` epochs of NAS-Bench-201's recipe at `retrain_batch_size`, BN, the trial's
  data set, seed, device and `limit_batches`): its last epoch's val and test top-1. A cell is
  scored once (the scores are kept by its text, and checkpointed). Each record's diagnostics
  hold softmax(alpha) under `architecture` (`"i<-j op"`: probability), so the found cell of
  every epoch can be read back (`normbench.tasks.nas.task.genotype_of_record`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normbench.contract import SPLITS, Metric, Scoring
from normbench.spec import SpecError
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step
from normbench.tasks.classification import Classification
from normbench.tasks.nas.data import arch_stream
from normbench.tasks.nas.search import retrain_spec
from normbench.tasks.nas.supernet import Supernet, edges, genotype_of
from normbench.tasks.nas.table import load_table, test_set
from normbench.variants_api import norm_layer as registry_norm_layer

ARCH_BETAS = (0.5, 0.999)  # the official DARTS-V1 Adam on alpha
# the table's data set for a normbench data set (its `nas201_dataset` default)
TABLE_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16": "ImageNet16-120"}
TABLE_NAMES = ("cifar10", "cifar10-valid", "cifar100", "ImageNet16-120")

DARTS = Scoring(
    metrics=(
        Metric("loss", "loss", "nats", False, SPLITS, "the supernet's mean cross-entropy"),
        Metric("top1", "supernet top-1", "%", True, SPLITS, "the supernet's top-1"),
        Metric(
            "arch_loss",
            "arch loss",
            "nats",
            False,
            ("train",),
            "mean cross-entropy of the architecture steps (the validation split's batches)",
        ),  # fmt: skip
        Metric(
            "cell_top1",
            "cell top-1",
            "%",
            True,
            ("val", "test"),
            "top-1 of the found cell: the NAS-Bench-201 table's, or the cell retrained",
        ),  # fmt: skip
    ),
    headline="cell_top1",
    shown=("top1",),
)


class Darts:
    """DARTS on the NAS-Bench-201 space, the found cell scored by the table or by retraining
    (module doc). Options: `arch_lr`, `arch_weight_decay`, `skeleton_norm` ("bn" | "variant"),
    `nas201_table` (a path), `trust_pickle`, `nas201_dataset` (the table's data set name),
    `retrain_epochs` (0: no retraining), `retrain_batch_size`."""

    scoring = DARTS

    def __init__(
        self,
        *,
        arch_lr: float = 3e-4,
        arch_weight_decay: float = 1e-3,
        skeleton_norm: str = "bn",
        nas201_table: str | None = None,
        trust_pickle: bool = False,
        nas201_dataset: str | None = None,
        retrain_epochs: int = 200,
        retrain_batch_size: int = 256,
    ) -> None:
        self.arch_lr, self.arch_weight_decay = arch_lr, arch_weight_decay
        self.skeleton_norm = skeleton_norm
        self.table_path, self.trust_pickle = nas201_table, trust_pickle
        self.table_dataset = nas201_dataset
        self.retrain_epochs, self.retrain_batch_size = retrain_epochs, retrain_batch_size
        self.scores: dict[str, dict[str, float | None]] = {}  # cell text -> {split: top-1}
        self.spec: Any = None  # the trial's, and the loop (build_model)
        self.retrain: Callable[..., Any] | None = None
        self.size: dict[str, Any] = {}  # the supernet's channels and cells_per_stage

    @classmethod
    def cost(cls, options: dict[str, Any]) -> str:
        """Why the dry run gives no estimate (normbench.contract.TaskCost)."""
        return (
            "counts no cost: its supernet runs every candidate operation of every edge, and "
            "scoring the found cell may retrain it (retrain_epochs), none of which is one "
            "forward of the nas201 backbone the estimate counts"
        )

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, dataset: str | None = None, backbone: str | None = None
    ) -> dict[str, str]:
        """The task's rules, at suite validation (module doc)."""
        out: dict[str, str] = {}
        if backbone is not None and backbone != "nas201":
            out["backbone"] = (
                "it searches the NAS-Bench-201 space, so its backbone must be 'nas201' "
                f"(whose channels and cells_per_stage size the supernet), not {backbone!r}"
            )
        if options.get("skeleton_norm", "bn") not in ("bn", "variant"):
            out["skeleton_norm"] = "skeleton_norm must be 'bn' (the official supernet) or 'variant'"
        table = options.get("nas201_table")
        if table is not None and not options.get("trust_pickle", False):
            out["nas201_table"] = (
                f"nas201_table {table} is a pickle file, and unpickling a file can run code "
                "hidden in it; add trust_pickle: true only for the NAS-Bench-201 release file "
                "from a source you trust"
            )
        elif table is not None and not Path(str(table)).is_file():
            out["nas201_table"] = f"no file at {table} (the NAS-Bench-201 release file)"
        name = options.get("nas201_dataset") or TABLE_DATASETS.get(dataset or "")
        known = dataset is not None or "nas201_dataset" in options
        if table is not None and known and name not in TABLE_NAMES:
            out["nas201_dataset"] = (
                f"the NAS-Bench-201 table holds {', '.join(TABLE_NAMES)}; set nas201_dataset to "
                f"the one the found cell is scored on (data set {dataset!r} has none)"
            )
        epochs = options.get("retrain_epochs", 200)
        if isinstance(epochs, int) and epochs < 0:
            out["retrain_epochs"] = f"retrain_epochs must be >= 0, but got {epochs}"
        if table is None and epochs == 0:
            out["retrain_epochs"] = (
                "nothing would score the found cell: give nas201_table or retrain_epochs > 0"
            )
        if options.get("retrain_batch_size", 256) < 1:
            out["retrain_batch_size"] = "retrain_batch_size must be >= 1"
        for name in ("arch_lr", "arch_weight_decay"):
            value = options.get(name, 1.0)
            if not value >= 0 or (name == "arch_lr" and value == 0):
                out[name] = f"{name} must be {'> 0' if name == 'arch_lr' else '>= 0'}"
        return out

    # -- the contract ----------------------------------------------------------------------
    def build_model(self, ctx: ModelContext) -> nn.Module:
        spec = ctx.spec
        if spec is None:
            raise SpecError("task 'darts' needs the trial's spec in its model context")
        if spec.devices > 1:
            raise SpecError(
                "task 'darts' runs on one device (two forwards per step, the second's "
                "gradient for alpha alone); set devices: 1"
            )
        options = dict(spec.backbone_options)
        self.size = {k: options[k] for k in ("channels", "cells_per_stage") if k in options}
        skeleton = ctx.norm_layer if self.skeleton_norm == "variant" else registry_norm_layer("bn")
        torch_state = torch.random.get_rng_state()  # the weights' init follows the seed alone
        stream = arch_stream(
            spec.dataset,
            batch_size=spec.batch_size,
            device=ctx.device,
            seed=spec.seed,
            **spec.dataset_options,
        )
        torch.random.set_rng_state(torch_state)
        model = Supernet(
            ctx.num_classes,
            ctx.norm_layer,
            skeleton_norm_layer=skeleton,
            in_channels=ctx.in_channels,
            **self.size,
        ).to(ctx.device)
        self.spec, self.retrain = spec, ctx.run_trial
        return self.attach(model, stream)

    def attach(self, model: Any, stream: Any) -> Any:
        """Search `model` (a supernet: `arch_parameters()`, `fixed_architecture()`,
        `genotype()`) with architecture batches from `stream` (`next()`, `steps`, `seek()`);
        alpha's Adam is built here. Returns `model`."""
        self.model, self.arch = model, stream
        self.arch_opt = torch.optim.Adam(
            model.arch_parameters(),
            lr=self.arch_lr,
            betas=ARCH_BETAS,
            weight_decay=self.arch_weight_decay,
        )
        self.classification = Classification()
        return model

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        sums: dict[str, torch.Tensor] = {}
        if torch.is_grad_enabled():
            sums["arch_loss"] = self.architecture_step(forward)
        x, y = batch
        with self.model.fixed_architecture():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        hits = (logits.detach().argmax(dim=1) == y).sum()
        sums["top1"] = 100.0 * hits.double()
        if "arch_loss" not in sums:  # no architecture step without gradients
            sums["arch_loss"] = torch.zeros((), dtype=torch.float64, device=loss.device)
        return Step(loss, sums)

    def architecture_step(self, forward: Callable[..., Any]) -> torch.Tensor:
        """Adam on alpha with the next architecture batch; its loss summed over the batch."""
        x, y = self.arch.next()
        loss = F.cross_entropy(forward(x).float(), y)
        (alphas,) = self.model.arch_parameters()
        (alphas.grad,) = torch.autograd.grad(loss, [alphas])
        self.arch_opt.step()
        alphas.grad = None
        return loss.detach().double() * len(y)

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        values = self.classification.evaluate(forward, batches, ctx)
        return {
            "loss": values["loss"],
            "top1": values["top1"],
            "cell_top1": self.cell_score(self.model.genotype(), ctx.split),
        }

    # -- scoring the found cell -------------------------------------------------------------
    def cell_score(self, genotype: str, split: str | None) -> float | None:
        """The found cell's top-1 (%) on `split` ("val" or "test"; None gives None)."""
        if split not in ("val", "test"):
            return None
        if not self.table_path and self.retrain is None:
            return None  # built outside the loop (the conformance kit's bare trials)
        if genotype not in self.scores:
            self.scores[genotype] = (
                self.table_scores(genotype) if self.table_path else self.retrain_scores(genotype)
            )
        return self.scores[genotype][split]

    def table_scores(self, genotype: str) -> dict[str, float | None]:
        assert self.table_path is not None
        table = load_table(self.table_path, trust_pickle=self.trust_pickle)
        name = self.table_dataset or TABLE_DATASETS[self.spec.dataset]
        valid = None if name == "cifar10" else table.accuracy(genotype, name, "x-valid")
        return {"val": valid, "test": table.accuracy(genotype, name, test_set(name))}

    def retrain_scores(self, genotype: str) -> dict[str, float | None]:
        """Train the cell as a classification trial (module doc); every RNG as it was after."""
        spec, run = self.spec, self.retrain
        assert run is not None
        trial = retrain_spec(
            genotype, spec.dataset, **self.size, epochs=self.retrain_epochs,
            batch_size=self.retrain_batch_size, seed=spec.seed,
            dataset_options=spec.dataset_options, eval_batch_size=spec.eval_batch_size,
            limit_batches=spec.limit_batches, device=spec.device, num_threads=spec.num_threads,
            deterministic=spec.deterministic, plugins=spec.plugins, probe=False,
        )  # fmt: skip
        with _rng_kept(), torch.enable_grad():
            last = list(run(trial))[-1]
        return {"val": last.get("val_top1"), "test": last.get("test_top1")}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "arch_opt": self.arch_opt.state_dict(),
            "arch_steps": self.arch.steps,
            "scores": {k: dict(v) for k, v in self.scores.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.arch.seek(int(state["arch_steps"]))
        self.scores = {k: dict(v) for k, v in state["scores"].items()}


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Python's, NumPy's and torch's RNG states restored on exit (a nested trial seeds them)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def genotype_of_record(record: dict[str, Any]) -> str:
    """The found cell of an epoch record of task `darts`: the argmax of its softmax(alpha)
    (diagnostics `architecture`) on every edge."""
    probs = record["diagnostics"]["architecture"]
    names = [key.split(" ", 1)[1] for key in probs if key.startswith("1<-0 ")]
    table = torch.tensor([[probs[f"{i}<-{j} {op}"] for op in names] for i, j in edges()])
    return genotype_of(table, names)
