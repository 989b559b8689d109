"""Test settings for the variant tests.

One intra-op thread: these tests use tiny tensors, where thread start-up and contention on a
shared machine cost far more than they save (resnet18 forward+backward on a (4, 3, 32, 32) batch:
~0.1 s with 1 thread, 1-5 s with 2 threads on a loaded 2-core machine).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
