"""DARTS' first-order bilevel search (Liu, Simonyan & Yang, ICLR 2019, arXiv 1806.09055,
Sec 2.3 with xi = 0), with the recipe of SaBN's NAS experiments: the NAS-Bench-201 DARTS-V1 code
(`NAS/DARTS-V1.py`, `NAS/configs/nas-benchmark/algos/DARTS.config`, `NAS/scripts/DARTS-V1*.sh`).

Each step takes a batch of the weights' split and a batch of the architecture's split:

1. weight step: cross-entropy of the weight batch, backward, the gradient norm of every
   parameter clipped to `grad_clip` (the official `clip_grad_norm_(network.parameters())`, whose
   norm includes alpha's gradient from this backward), then SGD on the weights only;
2. architecture step: cross-entropy of the architecture batch, backward, Adam on alpha only.

The weights' SGD (lr 0.025, momentum 0.9, Nesterov, weight decay 5e-4 on every weight) follows
a per-epoch cosine from `lr` to `lr_min` over `epochs` (50), and the search stops after
`stop_epoch` epochs (the scripts' early stop, 35): the schedule is the 50-epoch one, cut. Alpha's
Adam: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3. Batch 64 for both splits.

`DartsSearch` holds the model, both optimisers and the schedule; `state_dict()` has tensors
and plain values only, so a checkpoint of it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


class Searchable(Protocol):
    """A supernet: a module whose call gives logits, with DARTS' two parameter sets."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def arch_parameters(self) -> list[nn.Parameter]: ...
    def weight_parameters(self) -> list[nn.Parameter]: ...
    def genotype(self) -> str: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class DartsRecipe:
    """The search's hyper-parameters (module doc; defaults are the official ones)."""

    epochs: int = 50
    stop_epoch: int = 35
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.stop_epoch <= self.epochs:
            problems.append(
                f"1 <= stop_epoch <= epochs must hold, but got (stop_epoch={self.stop_epoch}, "
                f"epochs={self.epochs})"
            )
        for name in ("batch_size", "lr", "arch_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, but got {getattr(self, name)!r}")
        for name in ("lr_min", "momentum", "weight_decay", "grad_clip", "arch_weight_decay"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, but got {getattr(self, name)!r}")
        if not all(0 <= b < 1 for b in self.arch_betas) or len(self.arch_betas) != 2:
            problems.append(f"arch_betas must be two numbers in [0, 1), got {self.arch_betas!r}")
        if problems:
            raise ValueError("DARTS recipe: " + "; ".join(problems))


@dataclass
class Sums:
    """Per-epoch sums on the device (read once, at the epoch's end)."""

    loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    count: int = 0

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss = self.loss.to(loss.device) + loss.detach() * n
        correct = (logits.detach().argmax(dim=1) == y).sum()
        self.correct = self.correct.to(correct.device) + correct
        self.count += n

    def read(self) -> tuple[float | None, float | None]:
        """(mean loss in nats, top-1 in %), None for an empty pass."""
        if self.count == 0:
            return None, None
        return float(self.loss) / self.count, 100.0 * float(self.correct) / self.count


class DartsSearch:
    """One search: the supernet, the weights' SGD and cosine schedule, alpha's Adam."""

    def __init__(self, model: Searchable, recipe: DartsRecipe | None = None) -> None:
        self.model, self.recipe = model, recipe or DartsRecipe()
        r = self.recipe
        self.weight_opt = torch.optim.SGD(
            model.weight_parameters(),
            lr=r.lr,
            momentum=r.momentum,
            weight_decay=r.weight_decay,
            nesterov=r.nesterov,
        )
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_opt, T_max=r.epochs, eta_min=r.lr_min
        )
        self.arch_opt = torch.optim.Adam(
            model.arch_parameters(),
            lr=r.arch_lr,
            betas=r.arch_betas,
            weight_decay=r.arch_weight_decay,
        )
        self.epoch = 0  # finished epochs

    @property
    def done(self) -> bool:
        return self.epoch >= self.recipe.stop_epoch

    def step(self, weight_batch: Batch, arch_batch: Batch, sums: tuple[Sums, Sums]) -> None:
        """One weight step, then one architecture step (module doc)."""
        x, y = weight_batch
        self.weight_opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if self.recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(self.model.parameters()), self.recipe.grad_clip)
        self.weight_opt.step()
        sums[0].add(logits, loss, y)

        x, y = arch_batch
        self.arch_opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.arch_opt.step()
        sums[1].add(logits, loss, y)

    def run_epoch(self, pairs: Iterable[tuple[Batch, Batch]]) -> dict[str, Any]:
        """Train one epoch on (weight batch, architecture batch) pairs; the record of it."""
        self.model.train()
        lr = self.weight_opt.param_groups[0]["lr"]
        sums = (Sums(), Sums())
        for weight_batch, arch_batch in pairs:
            self.step(weight_batch, arch_batch, sums)
        self.schedule.step()
        self.epoch += 1
        (w_loss, w_top1), (a_loss, a_top1) = sums[0].read(), sums[1].read()
        return {
            "epoch": self.epoch,
            "lr": lr,
            "weight_loss": w_loss,
            "weight_top1": w_top1,
            "arch_loss": a_loss,
            "arch_top1": a_top1,
            "genotype": self.model.genotype(),
            "alphas": [[float(p) for p in row] for row in self.alpha_probabilities()],
        }

    def alpha_probabilities(self) -> torch.Tensor:
        """softmax(alpha) per edge, (edges, operations)."""
        (alphas,) = self.model.arch_parameters()
        return F.softmax(alphas.detach().float().cpu(), dim=-1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "recipe": asdict(self.recipe),
            "model": self.model_state(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    def model_state(self) -> dict[str, torch.Tensor]:
        module = self.model
        assert isinstance(module, nn.Module)
        return module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; ValueError when it was written with another recipe."""
        if state["recipe"] != asdict(self.recipe):
            raise ValueError(
                f"the saved search used the recipe {state['recipe']}, not {asdict(self.recipe)}"
            )
        module = self.model
        assert isinstance(module, nn.Module)
        module.load_state_dict(state["model"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float | None]:
    """Mean cross-entropy (nats) and top-1 (%) of `model` in eval mode over `batches`."""
    model.eval()
    sums = Sums()
    for x, y in batches:
        logits = model(x)
        sums.add(logits, F.cross_entropy(logits, y), y)
    loss, top1 = sums.read()
    return {"loss": loss, "top1": top1}
