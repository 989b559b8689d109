"""Batch norm over contiguous sample chunks, each with its own statistics (GhostBN, FourThings).

`chunked_batch_norm` normalises a (N, G, M) tensor so that every contiguous block of `chunk`
samples uses the mean and biased variance of its own (chunk, M) values per group g. All equal
chunks go through one fused `F.batch_norm` call on a (chunk, K*G, M) rearrangement, and a short
last chunk through a second call: no Python loop over samples or chunks.

The per-chunk statistics come out of the same kernel: `F.batch_norm` is given scratch running
buffers set to zero and momentum 1, so afterwards they hold exactly the batch mean and the
unbiased (n/(n-1)) variance torch would feed into a running average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_length(batch: int, *, ghost_batch_size: int, num_splits: int | None) -> int:
    """Samples per chunk: `ghost_batch_size`, or torch.chunk's ceil(N / num_splits)."""
    if num_splits is not None:
        return max(-(-batch // num_splits), 1)
    return ghost_batch_size


def chunk_sizes(batch: int, chunk: int) -> list[int]:
    """Sizes of the contiguous chunks: full ones, then a short last one if N % chunk != 0."""
    full, rest = divmod(batch, chunk)
    return [chunk] * full + ([rest] if rest else [])


def chunked_batch_norm(
    x3: torch.Tensor,
    chunk: int,
    *,
    eps: float,
    stats_dtype: torch.dtype,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    want_stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Normalise each chunk of `x3` (N, G, M) with its own per-group statistics.

    `weight`/`bias` (G,) are applied inside the fused kernel when given. Returns the output
    (N, G, M) and, with `want_stats`, the per-chunk means and unbiased variances (K, G) in
    `stats_dtype`, chunks in batch order.
    """
    n = x3.shape[0]
    full, rest = divmod(n, chunk)
    parts = []
    if full:
        parts.append(
            _equal_chunks(x3[: full * chunk], full, eps, stats_dtype, weight, bias, want_stats)
        )
    if rest:
        parts.append(
            _equal_chunks(x3[full * chunk :], 1, eps, stats_dtype, weight, bias, want_stats)
        )
    y = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
    if not want_stats:
        return y, None, None
    mean = torch.cat([p[1] for p in parts])
    var = torch.cat([p[2] for p in parts])
    return y, mean, var


def _equal_chunks(
    xs: torch.Tensor,
    k: int,
    eps: float,
    stats_dtype: torch.dtype,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    want_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One fused batch norm over `k` equal chunks of `xs` (k*c, G, M)."""
    kc, g, m = xs.shape
    c = kc // k
    # (k*c, G, M) -> (c, k*G, M): channel k_i*G + g_i holds group g_i of chunk k_i.
    xk = xs if k == 1 else xs.reshape(k, c, g, m).transpose(0, 1).reshape(c, k * g, m)
    scratch_mean = scratch_var = None
    if want_stats:
        scratch_mean = torch.zeros(k * g, dtype=stats_dtype, device=xs.device)
        scratch_var = torch.zeros(k * g, dtype=stats_dtype, device=xs.device)
    w = weight.repeat(k) if (weight is not None and k > 1) else weight
    b = bias.repeat(k) if (bias is not None and k > 1) else bias
    # momentum 1 overwrites the zero scratch buffers with this call's mean and unbiased var.
    y = F.batch_norm(xk, scratch_mean, scratch_var, w, b, True, 1.0, eps)
    if k > 1:
        # (c, k*G, M) -> (k*c, G, M), back to batch order.
        y = y.reshape(c, k, g, m).transpose(0, 1).reshape(kc, g, m)
    if scratch_mean is None or scratch_var is None:
        return y, None, None
    return y, scratch_mean.reshape(k, g), scratch_var.reshape(k, g)
