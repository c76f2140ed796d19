"""Fixtures shared by the test files."""

import zlib

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: parametrize a test over these to run it on the CPU and, where there is one, on a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def gen(request):
    """A CPU ``torch.Generator`` seeded from the test's id: each test case draws its own
    inputs, and a failure reproduces."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
