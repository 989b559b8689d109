"""`Shard`: which positions of an epoch a data-parallel rank loads (the loaders' tests check
that they serve exactly these)."""

from __future__ import annotations

import pytest

from normbench.data.shard import Shard


def test_training_rows_tile_each_global_batch_in_rank_order() -> None:
    b, ranks, steps = 3, 4, 5
    rows = [Shard(r, ranks).train_rows(k, b) for k in range(steps) for r in range(ranks)]
    positions = [i for s in rows for i in range(s.start, s.stop)]
    assert positions == list(range(steps * ranks * b))  # rank 0's B, rank 1's B, ... per step
    assert Shard(2, 4).train_rows(1, 3) == slice(18, 21)  # step 1 starts at 12; rank 2 at +6
    assert Shard(1, 3).train_batches(20, 3) == 2  # 20 // 9: drop_last of the global batch
    assert Shard().train_batches(20, 3) == 6


def test_evaluation_batches_round_robin() -> None:
    assert list(Shard(0, 3).eval_batches(23, 5)) == [0, 3]  # 5 batches, the last of 3
    assert list(Shard(2, 3).eval_batches(23, 5)) == [2]
    assert list(Shard().eval_batches(23, 5)) == [0, 1, 2, 3, 4]
    assert Shard.eval_rows(4, 5, 23) == slice(20, 23)


@pytest.mark.parametrize(("rank", "ranks"), [(2, 2), (-1, 2), (0, 0)])
def test_impossible_rank_is_refused(rank: int, ranks: int) -> None:
    with pytest.raises(ValueError, match="0 <= rank < ranks"):
        Shard(rank, ranks)
