# Session 5: the dk/dv options at the GPU tests' failing block sizes, under the interpreter against fp64 (CPU, ~3 min).
import os, sys, itertools, torch
os.environ["TRITON_INTERPRET"] = "1"
from hybridna_kernels.attention import flash
from hybridna_kernels.attention.naive import attention_ref
torch.manual_seed(0)
def run(B, Lq, Lk, Hq, Hkv, D, window, blocks, opts):
    q = torch.randn(B, Lq, Hq, D); k = torch.randn(B, Lk, Hkv, D); v = torch.randn(B, Lk, Hkv, D); do = torch.randn(B, Lq, Hq, D)
    qf, kf, vf = (t.double().requires_grad_() for t in (q, k, v))
    of = attention_ref(qf, kf, vf, causal=True, window=window)
    ref = torch.autograd.grad(of, (qf, kf, vf), do.double())
    flash.VARIANT = flash.parse_variant("dq_delta=1" + (";dkdv_opt=" + opts if opts else ""))
    sc = D ** -0.5
    o, lse = flash.attention_fwd(q, k, v, causal=True, window=window, softmax_scale=sc)
    dq, dk, dv = flash.attention_bwd(do, q, k, v, o, lse, causal=True, window=window, softmax_scale=sc, blocks=(blocks, (64, 32)))
    errs = [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip((dq, dk, dv), ref)]
    return errs
for shape in [(1, 300, 340, 4, 2, 64, 100), (1, 300, 300, 2, 2, 64, None), (1, 260, 260, 2, 2, 32, None)]:
    for blocks in [(32, 64), (64, 128), (32, 128), (64, 64)]:
        for opts in ["", "oneloop,rowshift,gunroll", "oneloop,gunroll"]:
            e = run(*shape, blocks, opts)
            print(shape, blocks, opts or "default", " ".join(f"{x:.1e}" for x in e), "BAD" if max(e) > 1e-4 else "", flush=True)
