"""causal_conv1d benchmarks (issue 3): hybridna's Triton kernels, PyTorch's grouped F.conv1d (cuDNN) and
the causal-conv1d peer when it is installed.

    pytest bench/bench_conv1d.py --benchmark-only           # pytest-benchmark table + extra_info rates
    python bench/bench_conv1d.py [--sweep] [--json out]      # plain table; --sweep times every tile config

Rate: bytes that must cross HBM (forward: read x, write y; backward: read x and dy, write dx), as a
fraction of the device-to-device copy bandwidth measured in the same run. Every timed shape is first
checked against the float64 reference (on a slice for the largest shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # kernels through the interpreter on CPU (must precede the kernel imports)
    os.environ.setdefault("TRITON_INTERPRET", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/conftest.py before tests/conftest.py

from helpers import tol  # noqa: E402  (tests/helpers.py: DESIGN.md's tolerance table)

from hybridna_kernels import causal_conv1d  # noqa: E402
from hybridna_kernels.conv1d import causal_conv1d_ref  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"

try:  # the peer (Tri Dao's CUDA kernels); absent on the GPU machine unless installed
    from causal_conv1d import causal_conv1d_fn as peer_causal_conv1d_fn
    PEER_SKIP = None
except ImportError as e:
    peer_causal_conv1d_fn = None
    PEER_SKIP = f"causal_conv1d not importable: {e}"

# (name, batch, dim, seqlen, width): issue 3's shapes on GPU, a tiny one for CPU runs
# the B1 shape (forward only, same compiled kernels as the first) before W8, so a run cut short has it
GPU_SHAPES = [("B8-D2304-L8192-W4", 8, 2304, 8192, 4), ("B1-D2304-L131072-W4", 1, 2304, 131072, 4),
              ("B8-D2304-L8192-W8", 8, 2304, 8192, 8)]
CPU_SHAPES = [("B1-D64-L128-W4", 1, 64, 128, 4)]
PROVIDERS = ["hybridna", "reference", "causal_conv1d"]


def make_inputs(B, D, L, W, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(B, L, D, generator=g, device=DEV, dtype=dtype).transpose(1, 2)  # channel-last
    w = (torch.randn(D, W, generator=g, device=DEV, dtype=torch.float32) / W**0.5).to(dtype)
    b = torch.randn(D, generator=g, device=DEV, dtype=dtype)
    return x, w, b


def forward_fn(provider, x, w, b):
    W = w.shape[1]
    if provider == "hybridna":
        return lambda: causal_conv1d(x, w, b, activation="silu")
    if provider == "reference":  # grouped conv (cuDNN on GPU), the PyTorch way to write it
        return lambda: F.silu(F.conv1d(x, w[:, None], b, padding=W - 1, groups=x.shape[1])[..., : x.shape[-1]])
    if provider == "causal_conv1d":
        return lambda: peer_causal_conv1d_fn(x, w, b, activation="silu")
    raise ValueError(provider)


def check_forward(provider, x, w, b, dtype):
    """Correctness at the timed shape before timing: against float64 on a slice of channels."""
    y = forward_fn(provider, x, w, b)()
    sl = slice(0, min(x.shape[1], 256))
    yr = causal_conv1d_ref(x[:, sl].double(), w[sl].double(), b[sl].double(), "silu")
    err = ((y[:, sl].double() - yr).norm() / yr.norm()).item()
    assert torch.isfinite(y).all() and err <= tol(dtype, "fwd"), f"{provider}: forward rel err {err:.2e}"
    return err


def check_backward(provider, x, w, b, dtype):
    sl = slice(0, min(x.shape[1], 256))
    xs, ws, bs = (t[:, sl] if t.dim() == 3 else t[sl] for t in (x, w, b))
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (xs, ws, bs))
    if xs.dim() == 3 and x.stride(1) == 1:
        xs = xs.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    gy = torch.randn_like(xs)
    y = forward_fn(provider, xs, ws, bs)()
    grads = torch.autograd.grad(y, (xs, ws, bs), gy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (xs, ws, bs))
    grads_r = torch.autograd.grad(causal_conv1d_ref(xr, wr, br, "silu"), (xr, wr, br), gy.double())
    errs = [((a.double() - r).norm() / r.norm()).item() for a, r in zip(grads, grads_r)]
    assert all(e <= tol(dtype, "grad") for e in errs), f"{provider}: gradient rel errs {errs}"
    return max(errs)


def _shape_params():
    shapes = [pytest.param(s, marks=pytest.mark.gpu, id=s[0]) for s in GPU_SHAPES]
    return shapes + [pytest.param(s, id=s[0]) for s in CPU_SHAPES]


def _skip_unavailable(provider, W):
    if provider == "causal_conv1d" and PEER_SKIP:
        pytest.skip(PEER_SKIP)
    if provider == "causal_conv1d" and W > 4:
        pytest.skip("causal_conv1d supports widths 2..4 only")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", _shape_params())
def test_conv1d_fwd(benchmark, copy_bandwidth_gbs, shape, provider):
    from conftest import run_benchmark

    name, B, D, L, W = shape
    _skip_unavailable(provider, W)
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    x, w, b = make_inputs(B, D, L, W, dtype)
    err = check_forward(provider, x, w, b, dtype)
    nbytes = 2 * x.numel() * x.element_size()
    run_benchmark(benchmark, forward_fn(provider, x, w, b), nbytes=nbytes, copy_gbs=copy_bandwidth_gbs,
                  shape=name, dtype=str(dtype), provider=provider, rel_err=err, graph=True)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", [p for p in _shape_params() if p.id.endswith("W4")])
def test_conv1d_fwd_bwd(benchmark, copy_bandwidth_gbs, shape, provider):
    from conftest import run_benchmark

    name, B, D, L, W = shape
    _skip_unavailable(provider, W)
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    x, w, b = make_inputs(B, D, L, W, dtype)
    err = check_backward(provider, x, w, b, dtype)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    gy = torch.randn_like(x)
    fwd = forward_fn(provider, x, w, b)

    def step():
        torch.autograd.grad(fwd(), (x, w, b), gy)

    nbytes = 5 * x.numel() * x.element_size()  # fwd: x, y; bwd: x, dy, dx
    run_benchmark(benchmark, step, nbytes=nbytes, copy_gbs=copy_bandwidth_gbs,
                  shape=name, dtype=str(dtype), provider=provider, grad_rel_err=err, graph=True)


# ------------------------------------------------------------------------------------------------
# Script mode: one table for RESULTS.md, optionally every tile config (for choosing the autotune list)
# ------------------------------------------------------------------------------------------------


def _bench(fn, quick=False):
    """Median ms (do_bench). quick: 25 ms warm-up, 100 ms of repeats (the sweep; the median is stable)."""
    if not HAS_CUDA:  # --smoke on CPU: one interpreted call, wall clock
        import time

        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25 if quick else 50, rep=100 if quick else 200, return_mode="median")


class _Rows(list):
    """Rows printed as they come, so a run cut short still reports what it measured."""

    copy = None

    def append(self, r):
        r["frac_copy"] = r["gbs"] / self.copy if self.copy else float("nan")
        print(f"| {r['shape']:19s} | {r['op']:9s} | {r['provider']:34s} | {r['ms']:7.4f} | {r['frac_copy']:.3f} |"
              + (f" {r['rel_err']:.1e} |" if "rel_err" in r else " |"), flush=True)
        super().append(r)


def _copy_gbs():
    from conftest import measure_copy_gbs

    return measure_copy_gbs(timer=_bench)


def _slice_ref_grads(x, w, b, gy, n=256):
    """float64 reference gradients of the first n channels (channels are independent)."""
    xr, wr, br = (t[:, :n] if t.dim() == 3 else t[:n] for t in (x, w, b))
    xr, wr, br = (t.detach().double().requires_grad_() for t in (xr, wr, br))
    return torch.autograd.grad(causal_conv1d_ref(xr, wr, br, "silu"), (xr, wr, br), gy[:, :n].double())


def cfg_str(c):
    """Short config name: 'rows BD256 w2 R8 CH128' or 'tile BT16 BD256 w4 SCR'."""
    if c.get("KIND") == "streams":
        return (f"streams NS{c['NS']} BD{c['BD']} R{c['R']} CH{c['CH']}"
                + "".join(f" {k}" for k in ("FUSE", "TAIL", "CST", "EVEN") if c.get(k)))
    if c.get("KIND") == "rows":
        return (f"rows BD{c['BD']} w{c['num_warps']} R{c['R']} CH{c['CH']}" + (" PF" if c.get("PF") else "")
                + ("" if c.get("FAST", True) else " noFAST"))
    flags = "".join(k[:3] for k in ("SYNC", "SCRATCH") if c.get(k))
    return f"tile BT{c['BT']} BD{c['BD']} w{c['num_warps']} {flags}".rstrip()


def _failed(rows, name, op, c, e):
    print(f"| {name:19s} | {op:9s} | {cfg_str(c):34s} | FAILED {type(e).__name__}: {str(e)[:80]}", flush=True)
    list.append(rows, dict(shape=name, op=op, provider=cfg_str(c), config=c, ms=float("nan"), gbs=float("nan"),
                           error=f"{type(e).__name__}: {e}"))


def sweep(rows, name, x, w, b, nb, dtype, bwd=True):
    """Time every config (each checked at this shape first); end-to-end fwd+bwd for the best ones.
    A config that fails to compile or run is reported and skipped."""
    from hybridna_kernels.conv1d import conv

    n = min(256, x.shape[1])
    yr = causal_conv1d_ref(x[:, :n].double(), w[:n].double(), b[:n].double(), "silu")
    best = None
    for c in conv._fwd_configs():
        try:
            y, _ = conv.causal_conv1d_fwd(x, w, b, "silu", config=c)
            err = ((y[:, :n].double() - yr).norm() / yr.norm()).item()
            ok = bool(torch.isfinite(y).all()) and err <= tol(dtype, "fwd")
            ms = _bench(lambda: conv.causal_conv1d_fwd(x, w, b, "silu", config=c), True) if ok else float("nan")
        except Exception as e:  # noqa: BLE001  (report and go on: one run compares every variant)
            _failed(rows, name, "fwd-sweep", c, e)
            continue
        rows.append(dict(shape=name, op="fwd-sweep", provider=cfg_str(c), config=c, ms=ms, gbs=2 * nb / ms / 1e6,
                         rel_err=err))
        if ok and (best is None or ms < best[0]):
            best = (ms, c)
    if not bwd or best is None:
        return
    gy = torch.randn_like(x)
    refs = _slice_ref_grads(x, w, b, gy, n)
    timed = []
    for c in conv._bwd_configs():
        try:
            dx, dw, db, _ = conv.causal_conv1d_bwd(x, w, b, "silu", None, None, gy, None, False, config=c)
            errs = [((o.double() - r).norm() / r.norm()).item() for o, r in zip((dx[:, :n], dw[:n], db[:n]), refs)]
            ok = all(e <= tol(dtype, "grad") for e in errs) and bool(torch.isfinite(dx).all())
            ms = _bench(lambda: conv.causal_conv1d_bwd(x, w, b, "silu", None, None, gy, None, False, config=c), True) \
                if ok else float("nan")
        except Exception as e:  # noqa: BLE001
            _failed(rows, name, "bwd-sweep", c, e)
            continue
        rows.append(dict(shape=name, op="bwd-sweep", provider=cfg_str(c), config=c, ms=ms, gbs=3 * nb / ms / 1e6,
                         rel_err=max(errs)))
        if ok:
            timed.append((ms, c))
    # end to end through the public function for the three fastest backward configs
    xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
    conv.FWD_CONFIG_OVERRIDE = best[1]
    try:
        for _, c in sorted(timed, key=lambda t: t[0])[:2]:
            conv.BWD_CONFIG_OVERRIDE = c
            ms2 = _bench(lambda: torch.autograd.grad(causal_conv1d(xg, wg, bg, activation="silu"), (xg, wg, bg), gy),
                         True)
            rows.append(dict(shape=name, op="fb-sweep", provider=f"best fwd + bwd {cfg_str(c)}", ms=ms2,
                             gbs=5 * nb / ms2 / 1e6, config=dict(fwd=best[1], bwd=c)))
    finally:
        conv.FWD_CONFIG_OVERRIDE = conv.BWD_CONFIG_OVERRIDE = None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="also time every forward/backward tile config")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter): checks the script runs")
    args = ap.parse_args(argv)
    assert HAS_CUDA or args.smoke, "script mode times on a GPU (use --smoke on CPU)"
    from hybridna_kernels.utils import poison_enabled, set_poison

    if poison_enabled():  # HYBRIDNA_POISON=1 (a test setting) would time a NaN fill of every output
        print("HYBRIDNA_POISON=1 in the environment: turned off for timing")
        set_poison(False)
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    rows = _Rows()
    rows.copy = copy = _copy_gbs()
    if HAS_CUDA:
        print(f"device {torch.cuda.get_device_name()}  copy bandwidth {copy:.0f} GB/s", flush=True)
    print("| shape | op | provider / config | ms | frac. of copy | rel. err |\n| --- | --- | --- | --- | --- | --- |")
    shapes = CPU_SHAPES if args.smoke else GPU_SHAPES
    dev = torch.cuda.get_device_name() if HAS_CUDA else "cpu"

    def dump():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(device=dev, copy_gbs=copy, rows=list(rows)), f, indent=1)

    # defaults and baselines first (a run cut short keeps them), then the sweeps
    for name, B, D, L, W in shapes:
        x, w, b = make_inputs(B, D, L, W, dtype)
        nb = x.numel() * x.element_size()
        for prov in PROVIDERS:
            if prov == "causal_conv1d" and (PEER_SKIP or W > 4):
                print(f"{name} {prov}: skipped ({PEER_SKIP or 'width > 4 unsupported by the peer'})")
                continue
            err = check_forward(prov, x, w, b, dtype)
            ms = _bench(forward_fn(prov, x, w, b))
            rows.append(dict(shape=name, op="fwd", provider=prov, ms=ms, gbs=2 * nb / ms / 1e6, rel_err=err))
            if L <= 8192 and (W == 4 or prov == "hybridna"):
                gerr = check_backward(prov, x, w, b, dtype)
                xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
                gy = torch.randn_like(xg)
                f = forward_fn(prov, xg, wg, bg)
                ms2 = _bench(lambda: torch.autograd.grad(f(), (xg, wg, bg), gy))
                rows.append(dict(shape=name, op="fwd+bwd", provider=prov, ms=ms2, gbs=5 * nb / ms2 / 1e6,
                                 rel_err=gerr))
                if HAS_CUDA:  # the same through a CUDA graph: the GPU time without the host's launch gaps
                    from conftest import time_ms_graph

                    ms3 = time_ms_graph(lambda: torch.autograd.grad(f(), (xg, wg, bg), gy))
                    if ms3 is not None:
                        rows.append(dict(shape=name, op="fb-graph", provider=prov, ms=ms3, gbs=5 * nb / ms3 / 1e6))
        del x, w, b
        dump()
    summary(rows, swept=False)
    if args.sweep:
        # W4 (fwd, bwd), B1 (fwd; the W4 kernels, no new compiles), then W8 (fwd, bwd)
        for name, B, D, L, W in sorted(shapes, key=lambda s: (s[4], s[3] > 8192)):
            x, w, b = make_inputs(B, D, L, W, dtype)
            sweep(rows, name, x, w, b, x.numel() * x.element_size(), dtype, bwd=L <= 8192)
            del x, w, b
            if HAS_CUDA:
                torch.cuda.empty_cache()
            dump()
        summary(rows, swept=True)


def summary(rows, swept=True):
    """Issue 3's targets against this run's default-config rows, or (swept) the best sweep rows."""
    def ms(shape, op, prov="hybridna"):
        r = [r["ms"] for r in rows if r["shape"] == shape and r["op"] == op and r["provider"] == prov]
        return r[0] if r else float("nan")

    def best(shape, op):
        r = [r["ms"] for r in rows if r["shape"] == shape and r["op"] == op and r["ms"] == r["ms"]]
        return min(r) if r else float("nan")

    s4, s8, s1 = "B8-D2304-L8192-W4", "B8-D2304-L8192-W8", "B1-D2304-L131072-W4"
    f4, f8, fb, f1 = ms(s4, "fwd"), ms(s8, "fwd"), ms(s4, "fwd+bwd"), ms(s1, "fwd")
    fg = ms(s4, "fb-graph")
    frac = [r["frac_copy"] for r in rows if r["shape"] == s4 and r["op"] == "fwd" and r["provider"] == "hybridna"]
    if not swept:
        print(f"targets (defaults): fwd W4 {f4:.4f} ms = {frac[0] if frac else float('nan'):.3f} of copy (>= 0.90); "
              f"fwd+bwd W4 {fb:.4f} ms, from a CUDA graph {fg:.4f} ms (<= 0.55); B1 L131072 fwd {f1:.4f} ms (<= 0.47); W8/W4 fwd {f8 / f4:.3f} "
              f"(<= 1.15); F.conv1d/ours fwd W4 {ms(s4, 'fwd', 'reference') / f4:.1f}x, fwd+bwd "
              f"{ms(s4, 'fwd+bwd', 'reference') / fb:.1f}x; W8 fwd+bwd {ms(s8, 'fwd+bwd'):.4f} ms", flush=True)
        return
    print(f"best sweep: fwd W4 {best(s4, 'fwd-sweep'):.4f} W8 {best(s8, 'fwd-sweep'):.4f} B1 {best(s1, 'fwd-sweep'):.4f}; "
          f"bwd W4 {best(s4, 'bwd-sweep'):.4f} W8 {best(s8, 'bwd-sweep'):.4f}; "
          f"fwd+bwd W4 {best(s4, 'fb-sweep'):.4f} W8 {best(s8, 'fb-sweep'):.4f}", flush=True)


if __name__ == "__main__":
    main()
