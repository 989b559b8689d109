"""`generation`: class-conditional image generation as a normbench task (SaBN's `GAN`
experiments: SNGAN with the generator's class-conditional norm from the registry).

The trial's variant is the generator's class-conditional norm, one branch per class (`ccbn`,
`sabn` or a branch-indexed plugin; a plain layer is refused in one line when the model is
built). The trial's backbone is not used: the generator and the spectral-norm projection
discriminator are SNGAN's (`models`), sized by the task's options (defaults: the paper's).

One training batch of real images is one generator iteration (`training.GanTrainer`): the
task runs n_critic discriminator updates on consecutive slices of the batch with the
discriminator's Adam, which it keeps (`state_dict`), then returns the generator's hinge loss,
which the loop steps with the optimiser `build_optimizer` gives it: the generator's Adam at the
trial's `lr` and `weight_decay`, with the task's betas, scheduled by the trial's schedule (the
paper's: `constant`). The discriminator's rate is `d_lr`, scaled as the generator's is. The
suite's batch size is the real images per iteration: SNGAN's 5 x 64 = 320.

Metrics: `FID` (the headline, lower is better) and `IS` (higher is better) on val and test,
each of `samples` images from the generator's moving average (noise and classes drawn from
`sample_seed`, the same every evaluation) against the split's real images, by torch-fidelity
with `feature_extractor` (`metrics.fidelity_metrics`); `loss` (the generator's hinge loss)
and `d_loss` (the discriminator's, the mean over its updates) on train. The SaBN paper gives
IS and FID side by side (IS first) and names neither its main metric; normbench headlines
FID, which compares with the real images (IS does not look at them) and is the one of the
two whose gap between the arms is large (SNGAN: FID 10.18 -> 8.97, IS 8.76 -> 8.89).
Without the Inception weights (torch's hub cache, or `feature_extractor_weights`), `normbench
run` stops at its preflight and a trial at its start, in one line saying which file to put
where (`preflight`).

Data: any labelled image data set; the loader's normalised images are mapped back to [0, 1]
with the data set's mean and std, then to [-1, 1] for the networks (the generator's tanh
range) and to uint8 for the metrics. Use no augmentation (`augment: false`), as SNGAN.
One device: the task steps the networks itself, so data parallelism is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from normbench.contract import Metric, Revision, Scoring
from normbench.errors import UserError
from normbench.spec import Recipe
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step
from normbench.tasks.generation.metrics import (
    INCEPTION,
    ensure_registered,
    fidelity_metrics,
    inception_weights,
    metric_names,
)
from normbench.tasks.generation.models import (
    GAN,
    GenerationError,
    build_gan,
    class_conditional,
    conditional_norm_layer,
)
from normbench.tasks.generation.training import GanRecipe, GanTrainer, sample_images

GENERATION = Scoring(
    metrics=(
        Metric("loss", "G loss", "", False, ("train",), "the generator's hinge loss"),
        Metric("d_loss", "D loss", "", False, ("train",), "the discriminator's hinge loss"),
        Metric("FID", "FID", "", False, ("val", "test"), "Frechet Inception distance to the split"),
        Metric("IS", "IS", "", True, ("val", "test"), "Inception score of the samples"),
    ),
    headline="FID",
    shown=("IS",),
)
RECIPE_OPTIONS = ("n_critic", "g_batch_size", "d_lr", "beta1", "beta2", "ema_decay")
SIZE_OPTIONS = ("latent_dim", "g_width", "d_width", "bottom_width", "samples", "isc_splits")


class Generation:
    """Class-conditional image generation (SNGAN, hinge loss), scored by FID and IS."""

    scoring = GENERATION
    # a plugin conditional norm that is a normalization-activation layer (models._relu_after)
    revision = Revision(2, "no ReLU after normalization-activation layers", when="norm_activation")

    def __init__(
        self,
        *,
        n_critic: int = 5,
        g_batch_size: int = 128,
        d_lr: float = 2e-4,
        beta1: float = 0.0,
        beta2: float = 0.9,
        ema_decay: float = 0.999,
        latent_dim: int = 128,
        g_width: int = 256,
        d_width: int = 128,
        bottom_width: int = 4,
        samples: int = 10_000,
        isc_splits: int = 10,
        sample_seed: int = 0,
        feature_extractor: str = INCEPTION,
        feature_extractor_weights: str | None = None,
    ) -> None:
        self.recipe = GanRecipe(
            n_critic=n_critic, g_batch_size=g_batch_size, d_lr=d_lr, beta1=beta1, beta2=beta2,
            ema_decay=ema_decay,
        )  # fmt: skip
        self.sizes = dict(
            latent_dim=latent_dim, g_width=g_width, d_width=d_width, bottom_width=bottom_width
        )
        self.samples, self.isc_splits, self.sample_seed = samples, isc_splits, sample_seed
        self.feature_extractor = feature_extractor
        self.weights = feature_extractor_weights
        # a trial without the weights stops here, before data and model (normbench train)
        self.preflight({"feature_extractor": feature_extractor,
                        "feature_extractor_weights": feature_extractor_weights})  # fmt: skip
        self.gan: GAN | None = None
        self.trainer: GanTrainer | None = None
        self.mean = self.std = torch.zeros(0)

    @classmethod
    def cost(cls, options: dict[str, Any]) -> str:
        """Why the dry run gives no estimate (normbench.contract.TaskCost)."""
        return (
            "counts no cost: a step trains the generator and the discriminator, and IS/FID "
            "run an Inception network over generated images, none of which the estimate counts"
        )

    @classmethod
    def check_options(
        cls,
        options: dict[str, Any],
        *,
        dataset: str | None = None,
        backbone: str | None = None,
        variant: str | None = None,
    ) -> dict[str, str]:
        """The recipe's ranges (`GanRecipe`), sizes >= 1, a known feature extractor, and a
        class-conditional `variant` (branch-indexed, taking num_branches)."""
        out: dict[str, str] = {}
        if variant is not None:
            try:
                conditional_norm_layer(variant, 2)
            except UserError as exc:
                out["variant"] = str(exc)
        for name in RECIPE_OPTIONS:
            if name in options:
                try:
                    GanRecipe(**{name: options[name]})
                except GenerationError as exc:
                    out[name] = str(exc)
        for name in SIZE_OPTIONS:
            value = options.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out[name] = f"{name} must be an integer >= 1, but got {value!r}"
        if options.get("isc_splits", 10) > options.get("samples", 10_000):
            out["isc_splits"] = "isc_splits must not exceed samples (each split needs a sample)"
        try:
            ensure_registered(options.get("feature_extractor", INCEPTION))
        except UserError as exc:
            out["feature_extractor"] = str(exc)
        return out

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> str:
        """The line `normbench run` prints before Ray starts: where the Inception weights are;
        FeatureWeightsMissing (one line saying which file to put where) when they are not."""
        extractor = options.get("feature_extractor", INCEPTION)
        if extractor != INCEPTION:
            return f"feature extractor {extractor} (not comparable with Inception's IS/FID)"
        return f"Inception weights {inception_weights(options.get('feature_extractor_weights'))}"

    def norm_widths(self) -> dict[str, frozenset[int]]:
        """The widths of the generator's class-conditional norms (two per block, each at
        `g_width`; its output BN is plain BN), which suite validation checks the variant's
        options at: the suite's backbone is never built."""
        return {"generator blocks (task.options.g_width)": frozenset({self.sizes["g_width"]})}

    def build_model(self, ctx: ModelContext) -> nn.Module:
        mean, std = ctx.info.get("mean"), ctx.info.get("std")
        if mean is None or std is None:
            raise GenerationError("the generation task needs the data set's mean and std")
        shape = (1, ctx.in_channels, 1, 1)
        self.mean = torch.tensor(mean, device=ctx.device).reshape(shape)
        self.std = torch.tensor(std, device=ctx.device).reshape(shape)
        norm = class_conditional(ctx.norm_layer, ctx.num_classes)
        self.gan = build_gan(
            ctx.num_classes, norm, channels=ctx.in_channels, image_size=ctx.image_size,
            latent_dim=self.sizes["latent_dim"], g_width=self.sizes["g_width"],
            d_width=self.sizes["d_width"], bottom_width=self.sizes["bottom_width"],
        )  # fmt: skip
        return self.gan.to(ctx.device)

    def build_optimizer(self, model: nn.Module, recipe: Recipe) -> Optimizer:
        """The generator's Adam (the trial's lr and weight decay, the task's betas), which the
        loop steps; the discriminator's is the trainer's."""
        assert model is self.gan and self.gan is not None
        r = self.recipe
        g_opt = torch.optim.Adam(
            self.gan.generator.parameters(), recipe.lr, (r.beta1, r.beta2),
            weight_decay=recipe.weight_decay,
        )  # fmt: skip
        self.trainer = GanTrainer(self.gan, r, generator_optimizer=g_opt)
        for group in self.trainer.optimizers["discriminator"].param_groups:
            group["weight_decay"] = recipe.weight_decay
        return g_opt

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        """Loader images (normalised by the data set's mean and std) -> [0, 1]."""
        return x.float() * self.std + self.mean

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        """n_critic discriminator updates (stepped here), then the generator's loss for the
        loop to step. Without gradients (the loop's divergence diagnosis on a copy of the
        model, a statistics recalibration) the losses are computed on `forward`'s networks
        and nothing is updated."""
        trainer = self._trainer()
        x, y = batch
        real = self._unit(x) * 2.0 - 1.0  # (N, C, S, S) in [-1, 1]
        gan = forward if isinstance(forward, GAN) else getattr(forward, "_orig_mod", forward)
        if not isinstance(gan, GAN):
            raise GenerationError(
                f"the generation task trains on one device; got the model as "
                f"{type(forward).__name__} (data parallelism is not supported)"
            )
        update = torch.is_grad_enabled() and gan is self.gan
        d_losses: list[torch.Tensor] = []
        for net, loss in trainer.updates(real, y, gan):
            if net == "generator":
                d_loss = torch.stack(d_losses).mean()
                return Step(loss, {"d_loss": d_loss * len(real)})
            if update:
                optimizer = trainer.optimizers["discriminator"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # no stale gradient in the loop's clip
            d_losses.append(loss.detach())
        raise AssertionError("GanTrainer.updates ends with the generator's loss")

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        """FID and IS of `samples` generated images against the split's real images."""
        trainer = self._trainer()
        real = [
            (self._unit(ctx.inputs(x)) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
            for x, _ in batches
        ]
        gathered = [t for part in ctx.gather(real) for t in part]
        if not gathered:
            return dict.fromkeys(("FID", "IS"))
        fake = sample_images(trainer.sampler(), self.samples, seed=self.sample_seed)
        found = fidelity_metrics(
            fake, torch.cat(gathered), feature_extractor=self.feature_extractor,
            weights=self.weights, device=ctx.device, isc_splits=self.isc_splits,
        )  # fmt: skip
        names = metric_names(self.feature_extractor)
        return {"FID": found[names["fid"]], "IS": found[names["is"]]}

    def _trainer(self) -> GanTrainer:
        if self.trainer is None:
            raise GenerationError("build_model and build_optimizer come before training")
        return self.trainer

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's optimiser, the generator's average and the iteration count (the
        generator's optimiser is the loop's, checkpointed by it)."""
        return self._trainer().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._trainer().load_state_dict(state)
