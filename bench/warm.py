"""Fill Triton's (and inductor's) disk caches for `pytest bench/` from parallel processes, before it runs.

    python bench/warm.py JOB [JOB ...]      # jobs: model, attention, flex, generation, kernels

On a cold cache every kernel compiles on first use, one after another inside the one pytest process;
.gpu/bench_all.sh runs one process per job side by side first (bounded by a timeout; nothing is timed
meanwhile), so the benchmarks load compiled kernels from disk. Each job launches what its benchmark file
launches, with the same dtypes, flags and divisibility of sizes and strides (what Triton specialises
on), at small sizes where the compiled code does not depend on the size: the attention kernels switch
configs above 2048 keys, so the long bucket is warmed at 4096. FlexAttention (compiled per shape by
inductor) is warmed at the benchmark's own window shapes. A failing step is printed and skipped: the
benchmark then compiles it itself. Not for timing: the sizes are too small to mean anything.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402

import conftest  # noqa: E402,F401  (the benchmarks' settings: no NaN poisoning, interpreter on CPU)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float32


def _n(L: int) -> int:
    """A size on GPU; on CPU (a smoke run through the interpreter) 64x smaller."""
    return L if DEV == "cuda" else max(64, L // 64)


def _step(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
        if DEV == "cuda":
            torch.cuda.synchronize()
        print(f"warm {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    except (Exception, pytest.skip.Exception) as e:  # noqa: BLE001 - the benchmark compiles it itself then
        print(f"warm {name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
        traceback.print_exc(limit=2, file=sys.stderr)


def model():
    """One training step of the 300m hybrid (bench_model's step) above and at the 2048-key bucket (the
    Transformer has no Triton kernels)."""
    import bench_model as bm

    m = bm.build_model("hybrid", bm.PRESET if DEV == "cuda" else "tiny")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=DEV == "cuda")
    for b, L in ((1, 4096), (1, 2048)) if DEV == "cuda" else ((1, 64),):
        ids = bm.random_bases(b, L)
        _step(f"model hybrid {b}x{L}", lambda: bm.make_step(m, opt, ids, [])())


def attention():
    """flash_attention forward (with and without grad) and backward at the benchmark's head sizes and flags,
    and the decode kernel."""
    from hybridna_kernels import flash_attention

    # B, L, Hq, Hkv, D, window: MHA D64 / D128 long bucket, D64 2048 bucket, window, the model's GQA 16:4
    for B, L, Hq, Hkv, D, window in ((1, 4096, 16, 16, 64, None), (1, 4096, 8, 8, 128, None),
                                     (2, 2048, 8, 8, 64, None), (1, 8192, 16, 16, 64, 4096),
                                     (1, 4096, 16, 4, 64, None)):
        L = _n(L)
        window = window and _n(window)

        def run():
            q = torch.randn(B, L, Hq, D, device=DEV, dtype=DT, requires_grad=True)
            k, v = (torch.randn(B, L, Hkv, D, device=DEV, dtype=DT, requires_grad=True) for _ in range(2))
            with torch.no_grad():
                flash_attention(q, k, v, causal=True, window=window)
            o = flash_attention(q, k, v, causal=True, window=window)
            torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
        _step(f"attention B{B} L{L} H{Hq}:{Hkv} D{D} W{window}", run)
    for B, Lk in ((1, 4096), (8, 4096)):
        def dec():
            q = torch.randn(B, 1, 16, 64, device=DEV, dtype=DT)
            k, v = (torch.randn(B, _n(Lk), 4, 64, device=DEV, dtype=DT) for _ in range(2))
            flash_attention(q, k, v, causal=True)
        _step(f"attention decode B{B} Lk{Lk}", dec)


def flex():
    """FlexAttention at the benchmark's own shapes (inductor compiles per shape), forward without grad and
    forward + backward, as HYBRIDNA_BENCH_FLEX selects them."""
    if DEV != "cuda":
        return
    import bench_attention as ba

    for p in ba.SHAPES:
        B, H, L, D, causal, window = p.values
        if ba.FLEX == "none" or (ba.FLEX == "window" and window is None) or not any(m.name == "gpu" for m in p.marks):
            continue
        for grad in (False, True):
            def run():
                q, k, v = (torch.randn(B, L, H, D, device=DEV, dtype=DT, requires_grad=grad) for _ in range(3))
                fn = ba._provider_fn("flex", q, k, v, causal, window)
                if grad:
                    o = fn(q, k, v)
                    torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
                else:
                    with torch.no_grad():
                        fn(q, k, v)
            _step(f"flex B{B} H{H} L{L} D{D} W{window} grad={grad}", run)


def generation():
    """The 300m in bf16: prefill, the eager and the CUDA-graph decode step, generate() with sampling."""
    import bench_generation as bg

    m = bg.get_model()
    ids = torch.randint(5, 9, (1, 1024 if DEV == "cuda" else 64), device=DEV)
    _step("generation eager", lambda: bg.generate(m, ids, 4, temperature=0))
    if DEV == "cuda":
        _step("generation graph", lambda: bg.generate(m, ids, 4, temperature=1.0, seed=0, cuda_graph=True))
        _step("generation graph greedy", lambda: bg.generate(m, ids, 4, temperature=0, cuda_graph=True))
    _step("generation decode loops", lambda: [bg.DecodeLoop(m, ids.shape[1], graph=g).step()
                                              for g in ((False, True) if DEV == "cuda" else (False,))])


def kernels():
    """ssd_scan / ssd_step (and mamba_ssm's Triton SSD when importable: its autotuner compiles every config)
    and causal_conv1d at the benchmarks' settings."""
    import bench_conv1d as bc
    import bench_ssd as bs

    kw = {} if DEV == "cuda" else dict(heads=2, headdim=16, dstate=16)
    for prov in ("hybridna", "mamba_ssm") if DEV == "cuda" else ("hybridna",):
        if prov == "mamba_ssm" and bs._peer_scan is None:
            continue
        for mode in ("fwd", "fwd_bwd"):
            def run():
                t = bs.make(1, 4096 if DEV == "cuda" else 256, dtype=DT, device=DEV, requires_grad=mode != "fwd", **kw)
                bs._fn(prov, t, mode)()
            _step(f"ssd {prov} {mode}", run)
    if DEV == "cuda":
        _step("ssd_step", lambda: bs.ssd_step(*bs._step_inputs(64, DEV)[:6], D=bs._step_inputs(64, DEV)[6],
                                             dt_bias=bs._step_inputs(64, DEV)[7], dt_softplus=True))
    for W in (4, 8):
        def conv():
            x, w, b = bc.make_inputs(1, 2304 if DEV == "cuda" else 64, 4096 if DEV == "cuda" else 128, W, DT)
            bc.forward_fn("hybridna", x, w, b)()
            x, w, b = (t.requires_grad_() for t in (x, w, b))
            y = bc.forward_fn("hybridna", x, w, b)()
            torch.autograd.grad(y, (x, w, b), torch.randn_like(y))
        _step(f"conv1d W{W}", conv)


JOBS = dict(model=model, attention=attention, flex=flex, generation=generation, kernels=kernels)

if __name__ == "__main__":
    names = sys.argv[1:] or list(JOBS)
    t0 = time.perf_counter()
    for name in names:
        JOBS[name]()
    print(f"warm {','.join(names)} done in {time.perf_counter() - t0:.1f} s", flush=True)
