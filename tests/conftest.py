"""Fixtures shared by the library tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The models in these tests are tiny: one thread is faster than two, and much faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
