"""attn7: the flash-attention dq kernel's options (flash.DQ_OPTS, variant key dq_opt, an optional register cap as a
fifth dq config number) and DKDV_FAST's opt-in extensions (variant key dkdv_fast: mha, d128) against the defaults.

Usage (repo root, PYTHONPATH=$PWD, one GPU): `python3 .gpu/attn7.py` (main) after `python3 .gpu/attn7.py warm I N`
workers have filled TRITON_CACHE_DIR (.gpu/attn7.sh does both). Budget: ATTN7_S seconds from the warm-up's start
(default 100; the warm-up's seconds are passed as ATTN7_WARM_S and counted in). ATTN7_DRY=1: CPU dry run
(interpreter, fp16, tiny shapes, fake timers) of the script's logic. ATTN7_SHAPES="0,2": a subset, in that order.

Shapes in order: model (B1 Hq16:Hkv4 L32768 D64), MHA B8 H16 L8192 D64, B1 H8 L32768 D128, then while the budget
lasts DKDV_FAST's ragged (L30000) and short (B16 L2048) extensions. Per shape: (1) every variant against an fp32 reference at L4096 (same heads / head dim, a
long-bucket length so the same compiled kernels run; L4000 for the ragged shape; dq, dk, dv: max |a - b| / max |b|) and against the default
at the timed shape ("bitwise" when equal); over 2e-2 is FAIL and not timed; (2) interleaved rounds (3 at the
model shape, 2 elsewhere) of: the backward alone (attention_bwd from a saved o / lse: dk/dv + dq, delta inside
dq), the dq kernel alone (delta inside), forward + backward through autograd; `triton.testing.do_bench`
medians; a row per variant as measured, then the medians; (3) the backward alone from a CUDA graph (host-free)
for the default and the two fastest variants, while the budget lasts.
TFLOP/s: one matmul unit = 2 B Hq L^2 D / 2 (causal); forward 2 units, dq 3 (S, dP, dQ), backward 7 (dk/dv 4 +
dq 3), forward + backward 9; the "bwd TF" column counts the usual 2.5x forward (5 units) like attn6.
"""
import os
import statistics
import sys
import time

T0 = time.time() - float(os.environ.get("ATTN7_WARM_S", 0))
BUDGET = float(os.environ.get("ATTN7_S", 100))
DRY = bool(os.environ.get("ATTN7_DRY"))
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402
import triton.testing  # noqa: E402

import attnkit as kit  # noqa: E402
from attnkit import bwd_fn, flash, fwd_bwd, left  # noqa: E402

kit.setup(DRY, T0, BUDGET)
# name, B, Hq, Hkv, L, D
# the last two (DKDV_FAST's extensions ragged / short) only while the budget lasts
SHAPES = [("model B1 Hq16:Hkv4 L32768 D64", 1, 16, 4, 32768, 64), ("MHA B8 H16 L8192 D64", 8, 16, 16, 8192, 64),
          ("B1 H8 L32768 D128", 1, 8, 8, 32768, 128), ("ragged B1 Hq16:Hkv4 L30000 D64", 1, 16, 4, 30000, 64),
          ("short B16 Hq16:Hkv4 L2048 D64", 16, 16, 4, 2048, 64)]
ROUNDS = int(os.environ.get("ATTN7_ROUNDS", 0))   # 0: 3 at the model shape, 2 elsewhere
if DRY:
    SHAPES = [("dry model", 1, 4, 1, 300, 64), ("dry MHA", 2, 2, 2, 260, 64), ("dry D128", 1, 2, 2, 300, 128),
              ("dry ragged", 1, 4, 1, 300, 64), ("dry short", 2, 4, 1, 256, 64)]
if os.environ.get("ATTN7_SHAPES"):
    SHAPES = [SHAPES[int(i)] for i in os.environ["ATTN7_SHAPES"].split(",")]
# Explicit variants replace DEFAULT_FEATURES, so each names the defaults' features (TMA for fwd / dq, delta in
# dq); "dkdv_fast=" keeps DKDV_FAST where it is the default (the model's layout), "dkdv_fast=mha,d128" extends it.
BASE = "tma=fwd,dq;dq_delta=1"
OLRS = "dq_opt=oneloop,rowshift"
# Offline sm_90 compiles (Triton 3.6) of the dq kernel, GQA 4 D64: default 128x64 w8 s3 126 registers (two 8-warp
# programs per SM); oneloop+rowshift 148 (one program per SM) or 126 with the cap r128, no spill; 64x64 w4 r128: 128;
# qreg 128x64: 165 (with r128: spills); 128x128 w8 s2: 209.
# Session 9 dropped the rows that lost on the GPU (bench/RESULTS.md, flash_attention, sessions 7 and 8): at the model
# shape dq ol+rs 64x64 w4 s2 r128 / uncapped / 128x64 w8 s4 r128 / 128x128 w8 s2 / +early_dp r128 (16.246 / 17.173 /
# 15.874 / 18.166 / 15.955 ms backward against 15.770 for "dq ol+rs r128", now DQ_FAST); at MHA the kreg rows (dk / dv
# wrong), dkdv ol+rs + dq ol+rs r128 (8.248 against 8.194 without the dq options) and dkdv rs 64x128 w8 s3 (9.057 /
# 9.175 against the default's 8.844 / 8.976); at D128 DKDV_FAST_D128 + dq ol+rs (14.247 against 13.790); ragged
# DKDV_FAST + dq ol+rs r128 (13.956 against 13.399).
V_MODEL = [("default", None),
           ("dq ol+rs r128", f"dkdv_fast=;dq=128,64,8,3,128;{OLRS}")]
# D64 MHA: DKDV_FAST (kreg) gave wrong dk / dv there on the GPU (sessions 7, 8); without kreg (dkdv_fast=mha64) it
# checked and won (session 8)
V_MHA = [("default", None),
         ("dkdv ol+rs+gu 64x64 w4 s3", "dkdv=64,64,4,3;dkdv_opt=oneloop,rowshift,gunroll")]
V_D128 = [("default", None),
          ("dkdv fast(d128) 64x128 w8 s2", "dkdv_fast=mha,d128"),
          ("dq ol+rs", f"dq=128,64,8,3;{OLRS}"),
          ("dkdv rs 64x128 w8 s3", "dkdv=64,128,8,3;dkdv_opt=oneloop,rowshift,gunroll")]

V_RAGGED = [("default", None), ("dkdv fast(ragged)", "dkdv_fast=ragged")]
# the short bucket's defaults have no TMA and a delta kernel: its variants name nothing else (base "")
V_SHORT = [("default", None), ("dkdv fast(short)", "dkdv_fast=short")]


def variants(name):
    kind = name.split()[0] if name.split()[0] != "dry" else name.split()[1]
    return {"model": V_MODEL, "MHA": V_MHA, "D128": V_D128, "B1": V_D128, "ragged": V_RAGGED,
            "short": V_SHORT}[kind]


def check_len(name, L):
    """The fp32 check's length: a long-bucket one (the timed kernels) with the timed shape's raggedness."""
    if DRY or L <= 4096:
        return L
    return 4096 if L % 64 == 0 else 4000


def set_variant(v, name=""):
    kit.set_variant(v, "" if "short" in name else BASE)


def selector(name):
    """set_variant for shape `name` (one argument: the variant)."""
    return lambda v: set_variant(v, name)


def dq_fn(q, k, v, do, o, lse):
    """The dq launch alone, as attention_bwd makes it by default (delta computed inside, dq_delta)."""
    B, L, Hq, D = q.shape
    delta = torch.empty(B, Hq, L, dtype=torch.float32, device=q.device)
    dq = torch.empty_like(q)
    scale = D ** -0.5
    return lambda: flash._bwd_dq(do, q, k, v, o, lse, delta, dq, True, None, None, B, L, L, (L, L, Hq, L), scale,
                                 None, True)


def warm(i, n):
    """Worker i of n: compile every (head layout, variant) pair assigned to it at L4096 (same specialisations)."""
    jobs, seen = [], set()
    for name, B, Hq, Hkv, L, D in SHAPES:
        Lc = check_len(name, L)
        for _, v in variants(name):
            key = (Hq, Hkv, D, Lc % 64 == 0, Lc > 2048, v)
            if key not in seen:   # the timed shapes share these kernels (lengths are not specialised on)
                seen.add(key)
                jobs.append((selector(name), v, Hq, Hkv, Lc, D))
    kit.warm(jobs, i, n)


def bench(fn):
    return kit.bench(fn, rep=50)


def main():
    kit.header()
    for name, B, Hq, Hkv, L, D in SHAPES:
        if left() < 12:
            print(f"-- {name}: skipped (budget)", flush=True)
            continue
        unit = 2 * B * Hq * L * L * D / 2          # one causal matmul unit
        vs = variants(name)
        print(f"== {name} causal bf16 ({time.time() - T0:.0f} s)", flush=True)
        # (1) against fp32 at L4096 (L4000 for a ragged shape; dry: the small shape itself), against the default
        # at the timed shape
        Lc = check_len(name, L)
        good, (q, k, v, do, o, lse) = kit.check(vs, selector(name), B, Hq, Hkv, L, D, Lc, 32, bitwise=True)
        # (2) interleaved rounds
        res = {vn: ([], [], []) for vn, _ in good}
        for r in range(ROUNDS or (3 if name.startswith("model") else 2)):
            for vn, vs_ in good:
                if left() < 8:
                    break
                set_variant(vs_, name)
                tb = bench(bwd_fn(q, k, v, do, o, lse))
                tq = bench(dq_fn(q, k, v, do, o, lse))
                tf = bench(lambda: fwd_bwd(q, k, v, do))
                for lst, t in zip(res[vn], (tb, tq, tf)):
                    lst.append(t)
                print(f"  r{r} {vn:32s} bwd {tb:7.3f} ms | dq {tq:6.3f} ms ({3 * unit / tq / 1e9:4.0f} TF) | "
                      f"fwd+bwd {tf:7.3f} ms", flush=True)
        print(f"  medians {name} (bwd TF = 5 units / ms, dq TF = 3 units, fwd+bwd TF = 7 units):", flush=True)
        d_b = statistics.median(res["default"][0]) if res.get("default", ([],))[0] else None
        d_q = statistics.median(res["default"][1]) if d_b else None
        for vn, (tb, tq, tf) in res.items():
            if not tb:
                continue
            mb, mq, mf = statistics.median(tb), statistics.median(tq), statistics.median(tf)
            sp = f" | bwd x{d_b / mb:.3f} dq x{d_q / mq:.3f} vs default" if d_b else ""
            print(f"  MED {name[:24]:24s} | {vn:32s} | bwd {mb:7.3f} ms {5 * unit / mb / 1e9:4.0f} TF | dq {mq:6.3f} ms "
                  f"{3 * unit / mq / 1e9:4.0f} TF | fwd+bwd {mf:7.3f} ms {7 * unit / mf / 1e9:4.0f} TF{sp}", flush=True)
        # (3) CUDA graph, backward alone
        if not DRY:
            ranked = sorted((statistics.median(res[vn][0]), vn, vs_) for vn, vs_ in good
                            if res[vn][0] and vn != "default")
            for _, vn, vs_ in [(0, "default", None)] + ranked[:2]:
                if left() < 8:
                    break
                set_variant(vs_, name)
                try:
                    t = triton.testing.do_bench_cudagraph(bwd_fn(q, k, v, do, o, lse), rep=50, return_mode="median")
                    print(f"  graph {vn:32s} bwd {t:7.3f} ms ({5 * unit / t / 1e9:4.0f} TF)", flush=True)
                except Exception as e:
                    print(f"  graph {vn}: {type(e).__name__} {str(e)[:120]}", flush=True)
        set_variant(None)
        del q, k, v, do, o, lse
        if not DRY:
            torch.cuda.empty_cache()
    print(f"done at {time.time() - T0:.0f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "warm":
        warm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
