"""Test set-up: kernels through the Triton interpreter when there is no GPU, NaN-poisoned outputs."""
import os
import sys

import torch

# Must happen before any @triton.jit decorator runs (that is, before hybridna_kernels is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYBRIDNA_POISON", "1")
sys.path.insert(0, os.path.dirname(__file__))
# One intra-op thread: the tests' models are tiny, and `make test` runs two pytest workers on CI's two
# cores; two workers with two OpenMP threads each made the model tests 10-20x slower there.
torch.set_num_threads(1)

import pytest  # noqa: E402

import hybridna_kernels.utils as _ku  # noqa: E402

_ku.set_poison(True)


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every output buffer a launcher allocates through hybridna_kernels.utils.new_empty starts as NaN."""
    _ku.set_poison(True)
    yield


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
