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


# ---- GPU runs with pytest-xdist: one GPU shared by many worker processes --------------------------------------
# Tests marked `bigmem` (int64 addressing: ~20 GB each) take an exclusive lock, every
# other GPU test a shared one, so a big test never runs beside others and they never run out of memory because
# of it; each test hands its cached blocks back to the driver afterwards (the caching allocator would otherwise
# keep them from the other workers). On CPU none of this runs.
_LOCK_PATH = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hybridna-gpu-tests.lock")


@pytest.fixture(autouse=True)
def _gpu_memory_lock(request):
    if not torch.cuda.is_available():
        yield
        return
    import fcntl
    import gc

    big = "bigmem" in request.keywords
    # A turnstile in front of the lock: a waiting bigmem test holds it, so new shared holders queue behind it
    # instead of starving it (flock grants LOCK_SH while others hold LOCK_SH, whoever waits for LOCK_EX).
    with open(_LOCK_PATH + ".gate", "a") as gate, open(_LOCK_PATH, "a") as f:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(f, fcntl.LOCK_EX if big else fcntl.LOCK_SH)
        finally:
            if not big:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            gc.collect()
            torch.cuda.empty_cache()
            fcntl.flock(f, fcntl.LOCK_UN)
            if big:
                fcntl.flock(gate, fcntl.LOCK_UN)


def pytest_runtest_logreport(report):
    """HYBRIDNA_FAIL_LOG=path: append each failure's traceback as it happens (a run cut by a time limit
    never reaches pytest's end-of-run failure section)."""
    path = os.environ.get("HYBRIDNA_FAIL_LOG")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n")
