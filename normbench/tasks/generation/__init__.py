"""Class-conditional image generation building blocks (SaBN's `GAN` experiments: SNGAN on
CIFAR-10 with the generator's class-conditional BN replaced by SaBN).

- `models`: SNGAN's ResNet generator with a registered class-conditional norm (`ccbn`, `sabn`,
  a branch-indexed plugin) and its spectral-norm projection discriminator.
- `training`: hinge loss, `GanRecipe` (the official scripts' values), `GanTrainer` (both
  optimisers, n_critic, the generator's moving average), sampling.
- `metrics`: IS and FID by torch-fidelity, the Inception weights' preflight.
- `task`: `Generation`, the registered task `generation` (FID headline, IS).
- `digits_features`: a small feature extractor for digits, registered with torch-fidelity.
"""
