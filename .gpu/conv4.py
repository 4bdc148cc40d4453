"""conv1d (issue 3) session 4: backward variants at B8 D2304 L8192 W4 bf16 SiLU channel-last (H100).

Per variant (a conv._bwd_configs()-style dict set as conv.BWD_CONFIG_OVERRIDE, so the autograd path uses
it too): fp64 check of dx / dweight / dbias on the first 256 channels (bwd alone and through autograd),
a determinism check (two backward runs bit-equal), then backward alone and forward + backward through
autograd, each by do_bench (median, L2 flushed) and from a CUDA graph. The forward default and the copy
bandwidth are timed once in the same process. One line per variant, printed as it goes.
CONV4_VARIANTS=old,lean128,... picks variants (default: all, in the order below)."""
import os
import sys
import time

sys.path.insert(0, "bench")
import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
from bench_conv1d import make_inputs, _slice_ref_grads  # noqa: E402
from conftest import measure_copy_gbs  # noqa: E402  (bench/conftest.py, first on sys.path)
from helpers import tol  # noqa: E402
from hybridna_kernels.conv1d import conv, causal_conv1d  # noqa: E402

T0 = time.time()
BASE = dict(KIND="streams", BD=64, num_warps=4, NS=4, R=8, CH=128, FUSE=False, TAIL=False)
VARIANTS = {  # name: config (old = the session-3 default flags, on this branch's code), most important first
    "old": dict(BASE),
    "lean128_f2": dict(BASE, FUSE=2, TAIL=True, CST=True, EVEN=True),
    "lean128": dict(BASE, FUSE=1, TAIL=True, CST=True, EVEN=True),
    "lean256_f2": dict(BASE, CH=256, FUSE=2, TAIL=True, CST=True, EVEN=True),
    "fuse": dict(BASE, FUSE=1),
    "lean128_ns8_f2": dict(BASE, NS=8, num_warps=8, FUSE=2, TAIL=True, CST=True, EVEN=True),
}
names = [n for n in os.environ.get("CONV4_VARIANTS", ",".join(VARIANTS)).split(",") if n]

B, D, L, W = 8, 2304, 8192, 4
if os.environ.get("CONV4_DRY"):  # CPU dry run of the script's logic (TRITON_INTERPRET=1): tiny shape, fake timers
    B, D, L = 2, 64, 300
    triton.testing.do_bench = triton.testing.do_bench_cudagraph = lambda fn, return_mode=None: (fn(), 1.0)[1]
    torch.cuda.get_device_name = lambda: "cpu (dry run)"
    _mc = measure_copy_gbs
    measure_copy_gbs = lambda: _mc(n=1 << 20, device="cpu", timer=lambda fn: (fn(), 1.0)[1])  # noqa: E731
x, w, b = make_inputs(B, D, L, W, torch.bfloat16)
gy = torch.randn_like(x)  # channel-last like x (CST applies: x, dy, dx share the row stride)
refs = _slice_ref_grads(x, w, b, gy, min(256, D))
nb = x.numel() * x.element_size()
gbs = measure_copy_gbs()
print(f"{torch.cuda.get_device_name()} triton {triton.__version__} torch {torch.__version__}; copy {gbs:.0f} GB/s; "
      f"floors at that rate: fwd {2 * nb / gbs / 1e6:.4f} bwd {3 * nb / gbs / 1e6:.4f} fwd+bwd {5 * nb / gbs / 1e6:.4f} ms;"
      f" x/gy row strides {x.stride(2)}/{gy.stride(2)}", flush=True)


def bench2(fn):
    return (triton.testing.do_bench(fn, return_mode="median"),
            triton.testing.do_bench_cudagraph(fn, return_mode="median"))


def rel_errs(outs):
    return max(((o.double() - r).norm() / r.norm()).item() for o, r in zip(outs, refs))


fw = lambda: conv.causal_conv1d_fwd(x, w, b, "silu")  # noqa: E731
f_ms, f_g = bench2(fw)
print(f"fwd default: {f_ms:.4f} ms (graph {f_g:.4f}), {2 * nb / f_g / 1e6 / gbs:.3f} of copy (graph) "
      f"[{time.time() - T0:.0f} s]", flush=True)
xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
print("| variant | bwd ms | bwd graph | of copy | fwd+bwd ms | fwd+bwd graph | err bwd / e2e | det |", flush=True)
for n in names:
    c = VARIANTS[n]
    try:
        fb_only = lambda: conv.causal_conv1d_bwd(x, w, b, "silu", None, None, gy, None, False, config=c)  # noqa: E731
        r1, r2 = fb_only(), fb_only()
        e_b = rel_errs((r1[0][:, :256], r1[1][:256], r1[2][:256]))
        det = all(torch.equal(p, q) for p, q in zip(r1[:3], r2[:3]))
        conv.BWD_CONFIG_OVERRIDE = c
        fe = lambda: torch.autograd.grad(causal_conv1d(xg, wg, bg, activation="silu"), (xg, wg, bg), gy)  # noqa: E731
        g = fe()
        e_e = rel_errs((g[0][:, :256], g[1][:256], g[2][:256]))
        ok = max(e_b, e_e) <= tol(torch.bfloat16, "grad") and det
        b_ms, b_g = bench2(fb_only)
        e_ms, e_g = bench2(fe)
        print(f"| {n} | {b_ms:.4f} | {b_g:.4f} | {3 * nb / b_g / 1e6 / gbs:.3f} | {e_ms:.4f} | {e_g:.4f} | "
              f"{e_b:.1e} / {e_e:.1e}{'' if ok else ' FAIL'} | {det} | [{time.time() - T0:.0f} s]", flush=True)
    except Exception as ex:  # one variant's failure must not hide the others
        print(f"| {n} | FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
    finally:
        conv.BWD_CONFIG_OVERRIDE = None
