"""ssd_scan / ssd_step benchmarks (issue 4).

Providers: hybridna (Triton kernels), reference (the chunked PyTorch reference, forward at the
smallest GPU shape only: it materialises the (chunk x chunk) decay matrices), and mamba_ssm's Triton
`mamba_chunk_scan_combined` when importable (put the Triton ops of its sdist on sys.path, for example
under .peers/ which this file adds when present; peer code is never committed).

    pytest bench/bench_ssd.py --benchmark-only        # pytest-benchmark, rates in extra_info
    python bench/bench_ssd.py                          # one markdown table (GPU)

Rates: forward FLOPs count the causal halves: per chunk and head Q^2 P (intra-chunk) + 4 Q P N
(chunk state, output from state), plus Q^2 N per chunk and group (C B^T); backward is counted as
twice the forward. Bytes: x, y (and dx / dy / dz ...) once each, B, C, dt once.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(os.path.dirname(HERE), ".peers")
if os.path.isdir(PEERS) and PEERS not in sys.path:
    sys.path.append(PEERS)

from conftest import HAS_CUDA, measure_copy_gbs, run_benchmark  # noqa: E402

from hybridna_kernels import ssd_scan, ssd_step  # noqa: E402
from hybridna_kernels.ssd.naive import ssd_chunked_ref  # noqa: E402

try:  # the peer; only its Triton ops are needed
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _peer_scan
except Exception:  # noqa: BLE001 - any import failure just means "peer not available"
    _peer_scan = None

H, P, N, G, Q = 32, 64, 128, 1, 256
GPU_SHAPES = [(8, 8192), (2, 32768), (1, 131072)]
CPU_SHAPES = [(1, 200)]


def make(batch, seqlen, dtype=torch.bfloat16, device="cuda", requires_grad=False, heads=H, headdim=P, dstate=N):
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    t = dict(x=rnd(batch, seqlen, heads, headdim), dt=rnd(batch, seqlen, heads, scale=0.5),
             A=-(torch.rand(heads, generator=g, device=device) * 4 + 0.5),
             B=rnd(batch, seqlen, G, dstate), C=rnd(batch, seqlen, G, dstate),
             D=rnd(heads, scale=1.0).float(), dt_bias=rnd(heads, scale=0.5).float() - 2.0)
    for v in t.values():
        v.requires_grad_(requires_grad)
    return t


def _ours(t, **kw):
    return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=Q, D=t["D"], dt_bias=t["dt_bias"],
                    dt_softplus=True, **kw)


def _peer(t):
    return _peer_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], Q, D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)


def _ref(t):
    return ssd_chunked_ref(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=Q, D=t["D"], dt_bias=t["dt_bias"],
                           dt_softplus=True)


PROVIDERS = {"hybridna": _ours, "mamba_ssm": _peer, "reference": _ref}


def flops(batch, seqlen, heads=H, headdim=P, dstate=N, groups=G, chunk=Q):
    nc = math.ceil(seqlen / chunk)
    per_head = chunk * chunk * headdim + 4 * chunk * headdim * dstate
    return batch * nc * (heads * per_head + groups * chunk * chunk * dstate)


def nbytes(batch, seqlen, mode, itemsize=2, heads=H, headdim=P, dstate=N, groups=G):
    x = batch * seqlen * heads * headdim * itemsize
    bc = 2 * batch * seqlen * groups * dstate * itemsize
    dt = batch * seqlen * heads * itemsize
    fwd = 2 * x + bc + dt
    return fwd if mode == "fwd" else fwd + (3 * x + 2 * bc + 2 * dt)  # bwd: read x, dy; write dx, dB, dC, ddt


def _fn(provider, t, mode):
    fn = PROVIDERS[provider]
    if mode == "fwd":
        return lambda: fn(t)
    y0 = fn(t)
    dy = torch.randn_like(y0)
    del y0
    leaves = [t[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")]

    def fwd_bwd():
        y = fn(t)
        torch.autograd.grad(y, leaves, dy)

    return fwd_bwd


def _skip_reason(provider, batch, seqlen, mode):
    if provider == "mamba_ssm" and _peer_scan is None:
        return "mamba_ssm Triton ops not importable"
    if provider == "reference" and HAS_CUDA and ((batch, seqlen) != GPU_SHAPES[0] or mode != "fwd"):
        return "reference: forward at the first shape only (memory)"
    if provider == "mamba_ssm" and not HAS_CUDA:
        return "peer needs CUDA"
    return None


SHAPES = [pytest.param(s, marks=pytest.mark.gpu) for s in GPU_SHAPES] + CPU_SHAPES


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}")
def test_ssd_scan(benchmark, copy_bandwidth_gbs, shape, provider, mode):
    batch, seqlen = shape
    reason = _skip_reason(provider, batch, seqlen, mode)
    if reason:
        pytest.skip(reason)
    dev = "cuda" if HAS_CUDA else "cpu"
    kw = {} if HAS_CUDA else dict(heads=2, headdim=16, dstate=16)
    t = make(batch, seqlen, dtype=torch.bfloat16 if HAS_CUDA else torch.float32, device=dev,
             requires_grad=mode != "fwd", **kw)
    fl = flops(batch, seqlen) * (1 if mode == "fwd" else 3)
    run_benchmark(benchmark, _fn(provider, t, mode), flops=fl, nbytes=nbytes(batch, seqlen, mode),
                  copy_gbs=copy_bandwidth_gbs, shape=f"B{batch} T{seqlen} H{H} P{P} N{N} G{G} Q{Q} bf16")


def _step_inputs(batch, device, heads=H, headdim=P, dstate=N):
    g = torch.Generator(device=device).manual_seed(0)
    dt_ = torch.bfloat16 if device == "cuda" else torch.float32
    state = torch.randn(batch, heads, headdim, dstate, device=device, generator=g)
    x = torch.randn(batch, heads, headdim, device=device, generator=g).to(dt_)
    dt = torch.randn(batch, heads, device=device, generator=g).to(dt_)
    A = -torch.rand(heads, device=device, generator=g) - 0.5
    Bm = torch.randn(batch, G, dstate, device=device, generator=g).to(dt_)
    Cm = torch.randn(batch, G, dstate, device=device, generator=g).to(dt_)
    D = torch.randn(heads, device=device, generator=g)
    bias = torch.randn(heads, device=device, generator=g)
    return state, x, dt, A, Bm, Cm, D, bias


@pytest.mark.parametrize("batch", [pytest.param(64, marks=pytest.mark.gpu), 2])
def test_ssd_step(benchmark, copy_bandwidth_gbs, batch):
    dev = "cuda" if HAS_CUDA else "cpu"
    if not HAS_CUDA and batch != 2:
        pytest.skip("GPU shape")
    kw = {} if HAS_CUDA else dict(heads=2, headdim=16, dstate=16)
    state, x, dt, A, Bm, Cm, D, bias = _step_inputs(batch, dev, **kw)
    fn = lambda: ssd_step(state, x, dt, A, Bm, Cm, D=D, dt_bias=bias, dt_softplus=True)  # noqa: E731
    run_benchmark(benchmark, fn, nbytes=2 * state.numel() * 4, copy_gbs=copy_bandwidth_gbs,
                  shape=f"B{batch} H{state.shape[1]} P{state.shape[2]} N{state.shape[3]} fp32 state")


def main():  # one markdown table, same run for every provider
    import triton.testing

    assert HAS_CUDA, "GPU only"
    copy_gbs = measure_copy_gbs()  # its 2 GiB are freed before the runs
    print(f"device {torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s, torch {torch.__version__}, "
          f"triton {triton.__version__}, peer {'yes' if _peer_scan else 'no'}")
    print("| shape | mode | hybridna ms | mamba_ssm ms | peer/ours | ours TFLOP/s | ours GB/s (floor ms) | "
          "rel diff vs peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, seqlen in GPU_SHAPES:
        for mode in ("fwd", "fwd_bwd"):
            t = make(batch, seqlen, requires_grad=mode != "fwd")
            res = {}
            for prov in ("hybridna", "mamba_ssm"):
                if _skip_reason(prov, batch, seqlen, mode):
                    continue
                res[prov] = triton.testing.do_bench(_fn(prov, t, mode), return_mode="median")
                torch.cuda.empty_cache()
            diff = ""
            if "mamba_ssm" in res and mode == "fwd":
                with torch.no_grad():
                    a, b = _ours(t).float(), _peer(t).float()
                diff = f"{((a - b).norm() / b.norm()).item():.1e}"
                del a, b
            ms = res["hybridna"]
            fl = flops(batch, seqlen) * (1 if mode == "fwd" else 3)
            nb = nbytes(batch, seqlen, mode)
            peer = res.get("mamba_ssm")
            print(f"| B{batch} T{seqlen} | {mode} | {ms:.3f} | {peer and f'{peer:.3f}'} | "
                  f"{peer and f'{peer / ms:.2f}'} | {fl / ms / 1e9:.0f} | {nb / ms / 1e6:.0f} "
                  f"({nb / copy_gbs / 1e6:.3f}) | {diff} |", flush=True)
            del t
            torch.cuda.empty_cache()
    step_table(copy_gbs)


def step_table(copy_gbs):
    """ssd_step at batch 64: the public call (Python checks + launch), and the same call replayed from
    a CUDA graph (what a decode loop gets), per step."""
    import triton.testing

    state, x, dt, A, Bm, Cm, D, bias = _step_inputs(64, "cuda")

    def step():
        return ssd_step(state, x, dt, A, Bm, Cm, D=D, dt_bias=bias, dt_softplus=True)

    nb = 2 * state.numel() * 4
    ms = triton.testing.do_bench(step, return_mode="median")
    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            step()
    ms_graph = triton.testing.do_bench(graph.replay, return_mode="median") / 10
    for name, t in (("public call", ms), ("CUDA graph", ms_graph)):
        gbs = nb / t / 1e6
        print(f"ssd_step B64 H{H} P{P} N{N} ({name}): {t * 1e3:.1f} us, {gbs:.0f} GB/s = {gbs / copy_gbs:.2f} of copy")


_REF_CACHE: dict = {}


def _variant_error(seqlen=4096):
    """Largest norm-relative error of y and of every gradient against the fp64 chunked reference,
    B1 T{seqlen} at the benchmark's heads / dims (bf16 inputs); run under the current CFG_OVERRIDE."""
    leaves = ("x", "dt", "A", "B", "C", "D", "dt_bias")
    if _REF_CACHE.get("seqlen") != seqlen:  # the fp64 reference once for all variants
        t = make(1, seqlen, requires_grad=True)
        t64 = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
        y_ref = _ref(t64)
        dy = torch.randn_like(y_ref)
        g_ref = torch.autograd.grad(y_ref, [t64[k] for k in leaves], dy)
        _REF_CACHE.update(seqlen=seqlen, t=t, y_ref=y_ref.detach(), dy=dy, g_ref=g_ref)
    t, y_ref, dy, g_ref = (_REF_CACHE[k] for k in ("t", "y_ref", "dy", "g_ref"))
    y = _ours(t)
    g = torch.autograd.grad(y, [t[k] for k in leaves], dy.to(y.dtype))
    errs = {"y": (y.double() - y_ref).norm() / y_ref.norm()}
    with torch.no_grad():  # the forward without grad may take other paths (hin16_nograd, xw_split_nograd)
        y0 = _ours(t)
    errs["y_nograd"] = (y0.double() - y_ref).norm() / y_ref.norm()
    for k, a, r in zip(leaves, g, g_ref):
        errs["d" + k] = (a.double() - r).norm() / r.norm().clamp_min(1e-30)
    worst = max((k for k in errs if k.startswith("d")), key=lambda k: errs[k].item())
    return f"{errs['y'].item():.1e} (no grad {errs['y_nograd'].item():.1e}) / {worst} {errs[worst].item():.1e}"


def sweep(batch=8, seqlen=8192, names=None, with_peer=True):
    """Time launch / precision variants (chunk.CFG_OVERRIDE) at one shape, forward and forward+backward,
    each first checked against the fp64 reference (y error / worst gradient error), and the peer."""
    import triton.testing

    from hybridna_kernels.ssd import chunk

    names = names or list(chunk.SWEEP_CONFIGS)
    fb = {}
    graph = os.environ.get("SSD_GRAPH", "0") == "1"  # also the forward replayed from a CUDA graph (host-free)
    print(f"| variant (B{batch} T{seqlen}) | fwd ms | fwd+bwd ms | err y (no grad) / worst grad (B1 T4096 vs fp64) |"
          + (" fwd graph ms |" if graph else ""))
    print("| --- | --- | --- | --- |" + (" --- |" if graph else ""))
    for name in names:
        chunk.CFG_OVERRIDE.clear()
        chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[name])
        row = []
        try:
            err = _variant_error()
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            err = f"failed: {type(e).__name__}: {str(e)[:60]}"
        for mode in ("fwd", "fwd_bwd"):
            t = make(batch, seqlen, requires_grad=mode != "fwd")
            try:
                row.append(f"{triton.testing.do_bench(_fn('hybridna', t, mode), return_mode='median'):.3f}")
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
                row.append(f"failed: {type(e).__name__}")
            del t
        if graph:
            t = make(batch, seqlen)
            try:
                err += f" | {triton.testing.do_bench_cudagraph(_fn('hybridna', t, 'fwd'), return_mode='median'):.3f}"
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                err += f" | failed: {type(e).__name__}"
            del t
        print(f"| {name} | {row[0]} | {row[1]} | {err} |", flush=True)
        if not row[1].startswith("failed") and not err.startswith("failed"):
            fb[name] = float(row[1])
    chunk.CFG_OVERRIDE.clear()
    if _peer_scan is not None and with_peer:  # last: its autotuning takes a while
        row = []
        for mode in ("fwd", "fwd_bwd"):
            t = make(batch, seqlen, requires_grad=mode != "fwd")
            row.append(f"{triton.testing.do_bench(_fn('mamba_ssm', t, mode), return_mode='median'):.3f}")
            del t
        print(f"| peer mamba_ssm | {row[0]} | {row[1]} | |", flush=True)
    return fb


def profile(batch=8, seqlen=8192, top=20, providers=("hybridna", "mamba_ssm"), mode="fwd_bwd", label=""):
    """Per-kernel CUDA time of one forward + backward (mode "fwd": forward without grad), ours and the
    peer's (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    for prov in providers:
        if _skip_reason(prov, batch, seqlen, mode):
            continue
        t = make(batch, seqlen, requires_grad=mode != "fwd")
        fn = _fn(prov, t, mode)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"--- {prov}{label} B{batch} T{seqlen} {mode}, CUDA time per call by kernel")
        rows = []
        for ev in prof.key_averages():
            tt = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if tt > 0:
                rows.append((tt / 5 / 1e3, ev.count // 5, ev.key[:70]))
        rows.sort(reverse=True)
        print(f"   total {sum(r[0] for r in rows):.3f} ms:", "; ".join(
            f"{key.split('(')[0].replace('_kernel', '')[:40]} {ms:.3f}" + (f" x{cnt}" if cnt > 1 else "")
            for ms, cnt, key in rows[:top]))
        del t, fn
        torch.cuda.empty_cache()


def _time_shape(name, bsz, sl):
    import triton.testing

    from hybridna_kernels.ssd import chunk

    chunk.CFG_OVERRIDE.clear()
    chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[name])
    row = []
    for mode in ("fwd", "fwd_bwd"):
        t = make(bsz, sl, requires_grad=mode != "fwd")
        row.append(f"{triton.testing.do_bench(_fn('hybridna', t, mode), return_mode='median'):.3f}")
        del t
        torch.cuda.empty_cache()
    chunk.CFG_OVERRIDE.clear()
    print(f"| {name} B{bsz} T{sl} | {row[0]} | {row[1]} | |", flush=True)


def session3():
    """SSD_VARIANTS (comma-separated) timed at B8 T8192, each checked first; per-kernel profiles of the
    default (fwd and fwd+bwd) and of the fastest fwd+bwd variant; the other two shapes for the default
    and the fastest; ssd_step at batch 64 (public call and CUDA graph)."""
    from hybridna_kernels.ssd import chunk

    sel = [v for v in os.environ.get("SSD_VARIANTS", "default").split(",") if v]
    import triton
    copy_gbs = measure_copy_gbs(256 * 1024 * 1024)
    print(f"{torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s, triton {triton.__version__}")
    step_table(copy_gbs)
    top = int(os.environ.get("SSD_PROFILE_TOP", "12"))

    def prof(name):
        chunk.CFG_OVERRIDE.clear()
        chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[name])
        for mode in ("fwd", "fwd_bwd"):
            profile(top=top, providers=("hybridna",), mode=mode, label=f" '{name}'")
        chunk.CFG_OVERRIDE.clear()

    prof(sel[0])  # the default first (the per-kernel split of the current code)
    fb = sweep(names=sel, with_peer=False)
    best = min(fb, key=fb.get) if fb else sel[0]
    for bsz, sl in GPU_SHAPES[1:][::-1]:
        for name in dict.fromkeys((best, sel[0])):
            _time_shape(name, bsz, sl)
    if best != sel[0]:
        prof(best)


def final():
    """The current defaults: B8 T8192 (checked first against the fp64 reference), B1 T131072, B2 T32768
    (fwd without grad, fwd+bwd), ssd_step at batch 64, the per-kernel profile at B8 T8192."""
    import triton.testing

    from hybridna_kernels.ssd import chunk

    copy_gbs = measure_copy_gbs(256 * 1024 * 1024)
    print(f"{torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s, triton {triton.__version__}")
    sweep(names=["default"], with_peer=False)
    for bsz, sl in GPU_SHAPES[1:][::-1]:
        _time_shape("default", bsz, sl)
    step_table(copy_gbs)
    chunk.CFG_OVERRIDE.clear()
    for mode in ("fwd", "fwd_bwd"):
        profile(top=int(os.environ.get("SSD_PROFILE_TOP", "12")), providers=("hybridna",), mode=mode,
                label=" 'default'")


if __name__ == "__main__":
    if "--profile-only" in sys.argv:  # just the per-kernel profile (short GPU calls)
        profile()
        sys.exit(0)
    if "--warm" in sys.argv:  # compile one variant's kernels (Triton's disk cache) at the sweep's specialisation
        from hybridna_kernels.ssd import chunk
        chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[os.environ["SSD_VARIANTS"]])
        _fn("hybridna", make(1, 4096, requires_grad=True), "fwd_bwd")()
        _fn("hybridna", make(1, 4096), "fwd")()  # the no-grad forward (bf16 hin with hin16_nograd)
        torch.cuda.synchronize()
        sys.exit(0)
    if "--final" in sys.argv:  # the defaults only: the headline rows, ssd_step, a per-kernel profile
        final()
        sys.exit(0)
    if "--session3" in sys.argv:  # round script of session 3: sweep, profiles, long shapes, ssd_step
        session3()
        sys.exit(0)
    if "--sweep-only" in sys.argv:  # variants from SSD_VARIANTS (comma-separated; all when unset)
        sel = [v for v in os.environ.get("SSD_VARIANTS", "").split(",") if v]
        fb = sweep(names=sel or None, with_peer=False)
        best = os.environ.get("SSD_PROFILE") or (min(fb, key=fb.get) if fb else None)
        if best:  # per-kernel profile of one variant (default: the fastest fwd+bwd)
            from hybridna_kernels.ssd import chunk
            print(f"profile of variant '{best}'")
            chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[best])
            profile(top=int(os.environ.get("SSD_PROFILE_TOP", "14")),
                    providers=("hybridna", "mamba_ssm") if os.environ.get("SSD_PROFILE_PEER") else ("hybridna",))
        if best:  # the other two shapes, fastest variant
            for bsz, sl in GPU_SHAPES[1:]:
                _time_shape(best, bsz, sl)
        if os.environ.get("SSD_PEER", "1") == "1":  # the peer last (its autotuning takes a while)
            sweep(names=["default"], with_peer=True)  # default again, next to the peer
        sys.exit(0)
    if "--sweep" in sys.argv:
        sweep()
    main()
    if "--profile" in sys.argv:
        profile()
