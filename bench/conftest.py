"""Shared benchmark fixtures: GPU timing with CUDA events, copy bandwidth, rates in extra_info.

`pytest bench/ --benchmark-only`: pytest-benchmark's table shows wall time per call (synchronised);
each benchmark's extra_info holds the CUDA-event median (ms), the rate from a formula (TFLOP/s or
GB/s), the copy bandwidth measured in the same run, and peak memory.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Tiny CPU shapes run the kernels through the interpreter so the suite stays green without a GPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
# Benchmarks never NaN-poison outputs (tests do): the extra fill would be timed with each call.
os.environ["HYBRIDNA_POISON"] = "0"
import hybridna_kernels.utils as _ku  # noqa: E402

_ku.set_poison(False)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: GPU-only benchmark shape")


def pytest_collect_file(file_path, parent):
    """Collect bench/bench_*.py under `pytest bench/` (pytest.ini's python_files only names test_*.py).
    Files given on the command line, or already matched by python_files, are collected by pytest itself."""
    from fnmatch import fnmatch

    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and str(file_path.parent) == os.path.dirname(os.path.abspath(__file__))
            and not parent.session.isinitpath(file_path)
            and not any(fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files"))):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="GPU shape: needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def measure_copy_gbs(n: int = 512 * 1024 * 1024, device=None, timer=None) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written), GB/s, of an n-element bf16 copy (default
    1 GiB), timed by timer(fn) -> ms (default: do_bench's median). device None: CUDA, or None on a machine
    without it; an explicit device (also "cpu", for dry runs) is always measured. The buffers are freed."""
    if device is None:
        if not HAS_CUDA:
            return None
        device = "cuda"
    if timer is None:
        import triton.testing

        def timer(fn):
            return triton.testing.do_bench(fn, return_mode="median")
    src = torch.empty(n, dtype=torch.bfloat16, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    del src, dst
    return 2 * n * 2 / (ms * 1e-3) / 1e9


@pytest.fixture(scope="session")
def copy_bandwidth_gbs():
    """Device-to-device copy bandwidth (bytes read + written) measured in this run, GB/s; None on CPU."""
    return measure_copy_gbs()


def time_ms(fn) -> float:
    """Median milliseconds of fn: CUDA events after warm-up on GPU, wall clock on CPU."""
    if HAS_CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    import time

    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms_graph(fn) -> float | None:
    """Median milliseconds of fn replayed from a CUDA graph (triton.testing.do_bench_cudagraph: many calls
    captured back to back, no L2 flush): the GPU time without the host's launch work, which on a slow host
    can exceed a kernel's own time (bench/RESULTS.md). None on CPU or when fn cannot be captured."""
    if not HAS_CUDA:
        return None
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(fn, return_mode="median")
    except Exception as e:  # noqa: BLE001 - a capture-unsafe fn (host syncs, CPU tensors) is not an error here
        torch.cuda.synchronize()
        print(f"time_ms_graph: not capturable ({type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
        return None


def run_benchmark(benchmark, fn, *, flops: float | None = None, nbytes: float | None = None,
                  copy_gbs: float | None = None, rounds: int = 20, graph: bool = False, **info):
    """Time fn for pytest-benchmark and record ms / TFLOP/s / GB/s / peak memory in extra_info.
    graph=True (kernel benchmarks) also records graph_ms, the same fn replayed from a CUDA graph (GPU time
    without host launch gaps), and the rates from it (graph_tflops / graph_gbs)."""
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync()
        mem0 = torch.cuda.memory_allocated()
    ms = time_ms(fn)
    if HAS_CUDA:
        peak = torch.cuda.max_memory_allocated()
        benchmark.extra_info["peak_mem_gib"] = round(peak / 2**30, 3)
        benchmark.extra_info["extra_mem_gib"] = round((peak - mem0) / 2**30, 3)
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.extra_info["ms"] = round(ms, 4)
    if flops is not None:
        benchmark.extra_info["tflops"] = round(flops / (ms * 1e-3) / 1e12, 2)
    if nbytes is not None:
        gbs = nbytes / (ms * 1e-3) / 1e9
        benchmark.extra_info["gbs"] = round(gbs, 1)
        if copy_gbs:
            benchmark.extra_info["copy_gbs"] = round(copy_gbs, 1)
            benchmark.extra_info["frac_of_copy"] = round(gbs / copy_gbs, 3)
    if graph and HAS_CUDA:
        gms = time_ms_graph(fn)
        if gms is not None:
            benchmark.extra_info["graph_ms"] = round(gms, 4)
            if flops is not None:
                benchmark.extra_info["graph_tflops"] = round(flops / (gms * 1e-3) / 1e12, 2)
            if nbytes is not None:
                benchmark.extra_info["graph_gbs"] = round(nbytes / (gms * 1e-3) / 1e9, 1)
    benchmark.extra_info.update(info)

    def call():
        fn()
        _sync()

    benchmark.pedantic(call, rounds=rounds if HAS_CUDA else 1, warmup_rounds=1 if HAS_CUDA else 0, iterations=1)
    return ms


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error, whichever layer raised it (allocator, cuBLAS, Triton)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cuda_memory():
    """Free what an aborted step left behind (call outside the `except` block, so the traceback's
    frames, which hold the activations, are gone)."""
    import gc

    gc.collect()
    if HAS_CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def record_oom(benchmark, message: str, **info):
    """Record an out-of-memory shape as such instead of failing: extra_info gets status "oom" (and
    no rate), a no-op is registered so the row still lands in --benchmark-json, then the test is
    skipped with the reason. Call release_cuda_memory() first."""
    benchmark.extra_info.update(info)
    benchmark.extra_info["status"] = "oom"
    benchmark.extra_info["error"] = message[:300]
    if HAS_CUDA:
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
        benchmark.extra_info["device_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    pytest.skip(f"out of memory: {message[:200]}")
