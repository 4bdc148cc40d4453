"""Backward config sweep of causal_conv1d at B8 D2304 L8192 W4 bf16 (H100): each config checked against
the fp64 reference on 256 channels, then timed (do_bench median with L2 flush, and from a CUDA graph)."""
import sys, os
sys.path.insert(0, "bench")
import torch, triton.testing
from bench_conv1d import make_inputs, _slice_ref_grads, cfg_str
from helpers import tol
from hybridna_kernels.conv1d import conv, causal_conv1d
x, w, b = make_inputs(8, 2304, 8192, 4, torch.bfloat16)
gy = torch.randn_like(x)
refs = _slice_ref_grads(x, w, b, gy, 256)
nb = x.numel() * 2
print("| bwd config | ms | graph ms | of 3000 GB/s | max rel err |")
res = []
for c in conv._bwd_configs():
    f = lambda: conv.causal_conv1d_bwd(x, w, b, "silu", None, None, gy, None, False, config=c)
    try:
        dx, dw, db, _ = f()
        errs = [((o.double() - r).norm() / r.norm()).item() for o, r in zip((dx[:, :256], dw[:256], db[:256]), refs)]
        assert max(errs) <= tol(torch.bfloat16, "grad"), errs
        ms = triton.testing.do_bench(f, return_mode="median")
        gms = triton.testing.do_bench_cudagraph(f, return_mode="median")
    except Exception as e:
        print(f"| {cfg_str(c)} | FAILED {type(e).__name__}: {str(e)[:100]}"); continue
    res.append((gms, c)); print(f"| {cfg_str(c)} | {ms:.4f} | {gms:.4f} | {3 * nb / gms / 3e9:.3f} | {max(errs):.1e} |", flush=True)
fw = lambda: conv.causal_conv1d_fwd(x, w, b, "silu")
print(f"fwd default: {triton.testing.do_bench(fw, return_mode='median'):.4f} ms, graph {triton.testing.do_bench_cudagraph(fw, return_mode='median'):.4f}")
xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
for gms, c in sorted(res, key=lambda t: t[0])[:3]:
    conv.BWD_CONFIG_OVERRIDE = c
    fb = lambda: torch.autograd.grad(causal_conv1d(xg, wg, bg, activation="silu"), (xg, wg, bg), gy)
    print(f"fwd+bwd via autograd, bwd {cfg_str(c)}: do_bench {triton.testing.do_bench(fb, return_mode='median'):.4f} ms, graph {triton.testing.do_bench_cudagraph(fb, return_mode='median'):.4f} ms", flush=True)
conv.BWD_CONFIG_OVERRIDE = None
