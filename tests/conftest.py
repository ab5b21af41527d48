"""Shared test fixtures."""

import os

import pytest
import torch

# The official implementations' reference outputs: a folder of .pt files kept beside the checkout
# (set SPIKEFORMERS_OFFICIAL_FIXTURES to read them from elsewhere). Tests that need them skip without.
OFFICIAL_FIXTURES = os.environ.get("SPIKEFORMERS_OFFICIAL_FIXTURES", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "fixtures", "official"))


@pytest.fixture
def one_thread():
    """For tests of small tensors: one intra-op thread is faster, and far faster on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    """A Fashion-MNIST folder of random images in the real IDX files (the real sizes), for runs that
    must not depend on the dataset being installed."""
    from test_data import _fake_dataset
    d = tmp_path_factory.mktemp("fmnist")
    _fake_dataset(d, compress=False)
    return d
