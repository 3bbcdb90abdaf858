"""Detection tests run their tiny models on one thread.

On the shared 2-core machine, two OpenMP threads made the tiny models' matmuls
~8x slower than one whenever other jobs ran (spin-waiting threads); the
setting is restored after each test so other test packages are unaffected.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
