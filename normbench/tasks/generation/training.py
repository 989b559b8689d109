"""SNGAN's training step: hinge loss, n_critic discriminator updates per generator update, Adam
for both, the generator's exponential moving average; sampling for the metrics.

The recipe (`GanRecipe`'s defaults) is SaBN's `GAN/scripts/train_sngan_{ccbn,sabn}_cifar10.sh`:
Adam lr 2e-4 for both networks with betas (0.0, 0.9), n_critic 5, discriminator batch 64,
generator batch 128, 50000 generator iterations, Xavier-uniform init, hinge loss, no learning-
rate decay (the official `--lr_decay` flag is parsed and never used; `lr_decay: linear` is the
common SNGAN alternative, both rates to 0 at the last iteration), and evaluation with a moving
average of the generator's parameters (decay 0.999, the official `gen_avg_param`).

Hinge loss (Lim & Ye, "Geometric GAN", arXiv 1705.02894; as SNGAN):
    L_D = E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z, y'), y'))],   L_G = -E[D(G(z, y'), y')]
with real pairs (x, y) from the data and fake classes y' uniform over the classes.

One iteration takes a batch of real images (`n_critic * d_batch_size` in the recipe): n_critic
discriminator updates on consecutive slices (each with as many fresh fakes, detached; slices
differ by at most one image when the batch is no multiple of n_critic), then one generator
update on `g_batch_size` fresh samples. The official loop does the same with one real batch
per D step and a G step after every n_critic-th (its first G step comes after one D step, ours
after n_critic). `GanTrainer.updates` yields the losses in that order, each for one network's
optimiser, so whoever owns the optimisers (`GanTrainer.step` here, a training loop later)
runs every update and the iteration stays one batch of the data. The generator optimiser's
step ends the iteration (`end_iteration`, a step post-hook), whoever calls it.

The generator's optimiser may be given (`generator_optimizer`: normbench's training loop owns
it, with the trial's schedule); the discriminator's rate then follows the generator's
(d_lr x the generator's current rate / its rate at construction), and `state_dict` leaves the
given optimiser to its owner.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from normbench.tasks.generation.models import GAN, GenerationError, Generator


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))], a scalar."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)], a scalar."""
    return -fake_logits.mean()


@dataclass(frozen=True)
class GanRecipe:
    """SNGAN's CIFAR-10 recipe (SaBN's scripts) as defaults. `iterations` counts generator
    updates; `lr_decay` "none" or "linear" (both rates to 0 at `iterations`); `ema_decay` 0
    evaluates the generator itself."""

    iterations: int = 50_000
    n_critic: int = 5
    d_batch_size: int = 64
    g_batch_size: int = 128
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    lr_decay: Literal["none", "linear"] = "none"
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be an integer >= 1, but got {getattr(self, name)!r}"
            for name in ("iterations", "n_critic", "d_batch_size", "g_batch_size")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        problems += [
            f"{name} must be > 0, but got {getattr(self, name)!r}"
            for name in ("g_lr", "d_lr")
            if not getattr(self, name) > 0
        ]
        problems += [
            f"{name} must satisfy 0 <= {name} < 1, but got {getattr(self, name)!r}"
            for name in ("beta1", "beta2", "ema_decay")
            if not 0 <= getattr(self, name) < 1
        ]
        if self.lr_decay not in ("none", "linear"):
            problems.append(f"lr_decay must be 'none' or 'linear', but got {self.lr_decay!r}")
        if problems:
            raise GenerationError("; ".join(problems))

    @property
    def real_per_iteration(self) -> int:
        """Real images one generator iteration consumes: n_critic discriminator batches."""
        return self.n_critic * self.d_batch_size

    def epochs(self, train_images: int) -> int:
        """Passes over `train_images` (each loader batch one iteration, the last short one
        dropped) that hold `iterations` generator iterations: SaBN's `max_epoch`."""
        per_epoch = train_images // self.real_per_iteration
        if per_epoch < 1:
            raise GenerationError(
                f"{train_images} training images are fewer than one iteration's "
                f"n_critic x d_batch_size = {self.real_per_iteration}"
            )
        return -(-self.iterations // per_epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Update = tuple[Literal["discriminator", "generator"], torch.Tensor]


class GanTrainer:
    """Both optimisers, the schedule, the generator's average and the iteration count of one
    GAN (see the module doc); `state_dict()` holds all of it (tensors and plain values).

    `updates(real, labels)` yields one iteration's losses in order, each as (the network whose
    optimiser takes it, the loss with its graph): n_critic discriminator losses, then the
    generator's. Whoever owns the optimisers runs backward and steps that network's optimiser
    before asking for the next loss (each depends on the previous update), then calls
    `end_iteration()`. `step` is that owner for these two Adam optimisers; a training loop that
    owns optimisers per network would do the same with its own."""

    def __init__(
        self, gan: GAN, recipe: GanRecipe, generator_optimizer: Optimizer | None = None
    ) -> None:
        self.gan, self.recipe = gan, recipe
        betas = (recipe.beta1, recipe.beta2)
        own = generator_optimizer is None
        self.optimizers: dict[str, Optimizer] = {
            "generator": generator_optimizer
            or torch.optim.Adam(gan.generator.parameters(), recipe.g_lr, betas),
            "discriminator": torch.optim.Adam(gan.discriminator.parameters(), recipe.d_lr, betas),
        }
        self.owned = tuple(self.optimizers) if own else ("discriminator",)
        self.g_base_lr = float(self.optimizers["generator"].param_groups[0]["lr"])
        total = recipe.iterations

        def factor(it: int) -> float:
            return max(0.0, 1.0 - it / total) if recipe.lr_decay == "linear" else 1.0

        self.schedules = {
            k: torch.optim.lr_scheduler.LambdaLR(self.optimizers[k], factor)
            for k in (self.owned if own else ())
        }
        self.ema: AveragedModel | None = None
        if recipe.ema_decay > 0:
            avg = get_ema_multi_avg_fn(recipe.ema_decay)
            self.ema = AveragedModel(gan.generator, multi_avg_fn=avg, use_buffers=False)
        self.iteration = 0
        self.optimizers["generator"].register_step_post_hook(lambda *_: self.end_iteration())

    def _noise(self, gan: GAN, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        g = gan.generator
        z = torch.randn(n, g.latent_dim, device=device)
        return z, torch.randint(0, g.num_classes, (n,), device=device)

    def discriminator_loss(
        self, real: torch.Tensor, labels: torch.Tensor, gan: GAN | None = None
    ) -> torch.Tensor:
        """The hinge loss of D on real images in [-1, 1] (N, C, S, S) with their classes (N,)
        and as many fresh fakes (drawn without a graph, G in training mode as the official D
        step), with its graph to D's parameters. `gan`: another pair than the trainer's (a
        copy the training loop diagnoses a divergence on), for a loss nobody steps on."""
        gan = gan or self.gan
        g, d = gan.generator, gan.discriminator
        d.requires_grad_(True)  # in case the last generator loss froze it and no end came
        z, y_fake = self._noise(gan, real.shape[0], real.device)
        with torch.no_grad():
            fake = g(z, y_fake)
        return hinge_d_loss(d(real, labels), d(fake, y_fake))

    def generator_loss(self, device: torch.device, gan: GAN | None = None) -> torch.Tensor:
        """The hinge loss of `g_batch_size` fresh samples, with its graph to G's parameters
        only: D's parameters are frozen until the next discriminator loss."""
        gan = gan or self.gan
        gan.discriminator.requires_grad_(False)
        z, y = self._noise(gan, self.recipe.g_batch_size, device)
        return hinge_g_loss(gan.discriminator(gan.generator(z, y), y))

    def updates(
        self, real: torch.Tensor, labels: torch.Tensor, gan: GAN | None = None
    ) -> Iterator[Update]:
        """One generator iteration on real images in [-1, 1] (at least n_critic; the recipe's
        n_critic x d_batch_size) and their classes: n_critic discriminator losses on
        consecutive slices, then the generator's loss; each is computed after the previous
        one's update (`gan` as in `discriminator_loss`)."""
        k = self.recipe.n_critic
        if real.shape[0] < k:
            raise GenerationError(
                f"a GAN iteration takes at least n_critic = {k} real images (one per "
                f"discriminator update), but got a batch of {real.shape[0]}"
            )
        for x, y in zip(real.tensor_split(k), labels.tensor_split(k), strict=True):
            yield "discriminator", self.discriminator_loss(x, y, gan)
        yield "generator", self.generator_loss(real.device, gan)

    def end_iteration(self) -> None:
        """After the generator's update (its optimiser's step post-hook calls this): D
        trainable again, the schedules (or D's rate following G's), the average, the count."""
        self.gan.discriminator.requires_grad_(True)
        for s in self.schedules.values():
            s.step()
        if not self.schedules:
            scale = self.optimizers["generator"].param_groups[0]["lr"] / self.g_base_lr
            for group in self.optimizers["discriminator"].param_groups:
                group["lr"] = self.recipe.d_lr * scale
        if self.ema is not None:
            self.ema.update_parameters(self.gan.generator)
        self.iteration += 1

    def step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one iteration's updates with the two optimisers (the generator's step ends the
        iteration); returns the mean
        discriminator loss and the generator loss, detached on the device (no host sync)."""
        losses: dict[str, list[torch.Tensor]] = {"discriminator": [], "generator": []}
        for net, loss in self.updates(real, labels):
            optimizer = self.optimizers[net]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[net].append(loss.detach())
        return {f"{k[0]}_loss": torch.stack(v).mean() for k, v in losses.items()}

    def sampler(self) -> Generator:
        """The generator to evaluate: the parameter average with the generator's current
        buffers (the official evaluation), or the generator itself without an average."""
        if self.ema is None:
            return self.gan.generator
        avg = cast(Generator, self.ema.module)
        with torch.no_grad():
            for mine, current in zip(avg.buffers(), self.gan.generator.buffers(), strict=True):
                mine.copy_(current)
        return avg

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "optimizers": {k: self.optimizers[k].state_dict() for k in self.owned},
            "schedules": {k: s.state_dict() for k, s in self.schedules.items()},
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        for k in self.owned:
            self.optimizers[k].load_state_dict(state["optimizers"][k])
        for k, s in self.schedules.items():
            s.load_state_dict(state["schedules"][k])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255, as the official evaluation (x * 127.5 +
    127.5, clamped, truncated toward zero)."""
    return (images * 127.5 + 127.5).clamp(0.0, 255.0).to(torch.uint8)


@torch.no_grad()
def sample_images(
    generator: Generator, n: int, *, batch_size: int = 100, seed: int = 0
) -> torch.Tensor:
    """`n` uint8 images (n, C, S, S) on the CPU from `generator` in eval mode, classes
    uniform at random (as the official evaluation), noise and classes drawn on the CPU from
    `seed` (every evaluation of a trial sees the same noise)."""
    was_training = generator.training
    generator.eval()
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.latent_dim, generator=rng)  # (n, latent)
    y = torch.randint(0, generator.num_classes, (n,), generator=rng)
    device = next(generator.parameters()).device
    out = []
    try:
        for zs, ys in zip(z.split(batch_size), y.split(batch_size), strict=True):
            out.append(to_uint8(generator(zs.to(device), ys.to(device))).cpu())
    finally:
        generator.train(was_training)
    return torch.cat(out)
