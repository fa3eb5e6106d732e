"""Fixtures shared by the library tests."""

import pytest


@pytest.fixture
def one_thread():
    """Tiny models on one torch thread: on a shared, loaded machine two OpenMP threads wait on each
    other at every op (measured: 138 ms vs 6 ms CPU per step of a 2-layer d=32 model)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
