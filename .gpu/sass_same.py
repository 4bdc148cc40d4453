"""Compile kernels for sm_90 with Triton 3.6 on a CPU-only machine and print (SASS instruction count, md5) per kernel
and constexpr set, to check that a refactor of Triton code leaves the GPU code unchanged without a GPU
(session 4: the swiglu, rms/gated-norm and SSD cumsum prologue helpers). Usage, with a venv holding triton==3.6.0
and torch (the GPU machine's Triton):

    git worktree add /tmp/old <rev>; python .gpu/sass_same.py /tmp/old > a; python .gpu/sass_same.py . > b; diff a b

Result on 2026-12-07 (7c3c246 vs the session-4 head): identical for every case but _gated_bwd_kernel, whose TTIR is
identical up to SSA value names (same instruction count; the SASS differs in order only).
"""
import sys, os, re, subprocess, tempfile, hashlib, importlib
if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def sass(fn, ptrs, fscal, consts, warps, **options):
    """(SASS instruction count, md5 of the instructions) of JITFunction fn compiled for sm_90: ptrs maps pointer
    arguments to Triton types ("*bf16"), fscal names fp32 scalars, consts the constexprs; every other argument is
    an i32 scalar. options go to the compiler (num_stages=3, maxnreg=128, ...)."""
    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts: sig[n] = "constexpr"
        elif n in ptrs: sig[n] = ptrs[n]; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in fscal: sig[n] = "fp32"
        else: sig[n] = "i32"
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, **options))
    return disasm(k.asm["cubin"])


def disasm(cubin):
    """(instruction count, md5 of the instructions without their addresses) of a compiled kernel's cubin; with
    SASS_DUMP_DIR set, the instructions are also written to DIR/<md5>.sass."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        p = f.name
    nvd = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    s = subprocess.run([nvd, "-c", p], capture_output=True, text=True).stdout
    os.unlink(p)
    body = [re.sub(r"/\*[0-9a-f]+\*/", "", l).strip() for l in s.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/", l)]
    md5 = hashlib.md5("\n".join(body).encode()).hexdigest()[:10]
    if os.environ.get("SASS_DUMP_DIR"):
        with open(os.path.join(os.environ["SASS_DUMP_DIR"], md5 + ".sass"), "w") as f:
            f.write("\n".join(body) + "\n")
    return len(body), md5


def main():
    sw = importlib.import_module("hybridna_kernels.swiglu.kernels")
    rms = importlib.import_module("hybridna_kernels.norm.rms")
    ch = importlib.import_module("hybridna_kernels.ssd.chunk")
    bf = "*bf16"; f32 = "*fp32"
    cases = []
    for sa in (False, True):
        cases.append(("swiglu_bwd STORE_A=%d" % sa, sw._swiglu_bwd_kernel, dict(H=bf, DO=bf, DH=bf, A=bf), (),
                      dict(BF=1024, STORE_A=sa), 4))
    cases.append(("swiglu_fwd", sw._swiglu_fwd_kernel, dict(H=bf, O=bf), (), dict(BF=1024), 4))
    for dsi, dd, y in ((True, True, True), (False, False, False), (True, False, True)):
        cases.append((f"rms_bwd {dsi:d}{dd:d}{y:d}", rms._rms_bwd_kernel,
                      dict(S=f32, W=f32, RSTD=f32, DY=bf, DSI=f32, DX=f32, DD=bf, DWP=f32, Y=bf), (),
                      dict(BN=1024, HAS_DSI=dsi, HAS_DD=dd, STORE_Y=y), 4))
    for o in (False, True):
        cases.append((f"gated_bwd STORE_O={o:d}", rms._gated_bwd_kernel,
                      dict(Yin=bf, Z=bf, W=f32, RSTD=f32, DO=bf, DY=bf, DZ=bf, DWP=f32, O=bf), (),
                      dict(BN=2048, STORE_O=o), 8))
    cp = dict(dt_ptr=bf, bias_ptr=f32, A_ptr=f32, clen_ptr="*i32", u_ptr=f32, cs_ptr="*fp64", csh_ptr=f32, csl_ptr=f32)
    for hb, sp, vl in ((True, True, False), (False, False, True)):
        cases.append((f"cumsum_fwd {hb:d}{sp:d}{vl:d}", ch._cumsum_fwd_kernel, cp, ("lo", "hi"),
                      dict(Q=256, BH=4, HAS_BIAS=hb, SOFTPLUS=sp, HAS_HI=True, IS_VARLEN=vl), 4))
        cb = dict(dt_ptr=bf, bias_ptr=f32, A_ptr=f32, clen_ptr="*i32", u_ptr=f32, du_ptr=f32, dcs_ptr=f32,
                  rowt_ptr=f32, r_ptr=f32,
                  ddal_ptr=f32, ddt_ptr=bf, dA_ptr=f32, dbias_ptr=f32)
        cases.append((f"cumsum_bwd {hb:d}{sp:d}{vl:d}", ch._cumsum_bwd_kernel, cb, ("lo", "hi"),
                      dict(Q=256, BH=4, HAS_BIAS=hb, SOFTPLUS=sp, HAS_HI=True, IS_VARLEN=vl, NB=2), 4))
    for name, fn, ptrs, fs, consts, w in cases:
        try: print(name, *sass(fn, ptrs, fs, consts, w))
        except Exception as e: print(name, "ERR", type(e).__name__, str(e)[:200])


if __name__ == "__main__":
    main()
