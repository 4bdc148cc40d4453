"""SASS of every SSD kernel launch the dispatcher makes, compiled for sm_90 with Triton 3.6 on a CPU-only machine, to
check that a refactor leaves the GPU code unchanged (session 9, the SSD pruning). Usage (a venv with triton==3.6.0):

    python .gpu/sass_ssd.py ROOT > out     # ROOT: a checkout whose hybridna_kernels is imported

The launchers themselves (chunk._fwd / chunk._bwd) run on meta tensors with every @triton.jit kernel replaced by a
recorder, so each case compiles exactly the constexprs, pointer dtypes, num_warps, num_stages and maxnreg that the
dispatcher passes for that scenario (unpassed parameters: their defaults). Scenarios: the bf16 default at B8 T8192 H32
P64 N128 G1 chunk 256 (forward with and without grad, backward), with z / initial states / dfinal, the no-chain
shapes (B2 T32768, B1 T131072), packed input (cu_seqlens), fp16 and fp32, and the kept opt-in sweep configs of the
kernels the pruning touched; then the decode step (step.ssd_step_fwd, the same way; added in the session 9 dedupe).
One line per (scenario, launch): its label, SASS instruction count, md5; identical compiles are done once.
SASS_SSD_ONLY=name,name: only those kernels' launches.
"""
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, os.path.abspath(ROOT))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
os.environ.pop("TRITON_INTERPRET", None)
os.environ["HYBRIDNA_POISON"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402

from sass_same import sass  # noqa: E402
from hybridna_kernels.ssd import chunk, step  # noqa: E402

assert os.path.abspath(chunk.__file__).startswith(os.path.abspath(ROOT)), chunk.__file__

PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64",
       torch.int32: "*i32"}
OPTIONS = ("num_warps", "num_stages", "maxnreg")
LAUNCHES = []   # (kernel name, JITFunction, args by name, options) of the current scenario


class Recorder:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __getitem__(self, grid):
        def launch(*args, **kw):
            names = [p.name for p in self.fn.params]
            byname = dict(zip(names, args))
            byname.update({k: v for k, v in kw.items() if k not in OPTIONS})
            LAUNCHES.append((self.name, self.fn, byname, {k: v for k, v in kw.items() if k in OPTIONS}))
        return launch


for _m in (chunk, step):
    for _n in dir(_m):
        if isinstance(getattr(_m, _n), triton.runtime.jit.JITFunction) and _n.endswith("_kernel"):
            setattr(_m, _n, Recorder(_n, getattr(_m, _n)))


def compile_case(fn, byname, opts):
    ptrs, fscal, consts = {}, [], {}
    for p in fn.params:
        if p.name in byname:
            v = byname[p.name]
            if p.is_constexpr:
                consts[p.name] = v
            elif isinstance(v, torch.Tensor):
                ptrs[p.name] = PTR[v.dtype]
            elif isinstance(v, float):
                fscal.append(p.name)
            elif v is None:
                consts[p.name] = None
        elif p.has_default and (p.is_constexpr or p.default is None):
            consts[p.name] = p.default
    opts = dict(opts)
    warps = opts.pop("num_warps", 4)
    if not opts.get("maxnreg"):
        opts.pop("maxnreg", None)
    key = (fn.__name__, tuple(sorted(ptrs.items())), tuple(fscal),
           tuple(sorted((k, repr(v)) for k, v in consts.items())), warps, tuple(sorted(opts.items())))
    if key not in CACHE:
        try:
            CACHE[key] = " ".join(map(str, sass(fn, ptrs, fscal, consts, warps, **opts)))
        except Exception as e:  # noqa: BLE001
            CACHE[key] = f"ERR {type(e).__name__} {str(e)[:160]}"
    return CACHE[key]


CACHE = {}
META = "meta"
ONLY = set(filter(None, os.environ.get("SASS_SSD_ONLY", "").split(",")))   # kernel names (default: all)


def inputs(b, T, H, P, G, N, dtype, z=False, init=False, varlen=False):
    f = dict(device=META)
    t = dict(x=torch.empty(b, T, H, P, dtype=dtype, **f), dt=torch.empty(b, T, H, dtype=dtype, **f),
             A=torch.empty(H, dtype=torch.float32, **f), B=torch.empty(b, T, G, N, dtype=dtype, **f),
             C=torch.empty(b, T, G, N, dtype=dtype, **f), D=torch.empty(H, dtype=torch.float32, **f),
             dt_bias=torch.empty(H, dtype=torch.float32, **f),
             z=torch.empty(b, T, H, P, dtype=dtype, **f) if z else None,
             init=torch.empty(2 if varlen else b, H, P, N, dtype=torch.float32, **f) if init else None)
    tables = None
    if varlen:
        nc = T // 256
        i32 = dict(dtype=torch.int32, device=META)
        tables = chunk._Tables(torch.empty(nc, **i32), torch.empty(nc, **i32), torch.empty(nc, **i32), 2)
    return t, tables


def report(label):
    for i, (name, fn, byname, opts) in enumerate(LAUNCHES):
        if ONLY and name not in ONLY:
            continue
        print(f"{label} | {i:02d} {name} | {compile_case(fn, byname, opts)}", flush=True)


def scenario(label, b, T, H, P, G, N, dtype, cfg=None, z=False, init=False, varlen=False, grad=True, dfinal=False,
             Q=256):
    chunk.CFG_OVERRIDE.clear()
    chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[cfg] if isinstance(cfg, str) else (cfg or {}))
    t, tables = inputs(b, T, H, P, G, N, dtype, z, init, varlen)
    LAUNCHES.clear()
    try:
        y, final, hin, ypre = chunk._fwd(t["x"], t["dt"], t["A"], t["B"], t["C"], Q, t["D"], t["z"], t["dt_bias"],
                                         True, 0.0, float("inf"), t["init"], tables, grad)
        if grad:
            dy = torch.empty_like(y)
            dfin = torch.empty_like(final) if dfinal else None
            chunk._bwd(dy, dfin, t["x"], t["dt"], t["A"], t["B"], t["C"], Q, t["D"], t["z"], t["dt_bias"], True, 0.0,
                       float("inf"), t["init"], tables, hin, final, ypre)
    finally:
        chunk.CFG_OVERRIDE.clear()
    report(label)


def step_scenario(label, b, H, P, G, N, dtype, z=False, D_chan=False, hi=float("inf"), pdl=False):
    """ssd_step_fwd (the decode step): fp32 state, D, dt_bias, softplus."""
    f = dict(device=META)
    LAUNCHES.clear()
    step.ssd_step_fwd(torch.empty(b, H, P, N, dtype=torch.float32, **f), torch.empty(b, H, P, dtype=dtype, **f),
                      torch.empty(b, H, dtype=dtype, **f), torch.empty(H, dtype=torch.float32, **f),
                      torch.empty(b, G, N, dtype=dtype, **f), torch.empty(b, G, N, dtype=dtype, **f),
                      torch.empty(*((H, P) if D_chan else (H,)), dtype=torch.float32, **f),
                      torch.empty(b, H, P, dtype=dtype, **f) if z else None, torch.empty(H, dtype=torch.float32, **f),
                      True, (0.0, hi), pdl=pdl)
    report(label)


BF, HF, F32 = torch.bfloat16, torch.float16, torch.float32
HEAD = (32, 64, 1, 128)   # H P G N
# the bf16 default: forward with grad (chain) and without (no-grad chain at batch x heads >= 128), backward
scenario("bf16 B8 T8192 grad", 8, 8192, *HEAD, BF)
scenario("bf16 B8 T8192 nograd", 8, 8192, *HEAD, BF, grad=False)
scenario("bf16 B8 T8192 grad z init dfinal", 8, 8192, *HEAD, BF, z=True, init=True, dfinal=True)
scenario("bf16 B8 T8192 nograd z init", 8, 8192, *HEAD, BF, z=True, init=True, grad=False)
# below the no-grad chain's batch x heads (two-kernel forward state), and below the with-grad chain's
scenario("bf16 B2 T32768 nograd", 2, 32768, *HEAD, BF, grad=False)
scenario("bf16 B2 T32768 grad", 2, 32768, *HEAD, BF)
scenario("bf16 B1 T131072 grad", 1, 131072, *HEAD, BF)
scenario("bf16 B1 T131072 nograd", 1, 131072, *HEAD, BF, grad=False)
# packed input (cu_seqlens: one row, chunk tables)
scenario("bf16 varlen grad init", 1, 8192, *HEAD, BF, varlen=True, init=True, dfinal=True)
scenario("bf16 varlen nograd", 1, 8192, *HEAD, BF, varlen=True, grad=False)
# fp16 / fp32 dispatch
for dt_, nm in ((HF, "fp16"), (F32, "fp32")):
    scenario(f"{nm} B8 T8192 grad z init", 8, 8192, *HEAD, dt_, z=True, init=True, dfinal=True)
    scenario(f"{nm} B8 T8192 grad", 8, 8192, *HEAD, dt_)
    scenario(f"{nm} B8 T8192 nograd", 8, 8192, *HEAD, dt_, grad=False)
# kept opt-in configs of the touched kernels (forward with grad + backward, and without grad)
KEPT = os.environ.get("SASS_SSD_KEPT", "s5 default,s6 default,s7 default,scan7 r1 mr128,scan7 r1 ftz mr128,"
                      "scan7 e2 split ftz mr128,scan7 e2 ftz mr128,s8 chain nograd n64 w4,chain,bwd7 rl w8,"
                      "bwd7 cbb16,launch3 only,s2 default,bwd7 ds w8,scan7 split ftz,cs64,xw0,xwb1,bwd6 sb3,"
                      "hin16").split(",")
for name in filter(None, KEPT):
    scenario(f"bf16 {name} grad", 8, 8192, *HEAD, BF, cfg=name)
    scenario(f"bf16 {name} nograd", 8, 8192, *HEAD, BF, cfg=name, grad=False)
# the decode step (hybridna.generation: D per head, no z, dt_limit (0, inf), with and without PDL; the public
# ssd_step with z, per-channel D and a finite dt limit)
step_scenario("step bf16 B8 pdl", 8, *HEAD, BF, pdl=True)
step_scenario("step bf16 B8", 8, *HEAD, BF)
step_scenario("step bf16 B8 z chan hi", 8, *HEAD, BF, z=True, D_chan=True, hi=1.0)
for dt_, nm in ((HF, "fp16"), (F32, "fp32")):
    step_scenario(f"step {nm} B8 z", 8, *HEAD, dt_, z=True)
