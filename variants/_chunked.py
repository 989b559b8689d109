"""Contiguous sample chunks along the batch: GhostBN's ghost batches, FourThings' example groups.

The statistics of a chunk come from per-instance moments (`_fused.block_moments`); this module
only says where the chunks are, with the two rules of docs/variants.md#ghost-bn and
docs/variants.md#fourthings: chunks of a fixed size with a short last one, or `torch.chunk`
semantics for a requested number of splits.
"""

from __future__ import annotations


def chunk_length(batch: int, *, ghost_batch_size: int, num_splits: int | None) -> int:
    """Samples per chunk: `ghost_batch_size`, or torch.chunk's ceil(N / num_splits)."""
    if num_splits is not None:
        return max(-(-batch // num_splits), 1)
    return ghost_batch_size


def chunk_sizes(batch: int, chunk: int) -> list[int]:
    """Sizes of the contiguous chunks: full ones, then a short last one if N % chunk != 0."""
    full, rest = batch // chunk, batch % chunk
    return [chunk] * full + ([rest] if rest else [])
