"""SSD chain of trust: sequential recurrence -> chunked reference -> kernels (y, final states, gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import DEVICE, KERNEL_DTYPES, assert_close, dtype_id, tol
from hybridna_kernels import ssd_scan, ssd_step
from hybridna_kernels.ssd.naive import ssd_chunked_ref, ssd_sequential_ref, ssd_step_ref

# Option sets: every optional argument alone and all together.
OPTIONS = {
    "plain": {},
    "D": {"D": "head"},
    "Dchan": {"D": "chan"},
    "z": {"z": True},
    "dtproc": {"dt_bias": True, "dt_softplus": True, "dt_limit": (0.05, 1.5)},
    "states": {"init": True, "final": True},
    "seqidx": {"seq_idx": True, "init": True, "final": True},
    "cuseq": {"cu_seqlens": True, "init": True, "final": True},
    "all": {"D": "chan", "z": True, "dt_bias": True, "dt_softplus": True, "init": True, "final": True},
    "all-seqidx": {"D": "head", "z": True, "dt_bias": True, "dt_softplus": True, "init": True, "final": True,
                   "seq_idx": True},
    "all-cuseq": {"D": "head", "z": True, "dt_bias": True, "dt_softplus": True, "dt_limit": (0.0, 2.0),
                  "init": True, "final": True, "cu_seqlens": True},
}


def _boundaries(L, gen):
    """Random packing of L tokens: a few sequences, one of them possibly empty, one boundary on a chunk edge."""
    cuts = sorted(set(torch.randint(0, L + 1, (3,), generator=gen).tolist()) | {min(16, L)})
    cu = [0] + cuts + [L]
    return torch.tensor(cu, dtype=torch.int32)


def make_inputs(b, L, H, P, G, N, opts, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    """Random SSD inputs (as leaf tensors) plus keyword arguments for ssd_scan / the references."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    if opts.get("cu_seqlens"):
        b = 1
    t = {
        "x": rnd(b, L, H, P),
        "dt": rnd(b, L, H, scale=0.5) + (0.0 if opts.get("dt_softplus") else 0.7),
        "A": -(torch.rand(H, generator=gen, dtype=torch.float64) * 1.5 + 0.05).to(
            torch.float64 if dtype == torch.float64 else torch.float32),
        "B": rnd(b, L, G, N),
        "C": rnd(b, L, G, N),
    }
    kw = {}
    if opts.get("D") == "head":
        t["D"] = rnd(H)
    elif opts.get("D") == "chan":
        t["D"] = rnd(H, P)
    if opts.get("z"):
        t["z"] = rnd(b, L, H, P)
    if opts.get("dt_bias"):
        t["dt_bias"] = rnd(H, scale=0.5) - 1.0
    kw["dt_softplus"] = bool(opts.get("dt_softplus", False))
    kw["dt_limit"] = opts.get("dt_limit", (0.0, math.inf))
    nstate = b
    if opts.get("cu_seqlens"):
        kw["cu_seqlens"] = _boundaries(L, gen).to(device)
        nstate = kw["cu_seqlens"].numel() - 1
    if opts.get("seq_idx"):
        kw["seq_idx"] = torch.sort(torch.randint(0, 4, (b, L), generator=gen), dim=1).values.to(torch.int32).to(device)
    if opts.get("init"):
        t["initial_states"] = rnd(nstate, H, P, N)
    kw["return_final_states"] = bool(opts.get("final", False))
    t = {k: v.to(device).requires_grad_(requires_grad and v.is_floating_point()) for k, v in t.items()}
    return t, kw


def _call(fn, t, kw, **extra):
    args = {k: v for k, v in t.items() if k not in ("x", "dt", "A", "B", "C")}
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], **args, **kw, **extra)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _loss(outs, seed=1):
    """Random linear functional of every output so each gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for o in outs:
        w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)
        total = total + (o.to(torch.float64) * w).sum()
    return total


def _grads(t, outs):
    leaves = [v for v in t.values() if v.requires_grad]
    names = [k for k, v in t.items() if v.requires_grad]
    gs = torch.autograd.grad(_loss(outs), leaves, allow_unused=True)
    return dict(zip(names, gs))


REF_SHAPES = [  # (b, L, H, P, G, N, chunk)
    (2, 1, 2, 4, 1, 3, 16),
    (2, 63, 4, 6, 2, 5, 16),
    (1, 63, 2, 3, 1, 4, 64),
    (2, 500, 4, 4, 2, 3, 64),
    (1, 500, 2, 5, 1, 7, 16),
]


def _shape_id(s):
    b, L, H, P, G, N, Q = s
    return f"B{b}-T{L}-H{H}-P{P}-G{G}-N{N}-Q{Q}"


@pytest.mark.parametrize("opt", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("shape", REF_SHAPES, ids=[_shape_id(s) for s in REF_SHAPES])
def test_chunked_ref_matches_sequential_fp64(shape, opt):
    b, L, H, P, G, N, Q = shape
    t, kw = make_inputs(b, L, H, P, G, N, OPTIONS[opt])
    ref = _as_tuple(_call(ssd_sequential_ref, t, kw))
    out = _as_tuple(_call(ssd_chunked_ref, t, kw, chunk_size=Q))
    assert len(ref) == len(out) == (2 if kw["return_final_states"] else 1)
    for name, r, o in zip(("y", "final_states"), ref, out):
        assert_close(name, r, o, 1e-10)


GRAD_SHAPES = [(2, 63, 4, 3, 2, 4, 16), (1, 37, 2, 4, 1, 3, 16)]


@pytest.mark.parametrize("opt", ["all", "all-seqidx", "all-cuseq", "dtproc", "Dchan"])
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=[_shape_id(s) for s in GRAD_SHAPES])
def test_chunked_ref_grads_match_sequential_fp64(shape, opt):
    b, L, H, P, G, N, Q = shape
    t, kw = make_inputs(b, L, H, P, G, N, OPTIONS[opt], requires_grad=True)
    g_ref = _grads(t, _as_tuple(_call(ssd_sequential_ref, t, kw)))
    g_out = _grads(t, _as_tuple(_call(ssd_chunked_ref, t, kw, chunk_size=Q)))
    assert set(g_ref) >= {"x", "dt", "A", "B", "C"}
    for k in g_ref:
        assert g_ref[k] is not None, k
        assert_close(f"d{k}", g_ref[k], g_out[k], 1e-10)


@pytest.mark.parametrize("opt", ["plain", "all", "dtproc"])
def test_step_ref_matches_sequential_fp64(opt):
    b, L, H, P, G, N = 2, 9, 4, 3, 2, 5
    opts = dict(OPTIONS[opt], init=True, final=True)
    t, kw = make_inputs(b, L, H, P, G, N, opts)
    y_ref, h_ref = _call(ssd_sequential_ref, t, kw)
    state = t["initial_states"].clone()
    extra = {k: t[k] for k in ("D",) if k in t}
    extra.update({k: v for k, v in kw.items() if k in ("dt_softplus", "dt_limit")})
    if "dt_bias" in t:
        extra["dt_bias"] = t["dt_bias"]
    ys = []
    for i in range(L):
        zi = t["z"][:, i] if "z" in t else None
        ys.append(ssd_step_ref(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], z=zi, **extra))
    assert_close("y", y_ref, torch.stack(ys, 1), 1e-12)
    assert_close("state", h_ref, state, 1e-12)


def test_public_ssd_scan_fp32_matches_fp64_reference():
    t, kw = make_inputs(2, 70, 4, 8, 2, 16, OPTIONS["all"], dtype=torch.float32)
    t64 = {k: v.double() for k, v in t.items()}
    y_ref, h_ref = _call(ssd_sequential_ref, t64, kw)
    y, h = _call(ssd_scan, t, kw, chunk_size=16)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close("y", y_ref, y, tol(torch.float32, "fwd"))
    assert_close("final_states", h_ref, h, tol(torch.float32, "fwd"))


def test_public_ssd_step_matches_scan():
    t, kw = make_inputs(2, 5, 4, 8, 2, 16, OPTIONS["all"], dtype=torch.float32)
    y_scan, h_scan = _call(ssd_scan, t, kw, chunk_size=16)
    state = t["initial_states"].clone()
    for i in range(5):
        y = ssd_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], D=t["D"],
                     z=t["z"][:, i], dt_bias=t["dt_bias"], dt_softplus=True)
        assert_close(f"y[{i}]", y_scan[:, i], y, tol(torch.float32, "fwd"))
    assert_close("state", h_scan, state, tol(torch.float32, "fwd"))


# ---------------------------------------------------------------------------------------------------------
# Input validation: each bad argument gives a ValueError naming it.

def _good(**over):
    b, L, H, P, G, N = 1, 8, 4, 4, 2, 4
    args = dict(x=torch.randn(b, L, H, P), dt=torch.rand(b, L, H), A=-torch.rand(H) - 0.1,
                B=torch.randn(b, L, G, N), C=torch.randn(b, L, G, N))
    args.update(over)
    return args


BAD_SCAN = {
    "x-rank": (dict(x=torch.randn(8, 4, 4)), "x: expected a 4-d"),
    "x-dtype": (dict(x=torch.randn(1, 8, 4, 4).to(torch.int32)), "x: expected dtype"),
    "x-empty": (dict(x=torch.randn(1, 0, 4, 4), dt=torch.rand(1, 0, 4), B=torch.randn(1, 0, 2, 4),
                     C=torch.randn(1, 0, 2, 4)), "x: dim 1 must have at least 1"),
    "x-stride": (dict(x=torch.randn(1, 8, 4, 8)[..., ::2]), "x: dim 3 must be contiguous"),
    "dt-shape": (dict(dt=torch.rand(1, 8, 3)), "dt: expected shape"),
    "A-dtype": (dict(A=-torch.rand(4, dtype=torch.float16)), "A: expected dtype float32"),
    "A-shape": (dict(A=-torch.rand(4, 1)), "A: expected a 1-d"),
    "A-positive": (dict(A=torch.rand(4) + 0.1), "A: expected negative"),
    "B-groups": (dict(B=torch.randn(1, 8, 3, 4), C=torch.randn(1, 8, 3, 4)), "B: nheads .4. must be a multiple"),
    "C-shape": (dict(C=torch.randn(1, 8, 2, 5)), "C: expected shape"),
    "D-shape": (dict(D=torch.randn(3)), "D: expected shape"),
    "z-shape": (dict(z=torch.randn(1, 8, 4, 3)), "z: expected shape"),
    "dt_bias-shape": (dict(dt_bias=torch.randn(5)), "dt_bias: expected shape"),
    "dt_limit": (dict(dt_limit=(1.0, 0.5)), "dt_limit: expected 0 <= lo <= hi"),
    "chunk": (dict(chunk_size=48), "chunk_size: expected a power of two"),
    "init-shape": (dict(initial_states=torch.randn(2, 4, 4, 4)), "initial_states: expected shape"),
    "seq_idx-dtype": (dict(seq_idx=torch.zeros(1, 8, dtype=torch.int64)), "seq_idx: expected dtype int32"),
    "seq_idx-order": (dict(seq_idx=torch.tensor([[0, 1, 1, 0, 2, 2, 2, 2]], dtype=torch.int32)),
                      "seq_idx: expected non-decreasing"),
    "cu-dtype": (dict(cu_seqlens=torch.tensor([0, 8])), "cu_seqlens: expected dtype int32"),
    "cu-batch": (dict(x=torch.randn(2, 8, 4, 4), dt=torch.rand(2, 8, 4), B=torch.randn(2, 8, 2, 4),
                      C=torch.randn(2, 8, 2, 4), cu_seqlens=torch.tensor([0, 8], dtype=torch.int32)),
                 "cu_seqlens: packed sequences need batch 1"),
    "cu-end": (dict(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32)), "cu_seqlens: expected non-decreasing"),
    "cu-init": (dict(cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32), initial_states=torch.randn(1, 4, 4, 4)),
                "initial_states: expected shape"),
    "both-packings": (dict(cu_seqlens=torch.tensor([0, 8], dtype=torch.int32),
                           seq_idx=torch.zeros(1, 8, dtype=torch.int32)), "cu_seqlens: give either"),
}


@pytest.mark.parametrize("case", list(BAD_SCAN), ids=list(BAD_SCAN))
def test_ssd_scan_rejects_bad_input(case):
    over, match = BAD_SCAN[case]
    args = _good(**over)
    x, dt, A, B, C = (args.pop(k) for k in ("x", "dt", "A", "B", "C"))
    with pytest.raises(ValueError, match=match):
        ssd_scan(x, dt, A, B, C, **args)


BAD_STEP = {
    "state-dtype": (dict(state=torch.zeros(2, 4, 4, 8, dtype=torch.float16)), "state: expected dtype float32"),
    "state-shape": (dict(state=torch.zeros(2, 4, 3, 8)), "state: expected shape"),
    "x-rank": (dict(x=torch.randn(2, 16)), "x: expected a 3-d"),
    "dt-shape": (dict(dt=torch.rand(2, 5)), "dt: expected shape"),
    "B-groups": (dict(B=torch.randn(2, 3, 8), C=torch.randn(2, 3, 8)), "B: nheads .4. must be a multiple"),
    "B-dstate": (dict(B=torch.randn(2, 2, 7)), "B: expected shape"),
    "A-dtype": (dict(A=-torch.rand(4, dtype=torch.float64)), "A: expected dtype float32"),
}


@pytest.mark.parametrize("case", list(BAD_STEP), ids=list(BAD_STEP))
def test_ssd_step_rejects_bad_input(case):
    over, match = BAD_STEP[case]
    args = dict(state=torch.zeros(2, 4, 4, 8), x=torch.randn(2, 4, 4), dt=torch.rand(2, 4), A=-torch.rand(4) - 0.1,
                B=torch.randn(2, 2, 8), C=torch.randn(2, 2, 8))
    args.update(over)
    s, x, dt, A, B, C = (args.pop(k) for k in ("state", "x", "dt", "A", "B", "C"))
    with pytest.raises(ValueError, match=match):
        ssd_step(s, x, dt, A, B, C, **args)
