"""Which part of the data one data-parallel rank loads: the one place that decides it.

A trial on N devices steps with global batches of N x B samples, taken in the epoch order every
rank draws from the same (seed, epoch). Rank r loads rows [r*B, (r+1)*B) of each global batch,
and nothing else, so a rank decodes and augments only the images it trains on. Evaluation
batches (in order, `eval_batch_size` each, the last one short) go round-robin: rank r loads
batches r, r+N, r+2N, ...; the evaluation sums are all-reduced (`normbench.engine.loop`).

Every rank runs the same number of training steps, `n // (N*B)` (drop_last of the global
batch), or DDP would wait forever for a missing rank; evaluation has no collective per batch,
so ranks may hold one evaluation batch more or less. One process (a plain or virtual-device
trial) is `Shard()`: rank 0 of 1, the whole of every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `ranks` data-parallel processes (`Shard()`: one process)."""

    rank: int = 0
    ranks: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.ranks:
            raise ValueError(f"`0 <= rank < ranks` must hold, but got {self}")

    def num_batches(
        self, n: int, batch_size: int, *, train: bool, limit_batches: int | None = None
    ) -> int:
        """Batches this rank serves in an epoch over `n` samples: training steps (drop_last,
        at most `limit_batches`), or its evaluation batches. Every loader's `len`."""
        if not train:
            return len(self.eval_batches(n, batch_size))
        full = self.train_batches(n, batch_size)
        return full if limit_batches is None else min(full, limit_batches)

    def train_batches(self, n: int, batch_size: int) -> int:
        """Training steps of an epoch over `n` samples, `batch_size` per rank (drop_last)."""
        return n // (batch_size * self.ranks)

    def train_rows(self, step: int, batch_size: int) -> slice:
        """This rank's positions in the epoch order at training step `step`: rows
        [r*B, (r+1)*B) of the global batch at positions [step*N*B, (step+1)*N*B)."""
        start = (step * self.ranks + self.rank) * batch_size
        return slice(start, start + batch_size)

    def eval_batches(self, n: int, batch_size: int) -> range:
        """This rank's evaluation batches, by index among the ceil(n / batch_size) batches of
        `n` samples in order: every N-th, starting at the rank."""
        return range(self.rank, math.ceil(n / batch_size), self.ranks)

    @staticmethod
    def eval_rows(batch: int, batch_size: int, n: int) -> slice:
        """Positions of evaluation batch `batch` (the last one may be short)."""
        return slice(batch * batch_size, min((batch + 1) * batch_size, n))
