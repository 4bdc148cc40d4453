"""Shared benchmark fixtures: GPU timing with CUDA events, copy bandwidth, rates in extra_info.

`pytest bench/ --benchmark-only`: pytest-benchmark's table shows wall time per call (synchronised);
each benchmark's extra_info holds the CUDA-event median (ms), the rate from a formula (TFLOP/s or
GB/s), the copy bandwidth measured in the same run, and peak memory.

Run-level switches (environment):
    HYBRIDNA_BENCH_LOG=rows.jsonl   every test's row appended as it finishes (passed, skipped with the
                                    reason, failed with the message; extra_info and stats when the
                                    benchmark ran), plus a "meta" line at the start and at the end of the
                                    run: a run cut by a time limit keeps what it measured (pytest-benchmark
                                    writes --benchmark-json only at the end). bench/report.py reads it.
    HYBRIDNA_BENCH_BUDGET_S=430     seconds for the whole run, shared among the files in proportion to
                                    FILE_EST_S: a test that would start after its file's share (counted
                                    cumulatively from the start of the run) is skipped with the reason
                                    "time budget", so one slow file cannot starve the rest and pytest
                                    still ends cleanly (JSON, summary) before an outer timeout.
    HYBRIDNA_BENCH_ORDER=model,ssd  files run first, in this order (default DEFAULT_ORDER); the rest
                                    follow in pytest's order.
    HYBRIDNA_BENCH_SKIP_DONE=a.jsonl,b.jsonl
                                    deselect the tests that passed in these earlier row logs: a second
                                    call measures only what the first left (cut by its budget or time
                                    limit); report.py then reads all the logs together.
    HYBRIDNA_BENCH_PEDANTIC_S=0.25  time of pytest-benchmark's own rounds per benchmark (GPU): the
                                    recorded figure is the CUDA-event median in extra_info, so the
                                    wall-clock rounds are kept short (2..20 rounds).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

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


# ---- run order, time budget and the row log -------------------------------------------------------

# GPU seconds per file (H100, slow host, .gpu/bench_all.sh's settings, kernels warmed; the first file's
# includes pytest's start-up); bench/README.md says how each was estimated. Only their ratios matter.
FILE_EST_S = {"bench_model.py": 185, "bench_attention.py": 75, "bench_generation.py": 50, "bench_ssd.py": 45,
              "bench_conv1d.py": 20, "bench_data.py": 5}
# the model benchmark first: it is the headline figure and the most memory-sensitive (a clean card for
# its out-of-memory boundaries); its kernels then serve the per-op files from Triton's in-process cache
DEFAULT_ORDER = ("bench_model.py", "bench_ssd.py", "bench_attention.py", "bench_conv1d.py", "bench_generation.py",
                 "bench_data.py")
LOG = os.environ.get("HYBRIDNA_BENCH_LOG")
BUDGET_S = float(os.environ.get("HYBRIDNA_BENCH_BUDGET_S") or 0)
PEDANTIC_S = float(os.environ.get("HYBRIDNA_BENCH_PEDANTIC_S", 0.25))
_RUN = dict(t0=time.monotonic(), deadlines={}, counts={})


def _file_of(item) -> str:
    return os.path.basename(str(getattr(item, "path", None) or item.fspath))


def _order() -> list[str]:
    names = os.environ.get("HYBRIDNA_BENCH_ORDER")
    if not names:
        return list(DEFAULT_ORDER)
    return [n if n.endswith(".py") else f"bench_{n.removeprefix('bench_')}.py" for n in names.split(",") if n]


def log_row(row: dict) -> None:
    """Append one JSON line to HYBRIDNA_BENCH_LOG (opened and closed per row: a killed run keeps every
    finished line)."""
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def _meta(**extra) -> dict:
    m = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), torch=torch.__version__, **extra)
    try:
        import triton

        m["triton"] = triton.__version__
    except ImportError:
        pass
    if HAS_CUDA:
        m["device"] = torch.cuda.get_device_name()
        m["device_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    m["env"] = {k: v for k, v in os.environ.items()
                if k.startswith(("HYBRIDNA_", "PYTORCH_CUDA_ALLOC_CONF", "TRITON_")) and k != "HYBRIDNA_BENCH_LOG"}
    return m


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: GPU-only benchmark shape")
    _RUN["t0"] = time.monotonic()


def pytest_sessionstart(session):
    if LOG and not hasattr(session.config, "workerinput"):
        log_row({"meta": _meta(event="start", budget_s=BUDGET_S or None)})


def pytest_sessionfinish(session, exitstatus):
    if LOG and not hasattr(session.config, "workerinput"):
        log_row({"meta": _meta(event="end", exitstatus=int(exitstatus), counts=dict(_RUN["counts"]),
                               wall_s=round(time.monotonic() - _RUN["t0"], 1))})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip a test whose file's share of HYBRIDNA_BENCH_BUDGET_S is spent (before its fixtures run)."""
    item._bench_t0 = time.monotonic()
    deadline = _RUN["deadlines"].get(_file_of(item))
    if deadline is not None and time.monotonic() > deadline:
        pytest.skip(f"time budget: {_file_of(item)}'s share ended at {deadline - _RUN['t0']:.0f} s of "
                    f"HYBRIDNA_BENCH_BUDGET_S={BUDGET_S:.0f}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        _RUN["counts"][rep.outcome] = _RUN["counts"].get(rep.outcome, 0) + 1
        if LOG:
            log_row(_row(item, rep))


def _row(item, rep) -> dict:
    """One test as a --benchmark-json style entry (name, fullname, group, stats, extra_info) plus its
    outcome, the skip reason or failure message, its file and its wall time (setup + call)."""
    row = dict(name=item.name, fullname=item.nodeid, group=None, file=_file_of(item), outcome=rep.outcome,
               when=rep.when, wall_s=round(time.monotonic() - getattr(item, "_bench_t0", time.monotonic()), 2))
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if bench is not None and hasattr(bench, "extra_info"):
        row.update(name=bench.name, fullname=bench.fullname, group=bench.group, extra_info=dict(bench.extra_info))
        st = getattr(getattr(bench, "stats", None), "stats", None)
        if st is not None and getattr(st, "data", None):
            row["stats"] = {k: getattr(st, k) for k in ("median", "mean", "min", "max", "stddev", "rounds")}
    if rep.skipped:
        lr = rep.longrepr
        row["reason"] = str(lr[2] if isinstance(lr, tuple) and len(lr) == 3 else lr).removeprefix("Skipped: ")[:300]
    elif rep.failed:
        text = getattr(rep, "longreprtext", "") or str(rep.longrepr)
        lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-3:]
        row["error"] = "\n".join(lines)[-800:]
    return row


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


def _passed_in(paths: str) -> set[str]:
    """Node ids (bench/bench_x.py::test[...]) of the tests that passed in the row logs named by paths
    (comma-separated HYBRIDNA_BENCH_LOG files; a missing file is an error, not an empty set)."""
    done = set()
    for path in filter(None, (p.strip() for p in paths.split(","))):
        if not os.path.isfile(path):
            raise pytest.UsageError(f"HYBRIDNA_BENCH_SKIP_DONE: expected existing row logs, {path!r} is not a file")
        with open(path) as f:
            for line in f:
                row = json.loads(line) if line.strip() else {}
                if row.get("outcome") == "passed" and row.get("fullname"):
                    done.add(row["fullname"])
    return done


def pytest_collection_modifyitems(config, items):
    """Files in _order() first (the rest keep pytest's order); the budget's cumulative deadline per file;
    GPU shapes skipped without CUDA."""
    done = _passed_in(os.environ.get("HYBRIDNA_BENCH_SKIP_DONE", ""))
    if done:
        keep = [it for it in items if it.nodeid not in done]
        config.hook.pytest_deselected(items=[it for it in items if it.nodeid in done])
        items[:] = keep
    order = {f: i for i, f in enumerate(_order())}
    pos = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (order.get(_file_of(it), len(order)), pos[id(it)]))
    if BUDGET_S > 0:
        files = list(dict.fromkeys(_file_of(it) for it in items))
        est = {f: FILE_EST_S.get(f, 30) for f in files}
        total, cum = sum(est.values()), 0.0
        for f in files:
            cum += est[f]
            _RUN["deadlines"][f] = _RUN["t0"] + BUDGET_S * cum / total
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


def _event_ms(fn) -> float:
    """One call of fn timed with CUDA events (ms)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


# Calls longer than this are timed as the median of SLOW_REPEATS event-timed calls: do_bench's five
# estimate calls plus its warm-up and repeats cost seconds there (a 500 ms prefill: 7 calls), and at
# tens of ms the L2 flush and the spread between calls do not matter.
SLOW_MS, SLOW_REPEATS = 20.0, 3


def time_ms(fn, first_ms: float | None = None) -> float:
    """Median milliseconds of fn, called warm: on GPU CUDA events (triton's do_bench, or the median of
    SLOW_REPEATS calls when one call, first_ms or else one timed here, takes over SLOW_MS); on CPU one
    wall-clock call (tiny shapes: the figure only shows that the path runs)."""
    if HAS_CUDA:
        import triton.testing

        if first_ms is None:
            first_ms = _event_ms(fn)
        if first_ms > SLOW_MS:
            return sorted(_event_ms(fn) for _ in range(SLOW_REPEATS))[SLOW_REPEATS // 2]
        return triton.testing.do_bench(fn, return_mode="median")
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


def pedantic_rounds(ms: float, rounds: int = 20) -> int:
    """pytest-benchmark rounds for a call of `ms`: about PEDANTIC_S seconds in all, 2 to `rounds`."""
    return max(2, min(rounds, math.ceil(PEDANTIC_S * 1e3 / max(ms, 1e-3))))


def run_benchmark(benchmark, fn, *, flops: float | None = None, nbytes: float | None = None,
                  copy_gbs: float | None = None, rounds: int = 20, graph: bool = False, **info):
    """Time fn for pytest-benchmark and record ms / TFLOP/s / GB/s / peak memory in extra_info.
    graph=True (kernel benchmarks) also records graph_ms, the same fn replayed from a CUDA graph (GPU time
    without host launch gaps), and the rates from it (graph_tflops / graph_gbs).
    GPU: one warm-up call -> time_ms -> pytest-benchmark's wall-clock rounds, at most `rounds`
    and about PEDANTIC_S seconds. CPU: one call, timed by pytest-benchmark, is the figure."""
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
        fn()  # warm-up: compiles on first use, so it does not tell how long a call takes
        _sync()
        mem0 = torch.cuda.memory_allocated()
        ms = time_ms(fn)
        peak = torch.cuda.max_memory_allocated()
        benchmark.extra_info["peak_mem_gib"] = round(peak / 2**30, 3)
        benchmark.extra_info["extra_mem_gib"] = round((peak - mem0) / 2**30, 3)
        benchmark.extra_info["device"] = torch.cuda.get_device_name()
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

    if HAS_CUDA:
        benchmark.pedantic(call, rounds=pedantic_rounds(ms, rounds), warmup_rounds=0, iterations=1)
    else:
        benchmark.pedantic(call, rounds=1, iterations=1)
        ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info["ms"] = round(ms, 4)
    if flops is not None:
        benchmark.extra_info["tflops"] = round(flops / (ms * 1e-3) / 1e12, 2)
    if nbytes is not None:
        gbs = nbytes / (ms * 1e-3) / 1e9
        benchmark.extra_info["gbs"] = round(gbs, 1)
        if copy_gbs:
            benchmark.extra_info["copy_gbs"] = round(copy_gbs, 1)
            benchmark.extra_info["frac_of_copy"] = round(gbs / copy_gbs, 3)
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
