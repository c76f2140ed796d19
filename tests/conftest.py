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


def package_env(**extra):
    """``os.environ`` for a subprocess that imports the same ``snntorch_sparse`` as the
    tests do (the installed copy or the checkout), plus ``extra``."""
    import os

    import snntorch_sparse

    parent = os.path.dirname(os.path.dirname(os.path.abspath(snntorch_sparse.__file__)))
    path = os.pathsep.join(p for p in (parent, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
