"""sm_90 SASS (Triton 3.6, offline, no GPU) of every flash-attention kernel the default GPU path launches, one line per
compile case: `python .gpu/sass_attn.py ROOT` imports hybridna_kernels from ROOT and prints "case count md5" (see
.gpu/sass_same.py). Compare two trees (session 9's pruning of measured-losing variants):

    PY=/work/venv36/bin/python; $PY .gpu/sass_attn.py /work/wt/base > a; $PY .gpu/sass_attn.py . > b; diff a b

Cases: the constexprs, num_warps, num_stages and maxnreg that flash.py's launchers pass by default for bf16 at
D64 GQA Hq16:Hkv4 causal L8192 / L32768 (DKDV_FAST, DQ_FAST, forward with TMA), D64 MHA B8 H16 L8192, D128 B1 H8
L32768 (DKDV_FAST_D128), a window 4096 (FIXED_WINDOW forward), varlen (causal, and a window), the short bucket
(L2048: the delta kernel, DKDV_FAST's short extension for GQA), fp32 (ieee dots), decode (split-K and merge, the
CUDA-graph step's SEQ_FROM_PTR / PDL), then kept opt-in variants. Constexprs a kernel no longer has are dropped,
so the same list runs on both sides. ARGS: an optional substring filter on the case names.

Session 9 (deduplication): ptxas's register allocation and scheduling follow the line info Triton emits by default
(-lineinfo), so moving code into a @triton.jit helper can change the SASS (md5, sometimes the count) of kernels whose
LLVM IR and PTX instructions are identical (the dq cases of a _load_kv fold in _bwd_q_inner: identical with
TRITON_DISABLE_LINE_INFO=1 on both sides).
Folds inside the backward's loops and prologues mostly hit this; those were kept unfolded.
"""
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, os.path.abspath(ROOT))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from sass_same import sass  # noqa: E402

from hybridna_kernels.attention import decode as dec  # noqa: E402
from hybridna_kernels.attention import flash as F  # noqa: E402

BF, F32, I32 = "*bf16", "*fp32", "*i32"


def td(dt, rows, d):
    return f"tensordesc<{dt[1:]}[{rows}, {d}]>"


def fwd(name, *, group, d=64, cfg, causal=True, window=False, varlen=False, tma=False, dt=BF, **extra):
    bm, bn, w, s = cfg
    ptrs = dict(Q=dt, K=dt, V=dt, O=dt, LSE=F32, CU=I32 if varlen else dt)
    c = dict(GROUP=group, HEAD_DIM=d, BD=d, IS_CAUSAL=causal, HAS_WINDOW=window, IS_VARLEN=varlen,
             REVERSE_M=causal, M_MAJOR=False, DOT_PREC="ieee" if dt == F32 else "tf32", BM=bm, BN=bn, POLY=False,
             TMA=tma, KD=None, VD=None)
    if tma:
        del c["KD"], c["VD"]
        ptrs.update(KD=td(dt, bn, d), VD=td(dt, bn, d))
    c.update(extra)
    return ("fwd " + name, F._attn_fwd_kernel, ptrs, ("qk_scale",), c, w, dict(num_stages=s))


def dq(name, *, group, d=64, cfg, causal=True, window=False, varlen=False, tma=False, delta_here=False, dt=BF,
       flags=(), **extra):
    bm, bn, w, s, *reg = cfg
    ptrs = dict(Q=dt, K=dt, V=dt, DO=dt, LSE=F32, DELTA=F32, DQ=dt, CU=I32 if varlen else dt)
    c = dict(GROUP=group, HEAD_DIM=d, BD=d, IS_CAUSAL=causal, HAS_WINDOW=window, IS_VARLEN=varlen,
             REVERSE_M=causal, M_MAJOR=False, DOT_PREC="ieee" if dt == F32 else "tf32", BM=bm, BN=bn,
             TMA=tma, KD=None, VD=None, DELTA_HERE=delta_here, O=None, ONELOOP=False, ROWSHIFT=False, EARLY_DP=False)
    if tma:
        del c["KD"], c["VD"]
        ptrs.update(KD=td(dt, bn, d), VD=td(dt, bn, d))
    if delta_here:
        del c["O"]
        ptrs["O"] = dt
    c.update({f: True for f in flags}, **extra)
    opts = dict(num_stages=s, **({"maxnreg": reg[0]} if reg else {}))
    return ("dq " + name, F._attn_bwd_dq_kernel, ptrs, ("sm_scale", "qk_scale"), c, w, opts)


def dkdv(name, *, group, d=64, cfg, causal=True, window=False, varlen=False, dt=BF, flags=(), **extra):
    bm, bn, w, s = cfg
    ptrs = dict(Q=dt, K=dt, V=dt, DO=dt, LSE=F32, DELTA=F32, DK=dt, DV=dt, DQA=dt, CU=I32 if varlen else dt)
    c = dict(GROUP=group, HEAD_DIM=d, BD=d, IS_CAUSAL=causal, HAS_WINDOW=window, IS_VARLEN=varlen, M_MAJOR=False,
             ATOMIC_DQ=False, DOT_PREC="ieee" if dt == F32 else "tf32", BM=bm, BN=bn, TMA=False, QD=None, DOD=None,
             KREG=False, EARLY_DP=False, GUNROLL=False, ONELOOP=False, ROWSHIFT=False)
    c.update({f: True for f in flags}, **extra)
    return ("dkdv " + name, F._attn_bwd_dkdv_kernel, ptrs, ("sm_scale", "qk_scale"), c, w, dict(num_stages=s))


def fast(conf):
    """(config, flags) of a DKDV_FAST-like dict."""
    return dict(cfg=conf["conf"], flags=conf["flags"])


def cases():
    FX, FW = F.FIXED, F.FIXED_WINDOW
    out = []
    # D64 GQA Hq16:Hkv4 causal, the model's layout (lengths are not specialised on: L8192 and L32768 compile alike)
    for L in (8192, 32768):
        n = f"gqa D64 L{L}"
        out += [fwd(n, group=4, cfg=FX[("fwd", 64, True)], tma=True),
                dq(n, group=4, cfg=F.DQ_FAST["conf"], flags=F.DQ_FAST["flags"], tma=True, delta_here=True),
                dkdv(n, group=4, **fast(F.DKDV_FAST))]
    # D64 MHA B8 H16 L8192: the old dk/dv config (DKDV_FAST is wrong there on the GPU), no DQ_FAST
    out += [fwd("mha D64 L8192", group=1, cfg=FX[("fwd", 64, True)], tma=True),
            dq("mha D64 L8192", group=1, cfg=FX[("dq", 64, True)], tma=True, delta_here=True),
            dkdv("mha D64 L8192", group=1, cfg=FX[("dkdv", 64, True)])]
    # D128 B1 H8 L32768 (MHA): DKDV_FAST_D128 (extensions mha, d128)
    out += [fwd("mha D128 L32768", group=1, d=128, cfg=FX[("fwd", 128, True)], tma=True),
            dq("mha D128 L32768", group=1, d=128, cfg=FX[("dq", 128, True)], tma=True, delta_here=True),
            dkdv("mha D128 L32768", group=1, d=128, **fast(F.DKDV_FAST_D128))]
    # window 4096 (B1 H16 L131072, and GQA): FIXED_WINDOW's forward with pointer loads; dq with TMA; old dk/dv
    for g in (1, 4):
        n = f"window g{g} D64 L131072"
        out += [fwd(n, group=g, cfg=FW[("fwd", 64, True)], window=True),
                dq(n, group=g, cfg=FX[("dq", 64, True)], window=True, tma=True, delta_here=True),
                dkdv(n, group=g, cfg=FX[("dkdv", 64, True)], window=True)]
    # varlen (test_gpu_varlen_long: Hq8:Hkv2 D64, longest 4096): causal, and a window
    for win in (False, True):
        n = "varlen g4 D64" + (" W1000" if win else "")
        out += [fwd(n, group=4, cfg=(FW if win else FX)[("fwd", 64, True)], window=win, varlen=True, tma=not win),
                dq(n, group=4, cfg=FX[("dq", 64, True)], window=win, varlen=True, tma=True, delta_here=True),
                dkdv(n, group=4, cfg=FX[("dkdv", 64, True)], window=win, varlen=True)]
    # the short bucket (L2048): session 2's configs, no TMA, the delta kernel; dk/dv GQA takes DKDV_FAST (short)
    for g in (1, 4):
        n = f"short g{g} D64 L2048"
        out += [fwd(n, group=g, cfg=FX[("fwd", 64, False)]), dq(n, group=g, cfg=FX[("dq", 64, False)]),
                dkdv(n, group=g, **(fast(F.DKDV_FAST) if g > 1 else dict(cfg=FX[("dkdv", 64, False)])))]
    out.append(("delta D64", F._attn_bwd_delta_kernel, dict(O=BF, DO=BF, DELTA=F32), (),
                dict(HEAD_DIM=64, BD=64, BM=64), 4, {}))
    # fp32 (ieee dots): GQA D64 in the long bucket (TMA, DQ_FAST, DKDV_FAST: no dtype test) and D32 short
    out += [fwd("fp32 gqa D64 L8192", group=4, cfg=FX[("fwd", 64, True)], tma=True, dt=F32),
            dq("fp32 gqa D64 L8192", group=4, cfg=F.DQ_FAST["conf"], flags=F.DQ_FAST["flags"], tma=True,
               delta_here=True, dt=F32),
            dkdv("fp32 gqa D64 L8192", group=4, **fast(F.DKDV_FAST), dt=F32),
            fwd("fp32 mha D32 L1000", group=1, d=32, cfg=(64, 32, 4, 2), causal=False, dt=F32)]
    # decode: 1 / 16 queries x Hq16 over Hkv4 at D64 (BM 16 / 64), BN 64 w4 s3, causal / window; merge (NS 64);
    # the CUDA-graph step (hybridna_kernels.decode.attention: SEQ_FROM_PTR, with and without PDL)
    sp = dict(Q=BF, K=BF, V=BF, OP=F32, LSEP=F32)
    for bm, win in ((16, False), (16, True), (64, False)):
        out.append((f"decode split BM{bm} W{int(win)}", dec._attn_decode_split_kernel, sp, ("qk_scale",),
                    dict(GROUP=4, HEAD_DIM=64, BD=64, BM=bm, BN=64, IS_CAUSAL=True, HAS_WINDOW=win, DOT_PREC="tf32",
                         SEQ=None, SEQ_FROM_PTR=False, PDL=False), 4, dict(num_stages=3)))
    for pdl in (False, True):
        out.append((f"decode step PDL{int(pdl)}", dec._attn_decode_split_kernel, dict(sp, SEQ="*i64"), ("qk_scale",),
                    dict(GROUP=4, HEAD_DIM=64, BD=64, BM=16, BN=64, IS_CAUSAL=False, HAS_WINDOW=False,
                         DOT_PREC="tf32", SEQ_FROM_PTR=True, PDL=pdl), 4, dict(num_stages=3)))
    out.append(("decode merge NS64", dec._attn_decode_merge_kernel, dict(OP=F32, LSEP=F32, O=BF, LSE=F32), (),
                dict(GROUP=4, HEAD_DIM=64, BD=64, BM=16, NS=64), 4, {}))
    # kept opt-in variants whose code the pruning touched
    out += [dkdv("opt mha64 (dkdv_fast=mha64)", group=1, **fast(F.DKDV_FAST_MHA64)),
            dkdv("opt gqa 3-loop gunroll early_dp 64x128", group=4, cfg=(64, 128, 8, 3), flags=("GUNROLL", "EARLY_DP")),
            dkdv("opt gqa oneloop gunroll early_dp 64x128", group=4, cfg=(64, 128, 8, 3),
                 flags=("ONELOOP", "GUNROLL", "EARLY_DP")),
            dkdv("opt gqa 3-loop kreg 32x128", group=4, cfg=(32, 128, 4, 3), flags=("KREG",)),
            dq("opt gqa 3-loop early_dp tma", group=4, cfg=(128, 64, 8, 3), tma=True, delta_here=True,
               flags=("EARLY_DP",)),
            dq("opt gqa oneloop rowshift early_dp tma", group=4, cfg=(128, 64, 8, 3), tma=True, delta_here=True,
               flags=("ONELOOP", "ROWSHIFT", "EARLY_DP")),
            dq("opt gqa oneloop no-rowshift tma", group=4, cfg=(128, 64, 8, 3), tma=True, flags=("ONELOOP",)),
            dq("opt gqa block-major", group=4, cfg=(128, 64, 8, 3), tma=True, delta_here=True, M_MAJOR=True)]
    return out


def main():
    pat = sys.argv[2] if len(sys.argv) > 2 else ""
    for name, fn, ptrs, fs, consts, w, opts in cases():
        if pat not in name:
            continue
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}
        try:
            print(name, *sass(fn, ptrs, fs, consts, w, **opts), flush=True)
        except Exception as e:  # noqa: BLE001
            print(name, "ERR", type(e).__name__, str(e)[:200], flush=True)


if __name__ == "__main__":
    main()
