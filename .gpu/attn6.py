"""attn6: the flash-attention backward's dk/dv options (flash.DKDV_OPTS, variant key dkdv_opt) against the
defaults.

Usage (repo root, PYTHONPATH=$PWD, one GPU): `python3 .gpu/attn6.py` (main) after `python3 .gpu/attn6.py warm I N`
workers have filled TRITON_CACHE_DIR (.gpu/attn6.sh does both). Budget: ATTN6_S seconds from the main's start
(default 100; the warm-up's seconds are passed as ATTN6_WARM_S and counted in). ATTN6_DRY=1: CPU dry run
(interpreter, fp16, tiny shapes, fake timers) of the script's logic.

Per shape, model shape first: (1) every variant against an fp32 reference at L4096 (same heads / head dim, a
long-bucket length so the same compiled kernels run), and against the default at the timed shape (dq, dk, dv:
max |a - b| / max |b|); a variant over 2e-2 is marked FAIL and not timed; (2) interleaved rounds (3 at the model
shape, 2 elsewhere) of backward alone (attention_bwd from a saved o / lse: delta + dk/dv + dq) and forward +
backward through autograd, `triton.testing.do_bench` medians, SDPA cuDNN in the same rounds; one row per variant
as measured, then the medians; (3) the backward alone from a CUDA graph (host-free) for the default and the three
fastest variants, while the budget lasts.
TFLOP/s: forward 4 B H L^2 D / 2 (causal), backward 2.5x that, forward + backward 3.5x.
"""
import os
import statistics
import sys
import time

T0 = time.time() - float(os.environ.get("ATTN6_WARM_S", 0))
BUDGET = float(os.environ.get("ATTN6_S", 100))
DRY = bool(os.environ.get("ATTN6_DRY"))
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402
import triton.testing  # noqa: E402

import attnkit as kit  # noqa: E402
from attnkit import bwd_fn, fwd_bwd, left  # noqa: E402

kit.setup(DRY, T0, BUDGET)
# name, B, Hq, Hkv, L, D
SHAPES = [("model B1 Hq16:Hkv4 L32768 D64", 1, 16, 4, 32768, 64), ("B1 H16 L32768 D64", 1, 16, 16, 32768, 64),
          ("B8 H16 L8192 D64", 8, 16, 16, 8192, 64), ("B1 H8 L32768 D128", 1, 8, 8, 32768, 128)]
if os.environ.get("ATTN6_SHAPES"):   # e.g. "0,3": the model shape, then D128 (indices into SHAPES, in this order)
    SHAPES = [SHAPES[int(i)] for i in os.environ["ATTN6_SHAPES"].split(",")]
ROUNDS = int(os.environ.get("ATTN6_ROUNDS", 0))   # 0: 3 at the model shape, 2 elsewhere
if DRY:
    SHAPES = [("dry gqa", 1, 4, 1, 300, 32), ("dry D64", 2, 2, 2, 200, 64)]
# Explicit variants replace DEFAULT_FEATURES, so each names the defaults' features (TMA for fwd / dq, delta in dq)
BASE = "tma=fwd,dq;dq_delta=1"
RS = "dkdv_opt=oneloop,rowshift,gunroll"   # gunroll: no-op at GROUP 1
V64 = [("default", None),
       ("rs 64x128 w8 s3", f"dkdv=64,128,8,3;{RS}"), ("rs 64x64 w4 s3", f"dkdv=64,64,4,3;{RS}"),
       ("rs 64x128 w8 s2", f"dkdv=64,128,8,2;{RS}"), ("rs 64x128 w8 s3 kreg", f"dkdv=64,128,8,3;{RS},kreg"),
       ("rs 64x64 w4 s3 kreg", f"dkdv=64,64,4,3;{RS},kreg"),
       ("rs 64x128 w8 s3 early_dp", f"dkdv=64,128,8,3;{RS},early_dp"),
       ("rs 64x64 w4 s4", f"dkdv=64,64,4,4;{RS}"),
       ("ol 64x128 w8 s3 no-rowshift", "dkdv=64,128,8,3;dkdv_opt=oneloop,gunroll")]
V128 = [("default", None),
        ("rs 32x128 w8 s2", f"dkdv=32,128,8,2;{RS}"), ("rs 32x128 w8 s3", f"dkdv=32,128,8,3;{RS}"),
        ("rs 64x128 w8 s2", f"dkdv=64,128,8,2;{RS}")]
if DRY:
    V64 = V64[:2] + V64[-1:]
    V128 = V128[:2]


def variants(D):
    return V128 if D == 128 else V64


def set_variant(v):
    kit.set_variant(v, BASE)


def warm(i, n):
    """Worker i of n: compile every (head layout, variant) pair assigned to it at L4096 (same specialisations)."""
    jobs, seen = [], set()
    for _, B, Hq, Hkv, L, D in SHAPES:
        if (Hq, Hkv, D) in seen:   # B1 / B8 at H16 share the compiled kernels
            continue
        seen.add((Hq, Hkv, D))
        jobs += [(set_variant, v, Hq, Hkv, 4096, D) for _, v in variants(D)]
    kit.warm(jobs, i, n)


def bench(fn):
    return kit.bench(fn, rep=60)


def cudnn_fns(q, k, v, do):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    group = q.shape[2] // k.shape[2]
    qt, kt, vt, dot = (t.transpose(1, 2) for t in (q, k, v, do))
    if group > 1:   # cuDNN through SDPA: GQA by enable_gqa when it takes it, else K / V repeated
        kt_r, vt_r = kt.repeat_interleave(group, 1), vt.repeat_interleave(group, 1)

    def run(gqa):
        qq, kk, vv = (t.detach().requires_grad_() for t in (qt, kt if gqa or group == 1 else kt_r,
                                                            vt if gqa or group == 1 else vt_r))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, **({"enable_gqa": True} if gqa else {}))
        return qq, kk, vv, o

    mode = "MHA"
    if group > 1:
        try:
            run(True)[3].sum().backward()
            mode = "enable_gqa"
        except Exception as e:
            print(f"  cuDNN enable_gqa failed ({type(e).__name__}: {str(e)[:80]}); K/V repeated", flush=True)
            mode = "repeat"
    gqa = mode == "enable_gqa"
    saved = run(gqa)

    def fb():
        qq, kk, vv, o = run(gqa)
        return torch.autograd.grad(o, (qq, kk, vv), dot)

    def bw():
        return torch.autograd.grad(saved[3], saved[:3], dot, retain_graph=True)
    return fb, bw, mode


def main():
    kit.header()
    for name, B, Hq, Hkv, L, D in SHAPES:
        if left() < 12:
            print(f"-- {name}: skipped (budget)", flush=True)
            continue
        fl = 4 * B * Hq * L * L * D / 2
        vs = variants(D)
        print(f"== {name} causal bf16 ({time.time() - T0:.0f} s)", flush=True)
        # (1) against fp32 at L4096 (dry: the small shape itself), against the default at the timed shape
        Lc = L if DRY else 4096
        good, (q, k, v, do, o, lse) = kit.check(vs, set_variant, B, Hq, Hkv, L, D, Lc, 28)
        # (2) interleaved rounds
        try:
            cfb, cbw, cmode = (None, None, "dry") if DRY else cudnn_fns(q, k, v, do)
        except Exception as e:
            cfb = cbw = None
            cmode = f"failed: {type(e).__name__} {str(e)[:120]}"
        print(f"  cuDNN: {cmode}", flush=True)
        res = {vn: ([], []) for vn, _ in good + [("cuDNN", None)]}
        for r in range(ROUNDS or (3 if name.startswith("model") else 2)):
            for vn, vs_ in good + [("cuDNN", None)]:
                if left() < 8:
                    break
                if vn == "cuDNN":
                    if cfb is None:
                        continue
                    tb, tf = bench(cbw), bench(cfb)
                else:
                    set_variant(vs_)
                    tb, tf = bench(bwd_fn(q, k, v, do, o, lse)), bench(lambda: fwd_bwd(q, k, v, do))
                res[vn][0].append(tb)
                res[vn][1].append(tf)
                print(f"  r{r} {vn:28s} bwd {tb:7.3f} ms ({2.5 * fl / tb / 1e9:5.0f} TFLOP/s)  fwd+bwd {tf:7.3f} ms "
                      f"({3.5 * fl / tf / 1e9:5.0f})", flush=True)
        print(f"  medians {name}:", flush=True)
        d_b = statistics.median(res["default"][0]) if res.get("default", ([],))[0] else None
        for vn, (tb, tf) in res.items():
            if not tb:
                continue
            mb, mf = statistics.median(tb), statistics.median(tf)
            sp = f"  bwd x{d_b / mb:.3f} vs default" if d_b else ""
            print(f"  MED {name[:22]:22s} | {vn:28s} | bwd {mb:7.3f} ms {2.5 * fl / mb / 1e9:5.0f} TFLOP/s | fwd+bwd "
                  f"{mf:7.3f} ms {3.5 * fl / mf / 1e9:5.0f} TFLOP/s |{sp}", flush=True)
        # (3) CUDA graph, backward alone
        if not DRY:
            ranked = sorted((statistics.median(res[vn][0]), vn, vs_) for vn, vs_ in good
                            if res[vn][0] and vn != "default")
            for _, vn, vs_ in [(0, "default", None)] + ranked[:3]:
                if left() < 10:
                    break
                set_variant(vs_)
                fn = bwd_fn(q, k, v, do, o, lse)
                try:
                    t = triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median")
                    print(f"  graph {vn:28s} bwd {t:7.3f} ms ({2.5 * fl / t / 1e9:5.0f} TFLOP/s)", flush=True)
                except Exception as e:
                    print(f"  graph {vn}: {type(e).__name__} {str(e)[:120]}", flush=True)
        set_variant(None)
        del q, k, v, do, o, lse, cfb, cbw
        if not DRY:
            torch.cuda.empty_cache()
    print(f"done at {time.time() - T0:.0f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "warm":
        warm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
