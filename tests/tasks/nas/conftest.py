"""One torch thread for the search tests: with two tests at a time on two shared cores
(pytest -n 2), more threads only wait for each other at OpenMP barriers on these tiny tensors
(a 4 s search took 155 s with two threads under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
