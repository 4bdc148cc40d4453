"""What the attention GPU scripts (.gpu/attn6.py, attn7.py) share: variant selection, inputs, the public forward +
backward, the backward alone, the warm-up workers' loop, the checks (fp32 reference, the default) and the timer.

A script sets TRITON_INTERPRET=1 itself for a dry run (before this module imports triton), then calls
`setup(dry, t0, budget)` once: the settings are this module's globals (DRY, DEV, DT, T0, BUDGET).
"""
import time

import torch
import triton
import triton.testing

from hybridna_kernels import flash_attention
from hybridna_kernels.attention import flash
from hybridna_kernels.attention.flash import attention_bwd
from hybridna_kernels.attention.naive import attention_ref

DRY = False
DEV = "cuda"
DT = torch.bfloat16
T0 = time.time()
BUDGET = 100.0


def setup(dry, t0, budget):
    """dry: CPU dry run (interpreter, fp16, fake timers); budget: seconds from t0."""
    global DRY, DEV, DT, T0, BUDGET
    DRY, T0, BUDGET = dry, t0, budget
    DEV = "cpu" if DRY else "cuda"
    DT = torch.float16 if DRY else torch.bfloat16


def set_variant(v, base):
    """Variant string v (None: the defaults) on top of `base` (explicit variants replace DEFAULT_FEATURES)."""
    flash.VARIANT = {} if v is None else flash.parse_variant(base + ";" + v)


def left():
    return BUDGET - (time.time() - T0)


def make(B, Hq, Hkv, L, D, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    mk = lambda H: torch.randn(B, L, H, D, generator=g, device=DEV).to(DT)  # noqa: E731
    return mk(Hq), mk(Hkv), mk(Hkv), mk(Hq)


def fwd_bwd(q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = flash_attention(q, k, v, causal=True)
    return torch.autograd.grad(o, (q, k, v), do)


def bwd_fn(q, k, v, do, o, lse):
    scale = q.shape[-1] ** -0.5
    return lambda: attention_bwd(do, q, k, v, o, lse, causal=True, window=None, softmax_scale=scale)


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def bench(fn, rep):
    if DRY:
        fn()
        return 1.0
    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")


def warm(jobs, i, n):
    """Worker i of n: forward + backward once for every job j = i mod n, a job being (select, v, Hq, Hkv, L, D):
    select(v) sets variant v, the inputs are B1 Hq:Hkv L D (the same specialisations as the timed shapes)."""
    for j, (select, v, Hq, Hkv, L, D) in enumerate(jobs):
        if j % n != i:
            continue
        select(v)
        q, k, vv, do = make(1, Hq, Hkv, L, D)
        try:
            fwd_bwd(q, k, vv, do)
            torch.cuda.synchronize()
        except Exception as e:  # reported again by the main's check
            print(f"warm {Hq}:{Hkv} D{D} {v}: {type(e).__name__} {str(e)[:200]}", flush=True)


def check(vs, select, B, Hq, Hkv, L, D, Lc, width, bitwise=False):
    """(1a) every variant of vs [(name, variant)] against an fp32 reference at B1 Lc (dq, dk, dv: max |a - b| /
    max |b|), (1b) the backward alone (from the default's o / lse) against the default's at B Hq:Hkv L D
    ("bitwise" when equal, if asked); over 2e-2 is FAIL. One row per variant, its name `width` wide. Returns the
    variants that passed and the timed shape's (q, k, v, do, o, lse)."""
    q, k, v, do = make(1, Hq, Hkv, Lc, D, seed=1)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    of = attention_ref(qf, kf, vf, causal=True)
    refs = torch.autograd.grad(of, (qf, kf, vf), do.float())
    del of, qf, kf, vf
    ok = {}
    for vn, vs_ in vs:
        select(vs_)
        try:
            g = fwd_bwd(q, k, v, do)
            ok[vn] = [rel(a, r) for a, r in zip(g, refs)]
        except Exception as e:
            ok[vn] = None
            print(f"  {vn}: ERROR {type(e).__name__} {str(e)[:300]}", flush=True)
    del refs
    q, k, v, do = make(B, Hq, Hkv, L, D)
    select(None)
    o, lse = flash.attention_fwd(q, k, v, causal=True, window=None, softmax_scale=D ** -0.5)
    base = [t.clone() for t in bwd_fn(q, k, v, do, o, lse)()]
    good = []
    for vn, vs_ in vs:
        if ok[vn] is None:
            continue
        select(vs_)
        try:
            out = bwd_fn(q, k, v, do, o, lse)()
            e_def = [rel(a, b) for a, b in zip(out, base)]
            same = bitwise and all(torch.equal(a, b) for a, b in zip(out, base))
            del out
        except Exception as e:
            print(f"  {vn}: ERROR {type(e).__name__} {str(e)[:300]}", flush=True)
            continue
        bad = max(ok[vn]) > 2e-2 or max(e_def) > 2e-2
        print(f"  check {vn:{width}s} vs fp32 L{Lc} dq/dk/dv {' '.join(f'{x:.1e}' for x in ok[vn])} | vs default "
              f"{'bitwise' if same else ' '.join(f'{x:.1e}' for x in e_def)}{'  FAIL (not timed)' if bad else ''}",
              flush=True)
        if not bad:
            good.append((vn, vs_))
    del base
    if not DRY:
        torch.cuda.empty_cache()
    return good, (q, k, v, do, o, lse)


def header():
    """The device, versions, budget and the seconds used before the main began (warm-up + imports)."""
    dev = "cpu (dry run)" if DRY else torch.cuda.get_device_name()
    print(f"{dev} | torch {torch.__version__} triton {triton.__version__} | budget {BUDGET:.0f} s, "
          f"{time.time() - T0:.0f} s used by warm-up + imports", flush=True)
