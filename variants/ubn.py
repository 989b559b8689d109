"""UBN: Unified Batch Normalization (Wang, Zhang, Liu, Yan; ECCV 2024; arXiv 2311.15993),
docs/variants.md#ubn.

No official implementation is public; this follows the paper's text as pinned down in
docs/variants.md#ubn.
Training forward, per layer and call:

1. x_c = x + w_m * GAP(x)                                   (RBN centering; norm_rect)
2. s_B = mean_{i != j} cos(f_i, f_j); s_hat <- s_B on the first batch (sim_init="first_batch"),
   else s_hat <- (1 - alpha) s_hat + alpha s_B; sim_count += 1   (no_grad, fp32; B = 1 skips)
3. condensed = the flag set by end_epoch() ("epoch", the default) or s_hat > tau ("step"; True
   while s_hat is unset); forced True when fct is off or num_batches_tracked < min_updates
4. condensed: x_hat = BNcore(x_c) with batch statistics and a momentum update (torch rules);
   otherwise (below_tau="running") x_hat = (x_c - running_mean) / sqrt(running_var + eps), no
   update, frozen_steps += 1
5. x_s = x_hat * sigmoid(w_v * GAP(x_hat) + b_v)            (RBN scaling; norm_rect)
6. y = DWConv_kxk(x_s) + bias, identity init                (BNET affine; affine_rect)
   or y = gamma * x_s + beta without affine_rect.

Eval runs steps 1, 5, 6 with the running statistics and changes no state.

The similarity uses the O(B*D) identity s_B = (||sum_i u_i||^2 - sum_i ||u_i||^2) / (B(B-1)),
u_i = f_i / max(||f_i||, 1e-8) (`average_pairwise_cosine`), exact for the pairs i != j.

Implementation [choice]: steps 1, 4, 5 (and 6 without affine_rect) are, per (n, c), one affine
map of x, x_s = (x − m)·A + Y, computed by `normbench.variants._fused` from the per-instance
moments of x (two-pass mean m and biased variance v over H, W):
* x_c = x + w_m·m has per-instance mean (1 + w_m)·m and variance v, so BNcore's batch
  statistics of x_c follow by the law of total variance (exact, no E[x²] − E[x]²);
* x̂ = (x − m)·invstd + (m_c − μ)·invstd, so GAP(x̂) = (m_c − μ)·invstd and the scaling gate
  folds into A and Y; the frozen and eval branches use the running μ, invstd instead;
* the input gradient is derived by hand, the parameter gradients by autograd on the (N, C)
  coefficients: exact. One statistics pass and one affine pass replace the x_c, x̂, gate and
  x_s tensors (and their backward passes), so UBN costs about BN + the depthwise conv.
The similarity runs inside the coefficient step, under no_grad, from the moments already there
(each sample's squared norm H·W·Σ_c (v + m²), its GAP features) and one more read of x (the sum
of the unit vectors, `sample_weighted_sum`); x_c is never materialised (its shift is constant
over H, W). Inside `global_statistics` B is every rank's batch (the moments are exchanged, the
sum is all-reduced), so the similarity is the one of the whole batch, also at one image per
rank.

Ablation presets (paper Sec 4.3.1; `ABLATION_PRESETS`):
    BN                      fct=False norm_rect=False affine_rect=False
    BN+Stats Rectification  fct=True  norm_rect=False affine_rect=False
    UBN                     fct=True  norm_rect=True  affine_rect=True

When the decision is made [paper]: Sec 4.1 says the similarity is computed "in every training
iteration" and the feature condensation is "evaluated at the end of each epoch"; so the default
`decide="epoch"` keeps one decision per epoch: the harness calls `end_epoch()`, which sets
`condensed <- s_hat > tau`, and every step of the next epoch follows it (epoch 1 is BN, the
flag starts True). `decide="step"` (an option, not the paper) re-decides at every step.

Where the paper is ambiguous, the reading is an option and the default says why:
* Which tensor the similarity is computed on: `sim_source="input"` (the layer input, the
  paper's "batch X" of Sec 3.3.1) or "centered" (x_c); `sim_features="flatten"` (vec of each
  sample, C·H·W) or "gap" (C). Default: the literal reading, the input, flattened.
* The body of Eq. (3) is not available. Sec 3.3.1 says that below tau "the previously
  accumulated statistics are used and not updated with the current batch": `below_tau=
  "running"` (default, the literal reading) normalises with the running statistics, without
  gradient through them; "batch_no_update" reads "used" as "kept": it normalises with the
  batch statistics and only skips the running update. Above tau both are ordinary BN training.

The decision never leaves the device: the branches are blended with `torch.where` on the 0-d
bool buffer `condensed` (no `.item()`), so a training step has no host sync and
`torch.compile(fullgraph=True)` traces it. The one exception is a degenerate input whose
statistic has a single value (N·H·W = 1): raising the clear error of docs/variants.md#pitfalls
then needs the decision on the host.

Other choices (the paper is silent on these; docs/variants.md#ubn marks them as ours):
* The similarity is computed (and s_hat tracked for `diagnostics()`) even when fct is off, so
  the BN ablation row logs its condensation too; it then has no effect on the output.
* cosine eps is 1e-8 (torch's `cosine_similarity` default); the spec does not fix it.
* running_sim is fp32 (float64 when the layer is built in float64).
* In "epoch" mode a decision forced by min_updates is stored in `condensed` as the spec says,
  so the layer stays on batch statistics until the next end_epoch().
* `diagnostics()["batch_steps"]` is num_batches_tracked: every batch-statistics step updates.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.variants._core import (
    ContractNorm,
    batch_moments,
    check_batch_statistics,
    check_input,
    identity_kernel,
    register_affine,
    register_bn_buffers,
    update_running_stats,
    values_per_channel,
)
from normbench.variants._fused import (
    all_sum,
    fused_instance_affine,
    own_rows,
    sample_weighted_sum,
)
from normbench.variants._options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
)

COSINE_EPS = 1e-8

ABLATION_PRESETS: dict[str, dict[str, bool]] = {
    "bn": {"fct": False, "norm_rect": False, "affine_rect": False},
    "bn_stats_rect": {"fct": True, "norm_rect": False, "affine_rect": False},
    "ubn": {"fct": True, "norm_rect": True, "affine_rect": True},
}


def average_pairwise_cosine(features: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Mean cosine similarity over the pairs i != j of the rows of `features` (B, ...).

    O(B*D): with u_i = f_i / max(||f_i||, eps) and S = sum_i u_i, the result is
    (||S||^2 - sum_i ||u_i||^2) / (B(B-1)). Subtracting sum ||u_i||^2 rather than B keeps it
    equal to the eps-guarded Gram form when a sample is all zero. Computed in at least fp32.
    """
    b = features.shape[0]
    if features.dim() < 2 or b < 2:
        raise ValueError(
            "average_pairwise_cosine needs features of shape (B, ...) with B >= 2, but got "
            f"shape {tuple(features.shape)}"
        )
    f = features.reshape(b, -1)  # (B, D)
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    norms = torch.linalg.vector_norm(f, dim=1)  # (B,)
    inv = 1.0 / norms.clamp_min(eps)
    total = inv @ f  # S = f^T (1/||f||), one mat-vec: (D,)
    unit_sq = (norms * inv).square().sum()
    return (total.dot(total) - unit_sq) / (b * (b - 1))


class UnifiedBatchNorm2d(ContractNorm):
    """BN with a feature-condensation threshold on the statistics, RBN calibration, BNET affine.

    Constructor contract: `UnifiedBatchNorm2d(num_features, *, tau=0.15, alpha=0.1,
    decide="epoch", fct=True, norm_rect=True, affine_rect=True, kernel_size=3,
    sim_source="input", sim_features="flatten", sim_init="first_batch", min_updates=0,
    below_tau="running", eps=1e-5, momentum=0.1, device=None, dtype=None)`. Input and output
    (N, C, H, W). The harness calls `end_epoch()` after each training epoch (the default
    decision is per epoch, paper Sec 4.1) and logs `diagnostics()`.
    """

    paper = (
        "Unified Batch Normalization: Identifying and Alleviating the Feature Condensation in "
        "Batch Normalization and a Unified Framework (ECCV 2024), arXiv 2311.15993"
    )
    batch_dependent = True
    global_stats = True
    # short option names in a suite's row labels ("gn(G=8)"; normbench.suite.matrix)
    option_labels = {"kernel_size": "k"}
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor
    running_sim: torch.Tensor
    sim_count: torch.Tensor
    condensed: torch.Tensor
    frozen_steps: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        tau: float = 0.15,
        alpha: float = 0.1,
        decide: str = "epoch",
        fct: bool = True,
        norm_rect: bool = True,
        affine_rect: bool = True,
        kernel_size: int = 3,
        sim_source: str = "input",
        sim_features: str = "flatten",
        sim_init: str = "first_batch",
        min_updates: int = 0,
        below_tau: str = "running",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        name = type(self).__name__
        inf = float("inf")
        self.tau = check_float(name, "tau", tau, low=-inf, high=inf, allow_inf=True)
        self.alpha = check_float(name, "alpha", alpha, low=0.0, high=1.0)
        self.decide = check_choice(name, "decide", decide, ("step", "epoch"))
        self.fct = check_bool(name, "fct", fct)
        self.norm_rect = check_bool(name, "norm_rect", norm_rect)
        self.affine_rect = check_bool(name, "affine_rect", affine_rect)
        check_int(name, "kernel_size", kernel_size, minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: `kernel_size` must be odd, but got {kernel_size}")
        self.kernel_size = kernel_size
        self.sim_source = check_choice(name, "sim_source", sim_source, ("input", "centered"))
        self.sim_features = check_choice(name, "sim_features", sim_features, ("flatten", "gap"))
        self.sim_init = check_choice(name, "sim_init", sim_init, ("first_batch", "zero"))
        self.min_updates = check_int(name, "min_updates", min_updates, minimum=0)
        self.below_tau = check_choice(name, "below_tau", below_tau, ("running", "batch_no_update"))
        self._init_parameters(device, dtype)
        self._init_buffers(device, dtype)

    def _init_parameters(
        self, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> None:
        c, k = self.num_features, self.kernel_size
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.norm_rect:  # RBN calibration: w_m = 0, w_v = 0, b_v = 1 (gate sigmoid(1))
            self.center_weight = nn.Parameter(torch.zeros(c, **factory))
            self.scale_weight = nn.Parameter(torch.zeros(c, **factory))
            self.scale_bias = nn.Parameter(torch.ones(c, **factory))
        else:
            for pname in ("center_weight", "scale_weight", "scale_bias"):
                self.register_parameter(pname, None)
        if self.affine_rect:  # BNET depthwise kernel, identity init: centre tap 1
            kernel = torch.zeros(c, 1, k, k, **factory)
            kernel[:, 0, k // 2, k // 2] = 1.0
            self.weight = nn.Parameter(kernel)
            self.bias = nn.Parameter(torch.zeros(c, **factory))
        else:
            register_affine(self, c, device, dtype)

    def _init_buffers(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        register_bn_buffers(self, self.num_features, device, dtype)
        sim_dtype = torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)
        self.register_buffer("running_sim", torch.tensor(0.0, dtype=sim_dtype, device=device))
        self.register_buffer("sim_count", torch.tensor(0, dtype=torch.long, device=device))
        self.register_buffer("condensed", torch.tensor(True, device=device))
        self.register_buffer("frozen_steps", torch.tensor(0, dtype=torch.long, device=device))

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.num_features)
        coefficients = partial(self._coefficients, x)
        x_s = fused_instance_affine(x, coefficients, *self._coefficient_params())
        if not self.affine_rect:
            return x_s
        dt = x.dtype  # fp32 parameters must not promote a half input
        return F.conv2d(
            x_s,
            self.weight.to(dt),
            self.bias.to(dt),
            padding=self.kernel_size // 2,
            groups=self.num_features,
        )

    def _coefficient_params(self) -> tuple[torch.Tensor, ...]:
        """Parameters entering the per-(n, c) affine: RBN calibration, then γ, β (if plain)."""
        rect = (self.center_weight, self.scale_weight, self.scale_bias) if self.norm_rect else ()
        return rect + (() if self.affine_rect else (self.weight, self.bias))

    def _coefficients(
        self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, *params: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-5 (and 6 without affine_rect) as x_s = (x − mean)·A + Y per (n, c).

        mean, var (N, C): the per-instance moments of x (of every rank's batch inside
        `global_statistics`). x_c = x + w_m·GAP(x) has per-instance mean (1 + w_m)·mean and
        the same variance, so BNcore's batch statistics of x_c follow from the moments of x
        (law of total variance); x̂ = (x − mean)·invstd + (mean_c − μ)·invstd, whose GAP is
        the second term. Training first updates the similarity and decides (steps 2-3): a
        Python True (fct off) or a 0-d bool tensor that stays on the device.
        """
        rect = params[:3] if self.norm_rect else ()
        use_batch: bool | torch.Tensor = False  # eval: the running statistics
        if self.training:
            use_batch = self._train_decision(x, mean, var, rect[0] if rect else None)
        plane = x.shape[2] * x.shape[3]
        mean_c = mean * (1 + rect[0]) if rect else mean
        # N·H·W of the whole batch (every rank's with global statistics)
        mu, invstd = self._statistics(use_batch, mean.shape[0] * plane, mean_c, var)
        at_mean = (mean_c - mu) * invstd  # GAP(x̂), (N, C)
        scale = invstd.expand_as(at_mean)
        if rect:  # x_s = x̂ · sigmoid(w_v·GAP(x̂) + b_v)
            gate = torch.sigmoid(rect[1] * at_mean + rect[2])
            scale, at_mean = scale * gate, at_mean * gate
        if not self.affine_rect:  # y = γ·x_s + β
            gamma, beta = params[len(rect) :]
            scale, at_mean = scale * gamma, at_mean * gamma + beta
        return scale, at_mean

    def _statistics(
        self, use_batch: bool | torch.Tensor, count: int, mean_c: torch.Tensor, var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: (μ, 1/sqrt(σ² + eps)), (C,) each, and the running update when condensed.

        `use_batch` True: batch statistics of x_c (and the update); False: running statistics;
        a 0-d bool tensor: chosen on the device by `torch.where` (no host sync).
        """
        if use_batch is False:
            return self.running_mean, torch.rsqrt(self.running_var + self.eps)
        mu, batch_var = batch_moments(mean_c, var)
        batch = mu, torch.rsqrt(batch_var + self.eps)
        if use_batch is True:
            update_running_stats(self, mu, batch_var, count, self.momentum)
            return batch
        assert isinstance(use_batch, torch.Tensor)
        # NOTE: read before the update below, into one tensor: a compiled region must not
        # recompute them in its backward from the updated buffers (see BRN's `corrections`)
        c, dt = self.num_features, mean_c.dtype
        state = torch.cat([self.running_mean.to(dt), self.running_var.to(dt)])
        running = state[:c], torch.rsqrt(state[c:] + self.eps)
        update_running_stats(self, mu, batch_var, count, self.momentum, enabled=use_batch)
        if self.below_tau == "batch_no_update":
            return batch
        return (
            torch.where(use_batch, batch[0], running[0]),
            torch.where(use_batch, batch[1], running[1]),
        )

    def _train_decision(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        center_weight: torch.Tensor | None,
    ) -> bool | torch.Tensor:
        """Steps 2-3: similarity and decision; True means batch statistics (condensed).

        Returns Python True when fct is off, else a 0-d bool tensor that stays on the device.
        """
        with torch.no_grad():
            self._update_similarity(x, mean, var, center_weight)
            condensed = self._decision()
            self.condensed.fill_(condensed)
        values = values_per_channel(x)
        if values <= 1 and (
            condensed is True or self.below_tau == "batch_no_update" or bool(condensed)
        ):  # a one-value statistic (a shape, so this host read never happens in training)
            check_batch_statistics(self, x, values)
        if isinstance(condensed, torch.Tensor):
            self.frozen_steps.add_(condensed.logical_not())  # int64 += bool
        return condensed

    def _update_similarity(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        center_weight: torch.Tensor | None,
    ) -> None:
        """s_hat from this batch's average pairwise cosine similarity (B = 1 skips).

        B counts the whole statistics batch (every rank's inside `global_statistics`: `mean`
        and `var` are its moments). From the moments: each sample's squared norm
        H·W·Σ_c (var + mean²) and its GAP features; from x one more read, the sum of the
        unit vectors Σ_i f_i / ||f_i|| (`sample_weighted_sum`), summed over the ranks.
        """
        b = mean.shape[0]
        if b < 2:
            return
        centred = self.sim_source == "centered" and center_weight is not None
        source_mean = mean  # the GAP of the similarity's source tensor
        if centred and center_weight is not None:
            source_mean = mean * (1 + center_weight)
        if self.sim_features == "gap":  # (B, C) features: every rank's rows already
            s_b = average_pairwise_cosine(source_mean)
        else:
            plane = x.shape[2] * x.shape[3]
            norms = (plane * (var + source_mean.square()).sum(dim=1)).sqrt()  # (B,)
            inv = 1.0 / norms.clamp_min(COSINE_EPS)
            mine = own_rows(inv, x.shape[0])
            total = sample_weighted_sum(x, mine)  # (C, H, W)
            if centred and center_weight is not None:  # + Σ_i w_m·GAP(x_i) / ||f_i||
                shift = center_weight * (mine @ own_rows(mean, x.shape[0]))
                total = total + shift.to(total.dtype)[:, None, None]
            total = all_sum(total)
            unit_sq = (norms * inv).square().sum()
            s_b = (total.square().sum() - unit_sq) / (b * (b - 1))
        s_b = s_b.to(self.running_sim.dtype)
        ema = torch.lerp(self.running_sim, s_b, self.alpha)
        unset = self.sim_count == 0
        first = s_b if self.sim_init == "first_batch" else ema
        # torch.where, not `if`: no device sync here.
        self.running_sim.copy_(torch.where(unset, first, ema))
        self.sim_count.add_(1)

    def _decision(self) -> bool | torch.Tensor:
        """Step 3: condensed (batch statistics) or not (frozen running statistics).

        Python True when fct is off; otherwise a 0-d bool tensor, never read on the host.
        """
        if not self.fct:
            return True
        if self.decide == "epoch":
            cond = self.condensed.clone()
        else:  # True while s_hat is unset, then s_hat > tau with the updated s_hat
            cond = (self.sim_count == 0) | (self.running_sim > self.tau)
        if self.min_updates > 0:
            cond = cond | (self.num_batches_tracked < self.min_updates)
        return cond

    def end_epoch(self) -> None:
        """Epoch-level decision (paper Sec 4.1): in "epoch" mode, condensed <- s_hat > tau."""
        if self.decide != "epoch" or not self.fct:
            return
        with torch.no_grad():
            decided = torch.where(self.sim_count > 0, self.running_sim > self.tau, self.condensed)
            self.condensed.copy_(decided)

    def diagnostics(self) -> dict[str, float]:
        """Per-layer numbers for the training log (docs/variants.md#early-training); `tau`
        is the threshold the running similarity is held against (the reports draw it)."""
        return {
            "tau": float(self.tau),
            "running_sim": float(self.running_sim.item()),
            "batch_steps": float(self.num_batches_tracked.item()),
            "frozen_steps": float(self.frozen_steps.item()),
            "condensed": float(self.condensed.item()),
            "num_batches_tracked": float(self.num_batches_tracked.item()),
        }

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """Weight decay toward the identity affine pulls the BNET kernel to the centred delta
        (a (C,) gamma without `affine_rect` to 1); the rest decays toward 0."""
        w = self.weight
        return {"weight": identity_kernel(w) if w.ndim == 4 else torch.ones_like(w)}

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, tau={self.tau}, alpha={self.alpha}, decide={self.decide!r}, "
            f"fct={self.fct}, norm_rect={self.norm_rect}, affine_rect={self.affine_rect}, "
            f"kernel_size={self.kernel_size}, sim_source={self.sim_source!r}, "
            f"sim_features={self.sim_features!r}, sim_init={self.sim_init!r}, "
            f"min_updates={self.min_updates}, below_tau={self.below_tau!r}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )
