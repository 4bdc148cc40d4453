"""SASS (sm_90, Triton 3.6, offline) of every causal_conv1d kernel launch the dispatcher makes, to check that a change
of conv.py / step.py leaves the GPU code unchanged without a GPU. Usage, from the repo root, with a venv holding
triton==3.6.0 and CPU torch (the GPU machine's Triton):

    python .gpu/sass_conv1d.py /work/wt/base > a; python .gpu/sass_conv1d.py . > b; diff a b

It imports the kernels from ROOT and calls the real launchers (causal_conv1d_fwd / _bwd, the step launcher) on CPU
tensors of the issue's shapes (torch.empty: nothing is touched), with their CUDA branches taken (Tensor.is_cuda
reads True here, so FAST is on, and conv._cpu_rows, the interpreter's wider channel blocks, is the identity). Each
kernel's launch is caught before it runs and compiled for sm_90 with exactly the signature Triton would build from
those arguments (its own specialisation: strides equal to 1 become constants, ints and pointers divisible by 16
get the divisibility attribute) and the launcher's constexprs and options. One line per launch: case, kernel,
grid, num_warps / num_stages / maxnreg, SASS instruction count, md5 of the instructions (sass_same.disasm).
Cases: the default bf16 path (row forward, streams backward with the fused partial sums) at B8 D2304 L8192 SiLU
channel-last for widths 2..8, with / without bias and SiLU, initial / final states, seq_idx, B1 L131072, fp16 /
fp32, channel-first (tile kernels and _partials_sum_kernel), the step kernel, and the kept opt-in variants of the
streams backward (RESET, the masked walk, FUSE 1 / 0, R4), the rows backward and the forward UNEVEN grid.
"""
import os
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from hybridna_kernels.conv1d import conv, step  # noqa: E402

sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from sass_same import disasm  # noqa: E402

assert os.path.abspath(conv.__file__).startswith(ROOT + os.sep), conv.__file__
TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)

torch.Tensor.is_cuda = property(lambda self: True)  # the launchers' CUDA branches (FAST SiLU)
conv._cpu_rows = lambda x, cfg: cfg  # no interpreter-only widening of the default configs
LAUNCHES = []


def _catch(fn):
    """fn[grid](...) compiles for sm_90 the way JITFunction.run would on an H100, and records the launch."""
    def run(*args, grid, warmup, **kwargs):
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        binder = create_function_from_signature(fn.signature, fn.params, BACKEND)
        bound, spec, opts = binder(*args, **kwargs)
        options, sig, consts, attrs = fn._pack_args(BACKEND, kwargs, bound, spec, opts)
        k = triton.compile(ASTSource(fn, sig, consts, attrs), target=TARGET, options=options.__dict__)
        LAUNCHES.append((fn.__name__, tuple(grid), options.num_warps, options.num_stages, options.maxnreg,
                         *disasm(k.asm["cubin"])))
    fn.run = run


for _n in dir(conv):
    if isinstance(getattr(conv, _n), triton.runtime.jit.JITFunction) and _n.endswith("_kernel"):
        _catch(getattr(conv, _n))
_catch(step._conv1d_step_kernel)

BF, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def inputs(B, D, L, W, dtype=BF, cl=True, bias=True, h0=False, seq=False):
    x = torch.empty(B, L, D, dtype=dtype).transpose(1, 2) if cl else torch.empty(B, D, L, dtype=dtype)
    w = torch.empty(D, W, dtype=dtype)
    b = torch.empty(D, dtype=dtype) if bias else None
    hs = torch.empty(B, D, W - 1, dtype=dtype) if h0 else None
    s = torch.zeros(B, L, dtype=torch.int32) if seq else None
    return x, w, b, hs, s


def fwd(B=8, D=2304, L=8192, W=4, act="silu", ht=False, config=None, **kw):
    x, w, b, h0, s = inputs(B, D, L, W, **kw)
    conv.causal_conv1d_fwd(x, w, b, act, h0, ht, s, config=config)


def bwd(B=8, D=2304, L=8192, W=4, act="silu", ht=False, config=None, **kw):
    x, w, b, h0, s = inputs(B, D, L, W, **kw)
    dy = torch.empty_like(x)  # laid out like x
    dht = torch.empty(B, D, W - 1, dtype=x.dtype) if ht else None
    conv.causal_conv1d_bwd(x, w, b, act, h0, s, dy, dht, h0 is not None, config=config)


def stp(B=8, D=2304, W=4, dtype=BF, bias=True, act="silu"):
    x = torch.empty(B, D, dtype=dtype)
    st = torch.empty(B, D, W - 1, dtype=dtype)
    step._step_launch(x, st, torch.empty(D, W, dtype=dtype), torch.empty(D, dtype=dtype) if bias else None, act)


SD = conv.BWD_STREAMS_DEFAULT
CASES = []
for W in range(2, 9):
    CASES.append((f"fwd W{W} bias silu", lambda W=W: fwd(W=W)))
    if W in (2, 4, 8):
        CASES.append((f"bwd W{W} bias silu", lambda W=W: bwd(W=W)))
CASES += [
    ("fwd W4 nobias silu", lambda: fwd(bias=False)),
    ("fwd W4 bias noact", lambda: fwd(act=None)),
    ("fwd W4 h0 final", lambda: fwd(h0=True, ht=True)),
    ("fwd W4 seq_idx", lambda: fwd(seq=True)),
    ("fwd W8 h0 final seq_idx", lambda: fwd(W=8, h0=True, ht=True, seq=True)),
    ("fwd B1 L131072 W4", lambda: fwd(B=1, L=131072)),
    ("fwd W4 fp16", lambda: fwd(dtype=F16)),
    ("fwd W4 fp32", lambda: fwd(dtype=F32)),
    ("fwd W4 channel-first", lambda: fwd(cl=False)),
    ("fwd W4 channel-first h0 final seq_idx", lambda: fwd(cl=False, h0=True, ht=True, seq=True)),
    ("bwd W3 bias silu", lambda: bwd(W=3)),
    ("bwd W4 nobias silu", lambda: bwd(bias=False)),
    ("bwd W4 bias noact", lambda: bwd(act=None)),
    ("bwd W4 h0 final", lambda: bwd(h0=True, ht=True)),
    ("bwd W4 seq_idx", lambda: bwd(seq=True)),
    ("bwd W4 h0 final seq_idx", lambda: bwd(h0=True, ht=True, seq=True)),
    ("bwd B1 L131072 W4", lambda: bwd(B=1, L=131072)),
    ("bwd W4 fp16", lambda: bwd(dtype=F16)),
    ("bwd W4 fp32", lambda: bwd(dtype=F32)),
    ("bwd W4 channel-first", lambda: bwd(cl=False)),
    ("bwd W4 channel-first h0 final seq_idx", lambda: bwd(cl=False, h0=True, ht=True, seq=True)),
    ("step W2", lambda: stp(W=2)),
    ("step W4", lambda: stp()),
    ("step W8", lambda: stp(W=8)),
    ("step W4 nobias noact", lambda: stp(bias=False, act=None)),
    # kept opt-in variants of the streams backward, the rows backward, the forward's wave-sized grid
    ("opt bwd W4 RESET", lambda: bwd(config=dict(SD, RESET=True))),
    ("opt bwd W4 masked walk (TAIL/EVEN off)", lambda: bwd(config=dict(SD, TAIL=False, EVEN=False))),
    ("opt bwd W4 R4 (conv9 r4)", lambda: bwd(config=dict(SD, R=4))),
    ("opt bwd W4 FUSE1", lambda: bwd(config=dict(SD, FUSE=1))),
    ("opt bwd W4 FUSE0 old flags", lambda: bwd(config=dict(SD, CH=128, FUSE=0, TAIL=False, CST=False, EVEN=False))),
    ("opt bwd W4 h0 final seq_idx RESET", lambda: bwd(h0=True, ht=True, seq=True, config=dict(SD, RESET=True))),
    ("opt bwd W4 rows FUSE2", lambda: bwd(config=dict(KIND="rows", BD=128, num_warps=2, R=8, CH=128, FUSE=2))),
    ("opt fwd W4 UNEVEN NP22", lambda: fwd(config=dict(KIND="rows", BD=256, num_warps=2, R=8, CH=128, UNEVEN=True,
                                                        NP=22))),
]

if __name__ == "__main__":
    only = os.environ.get("SASS_CASES")  # substring filter (debugging)
    for name, f in CASES:
        if only and only not in name:
            continue
        LAUNCHES.clear()
        try:
            f()
        except Exception as e:
            print(f"{name} | ERR {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        for kn, grid, nw, ns, mr, cnt, md5 in LAUNCHES:
            print(f"{name} | {kn} grid={grid} warps={nw} stages={ns} maxnreg={mr} | {cnt} {md5}", flush=True)
