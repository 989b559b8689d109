"""What every Triton kernel of `_triton` and `_triton_elementwise` shares: which (sample,
channel block) a program owns, which positions a block covers, and the loads and stores of
full-size (N, C, H, W) tensors through their own strides and of per-(n, c) statistics.

`triton.jit` functions: Triton inlines them into the kernels that call them (a `tt.call` the
compiler inlines; the interpreter runs them as Python), so a kernel costs what it did with
them written out. A full-size tensor is addressed by a tuple of its four strides (a kernel
argument `x.stride()`, passed as a tuple: Triton flattens it), a statistic as an (N, C)
contiguous float32 tensor. Built on import, which `_kernels._launch` does on the first launch,
after TRITON_INTERPRET has been read (tests/variants/test_triton.py sets it first).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def channel_block(BLOCK_C: tl.constexpr):
    """(n, c): the program's sample (int64: n·stride may pass 2³¹) and its channel block."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c


@triton.jit
def positions(c, start, C, W, HW, BLOCK_HW: tl.constexpr):
    """(h, w, ok) of the positions start .. start + BLOCK_HW: h and w (1, BLOCK_HW), ok the
    (BLOCK_C, BLOCK_HW) mask of the tile's elements inside the tensor."""
    hw = start + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    return (hw // W)[None, :], (hw % W)[None, :], ok


@triton.jit
def tile(C, W, HW, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """(n, c, h, w, ok) of an element-wise program: the (sample, channel block, position
    block) tile of program ids (0, 1, 2)."""
    n, c = channel_block(BLOCK_C)
    h, w, ok = positions(c, tl.program_id(2) * BLOCK_HW, C, W, HW, BLOCK_HW)
    return n, c, h, w, ok


@triton.jit
def load(ptr, strides, n, c, h, w, ok):
    """A full-size tensor's elements at the tile, in float32 (0 outside it)."""
    off = n * strides[0] + c[:, None] * strides[1] + h * strides[2] + w * strides[3]
    return tl.load(ptr + off, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def store(ptr, strides, n, c, h, w, ok, value):
    """Write `value` at the tile in the tensor's own dtype."""
    off = n * strides[0] + c[:, None] * strides[1] + h * strides[2] + w * strides[3]
    tl.store(ptr + off, value.to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def load_stat(ptr, n, c, C):
    """A per-(n, c) statistic of the channel block as a (BLOCK_C, 1) column (0 past C)."""
    return tl.load(ptr + n * C + c, mask=c < C, other=0.0)[:, None]


@triton.jit
def store_stat(ptr, n, c, C, value):
    """Write the channel block's per-(n, c) `value` (BLOCK_C,)."""
    tl.store(ptr + n * C + c, value, mask=c < C)
