"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """For tests of small tensors: one intra-op thread is faster, and far faster on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
