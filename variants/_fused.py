"""Fused per-instance affine normalisation: one statistics pass, one affine pass, exact grads.

Every BN-family layer built here (BGN with G | C, GhostBN, IEBN, RBN, UBN, FourThings) maps its
input, per (sample, channel), by an affine function whose coefficients depend on the
per-instance moments m = mean over (H, W) and v = biased variance over (H, W), both (N, C), and
on parameters:

    y[n, c] = (x[n, c] − m[n, c]) · A[n, c] + Y[n, c]      (Y = the output at the instance mean)

`fused_instance_affine(x, coefficients, *params)` computes m and v, calls
`coefficients(m, v, *params) -> (A, Y)` (ordinary torch ops on (N, C) tensors, so autograd
differentiates them), and writes y = x·A + (Y − m·A) in one pass. Its backward needs two
reductions, S_g = Σ_hw g and S_gc = Σ_hw g·(x − m), then the small graph's vector-Jacobian
product with (S_gc, S_g), then one pass for the input gradient

    dL/dx = g·A + (x − m)·2·dL/dv / HW + (dL/dm − S_g·A) / HW

(the −S_g·A removes the explicit −m of (x − m), which `coefficients` does not see). That is the
chain rule, so the gradients are exact; working in centred terms avoids the cancellation of
Σ g·x − m·Σ g for inputs with a large offset.

Why not autograd on full tensors: on CPU a fresh full-size tensor costs a page-faulting
allocation that dominates the step (about as long as three reading passes). This path allocates
two full-size tensors per step (y and dL/dx), as `F.batch_norm` does. The moments are two-pass
(docs/variants.md#pitfalls: never E[x²] − E[x]²); the centred temporaries live in cache-sized chunks
of samples, so the passes only read the activation. fp16/bf16 inputs get fp32 statistics; y and
dL/dx have the input's dtype and memory format (channels_last included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

# Elements per chunk (1 MiB of fp32): the centred temporaries go to one scratch buffer that
# stays in cache; fresh full-size temporaries would cost page-faulting allocations.
CHUNK_ELEMENTS = 1 << 18

Coefficients = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Index = tuple[slice, slice]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _nc11(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], 1, 1)


def _chunk_limit(x: torch.Tensor) -> int:
    """CHUNK_ELEMENTS on CPU; the whole tensor elsewhere.

    NOTE: on a GPU the caching allocator makes full-size temporaries cheap, while every chunk
    costs kernel launches, so one chunk is the fast choice there.
    """
    return CHUNK_ELEMENTS if x.device.type == "cpu" else max(x.numel(), 1)


def _chunks(x: torch.Tensor) -> Iterator[Index]:
    """(samples, channels) index blocks of at most `_chunk_limit` elements (or one plane)."""
    n, c, h, w = x.shape
    hw = max(h * w, 1)
    limit = _chunk_limit(x)
    channels = min(max(limit // hw, 1), c)
    samples = max(limit // (hw * c), 1) if channels == c else 1
    for n0 in range(0, n, samples):
        for c0 in range(0, c, channels):
            yield slice(n0, min(n0 + samples, n)), slice(c0, min(c0 + channels, c))


def _scratch(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A buffer for one chunk's temporaries (flat; viewed per chunk by `_view`)."""
    n, c, h, w = x.shape
    return x.new_empty(min(max(_chunk_limit(x), h * w), x.numel()), dtype=dtype)


def _view(scratch: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scratch[: like.numel()].view(like.shape)


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and biased variance over (H, W), (N, C) each, two-pass, no grad."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.new_empty(x.shape[:2], dtype=dtype)
    var = torch.empty_like(mean)
    scratch = _scratch(x, dtype)
    for idx in _chunks(x):
        part = x[idx]  # read from memory once; the second pass finds it in cache
        m = torch.mean(part, dim=(2, 3), dtype=dtype, out=mean[idx])
        centred = torch.sub(part, _nc11(m), out=_view(scratch, part))
        torch.linalg.vector_norm(centred, dim=(2, 3), out=var[idx])
    return mean, var.square_().div_(x.shape[2] * x.shape[3])


def _grad_reductions(
    g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_g = Σ_hw g and S_gc = Σ_hw g·(x − m), (N, C) each, in the mean's dtype."""
    sums, dots = torch.empty_like(mean), torch.empty_like(mean)
    scratch, m = _scratch(x, mean.dtype), _nc11(mean)
    for idx in _chunks(x):
        part = g[idx]
        torch.sum(part, dim=(2, 3), dtype=mean.dtype, out=sums[idx])
        centred = torch.sub(x[idx], m[idx], out=_view(scratch, part))
        torch.sum(centred.mul_(part), dim=(2, 3), out=dots[idx])
    return sums, dots


def _input_grad(
    g: torch.Tensor, x: torch.Tensor, m: torch.Tensor, a: torch.Tensor, p: torch.Tensor, q: Any
) -> torch.Tensor:
    """dL/dx = g·A + (x − m)·P + Q, chunk by chunk into one tensor shaped like x."""
    out = torch.empty_like(x)
    dt = x.dtype
    m, a, p, q = (_nc11(t).to(dt) for t in (m, a, p, q))
    for idx in _chunks(x):
        part = out[idx]
        torch.sub(x[idx], m[idx], out=part)
        torch.addcmul(q[idx], part, p[idx], out=part)
        part.addcmul_(g[idx], a[idx])
    return out


class _FusedInstanceAffine(torch.autograd.Function):
    """y = (x − m)·A + Y with (A, Y) = coefficients(m, v, *params); see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coefficients: Coefficients, *params: Any) -> Any:
        mean, var = moments(x)
        leaves = [mean.requires_grad_(), var.requires_grad_()]
        leaves += [p.detach().requires_grad_(p.requires_grad) for p in params]
        with torch.enable_grad():
            scale, at_mean = coefficients(*leaves)
        ctx.save_for_backward(x)
        ctx.graph = (leaves, scale, at_mean)
        with torch.no_grad():
            shift = (at_mean - mean * scale).to(x.dtype)
            return torch.addcmul(_nc11(shift), x, _nc11(scale.to(x.dtype)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        leaves, scale, at_mean = ctx.graph
        mean = leaves[0].detach()
        s_g, s_gc = _grad_reductions(g, x, mean)
        wanted = [i for i, t in enumerate(leaves) if t.requires_grad]
        # A coefficient may be constant (UBN without norm_rect on running statistics: A).
        pairs = [(scale, s_gc), (at_mean, s_g)]
        outputs = [(t, s.to(t.dtype)) for t, s in pairs if t.requires_grad]
        grads: Any = [None] * len(wanted)
        if outputs:
            grads = torch.autograd.grad(
                [t for t, _ in outputs],
                [leaves[i] for i in wanted],
                [s for _, s in outputs],
                retain_graph=True,
                allow_unused=True,
            )
        found: list[Any] = [None] * len(leaves)
        for i, grad in zip(wanted, grads, strict=True):
            found[i] = grad
        grad_x = None
        if ctx.needs_input_grad[0]:
            a = scale.detach()
            g_mean = -s_g * a if found[0] is None else found[0] - s_g * a
            hw = x.shape[2] * x.shape[3]
            p = torch.zeros_like(a) if found[1] is None else 2.0 * found[1] / hw
            grad_x = _input_grad(g, x, mean, a, p, g_mean / hw)
        return grad_x, None, *found[2:]


def fused_instance_affine(
    x: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor
) -> torch.Tensor:
    """Apply y = (x − m)·A + Y per (n, c), (A, Y) = coefficients(m, v, *params), (N, C) each.

    `coefficients` runs once, in the forward, with gradients enabled; it may update buffers
    under `torch.no_grad()` (running statistics). Parameter gradients come from autograd on
    its (N, C) graph, the input gradient from one fused pass.
    """
    return _FusedInstanceAffine.apply(x, coefficients, *params)


def block_moments(
    mean: torch.Tensor, var: torch.Tensor, sizes: list[int], channels_per_group: int
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Mean and biased variance of x over blocks, from its per-instance moments (N, C).

    A block is a run of contiguous samples (lengths `sizes`, K of them) times a group of
    `channels_per_group` contiguous channels (G = C / cpg), all positions: BN, BGN, GhostBN
    and FourThings statistics. Law of total variance, exact and free of cancellation:
    σ² = mean v_nc + mean (m_nc − μ)² over the block's (n, c). Returns μ, σ² (K, G) and a
    function expanding a (K, G) tensor to (N, C) (each (n, c) gets its block's value).
    Differentiable (autograd on (N, C) tensors).
    """
    n, c = mean.shape
    k, g, device = len(sizes), c // channels_per_group, mean.device
    counts = torch.tensor(sizes, device=device)
    block = torch.repeat_interleave(torch.arange(k, device=device), counts)  # (N,)
    # (K, N) averaging matrix: row b holds 1/|b| on block b's samples.
    average = F.one_hot(block, k).T.to(mean.dtype) / counts[:, None].to(mean.dtype)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return (average @ t).reshape(k, g, channels_per_group).mean(dim=2)

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t[block].repeat_interleave(channels_per_group, dim=1)

    mu = pool(mean)
    return mu, pool(var) + pool((mean - expand(mu)).square()), expand


def block_affine(
    mean: torch.Tensor,
    mu: torch.Tensor,
    block_var: torch.Tensor,
    expand: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Y) of y = (x − mean)·A + Y when each (n, c) is normalised by its block's statistics.

    `mu`, `block_var` (K, G) and `expand` come from `block_moments`; `mean` (N, C) is the
    per-instance mean, `weight`, `bias` (C,) the affine: A = γ/sqrt(σ² + eps), Y = β + (m − μ)·A.
    """
    scale = weight * expand(torch.rsqrt(block_var + eps))  # (N, C)
    return scale, bias + (mean - expand(mu)) * scale
