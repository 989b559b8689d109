"""Batch norm written from the formulas of docs/variants.md#bncore, for the variant tests (float64).

Independent of the code under test: explicit means and biased variances over (N, H, W), the
EMA rule with an unbiased running variance, and torch's counter rule for momentum None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def c4(v: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1)."""
    return v.reshape(1, -1, 1, 1)


@dataclass
class RefBN:
    """BNcore (no affine) with its running statistics, as plain tensors."""

    num_features: int
    momentum: float | None = 0.1
    eps: float = 1e-5
    dtype: torch.dtype = torch.float64
    running_mean: torch.Tensor = field(init=False)
    running_var: torch.Tensor = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.running_mean = torch.zeros(self.num_features, dtype=self.dtype)
        self.running_var = torch.ones(self.num_features, dtype=self.dtype)

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ from batch statistics, then the buffer update (no gradient through it)."""
        n = x.numel() // x.shape[1]
        mu = x.mean(dim=(0, 2, 3))
        var = ((x - c4(mu)) ** 2).mean(dim=(0, 2, 3))
        with torch.no_grad():
            self.count += 1
            f = 1.0 / self.count if self.momentum is None else self.momentum
            self.running_mean = (1 - f) * self.running_mean + f * mu.detach()
            self.running_var = (1 - f) * self.running_var + f * var.detach() * n / (n - 1)
        return (x - c4(mu)) / torch.sqrt(c4(var) + self.eps)

    def eval_step(self, x: torch.Tensor) -> torch.Tensor:
        return (x - c4(self.running_mean)) / torch.sqrt(c4(self.running_var) + self.eps)

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        return self.train_step(x) if training else self.eval_step(x)


def gap(x: torch.Tensor) -> torch.Tensor:
    """Mean over (H, W), kept as (N, C, 1, 1)."""
    return x.mean(dim=(2, 3), keepdim=True)


def assert_buffers(layer: torch.nn.Module, ref: RefBN, *, counter: bool = True) -> None:
    torch.testing.assert_close(layer.running_mean, ref.running_mean)
    torch.testing.assert_close(layer.running_var, ref.running_var)
    if counter:
        assert int(layer.num_batches_tracked) == ref.count


def inputs(shape: tuple[int, ...], steps: int, seed: int = 0) -> list[torch.Tensor]:
    """`steps` float64 inputs with a per-channel offset and scale (not already normalised)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    scale = torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.5
    shift = torch.randn(c, generator=g, dtype=torch.float64)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64) * c4(scale) + c4(shift)
        for _ in range(steps)
    ]
