"""Adversarial training with clean and adversarial branches (SaBN Sec 4.3; AdvProp): the task
`adversarial` (`task.AdversarialTraining`, registered in `normbench.tasks`) and its parts:

- `attack`: PGD in pixel space (`PGDAttack`, `pgd`) and `PixelModel`, a classifier on [0, 1]
  inputs with the data set's normalisation inside;
- `training`: one training step (`adversarial_step`): PGD through the adversarial branch, the
  clean and adversarial losses averaged; the branch indices (`BRANCHES`);
- `evaluate`: SA and PGD-10/PGD-20 RA per branch (`robust_accuracy`), the headline
  `adv_pgd20_ra`.
"""
