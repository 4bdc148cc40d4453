"""causal_conv1d / causal_conv1d_step: the reference against F.conv1d, then the kernels against the reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import DEVICE, KERNEL_DTYPES, assert_close, dtype_id, tol

from hybridna_kernels import causal_conv1d, causal_conv1d_step
from hybridna_kernels.conv1d import causal_conv1d_ref, causal_conv1d_step_ref, conv
from hybridna_kernels.utils import backend, cdiv

WIDTHS = list(range(2, 9))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(B, D, L, W, dtype=torch.float64, device="cpu", seed=0, channel_last=True):
    g = _gen(seed)
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64).transpose(1, 2)  # (B, D, L), stride(1) == 1
    if not channel_last:
        x = x.contiguous()
    w = torch.randn(D, W, generator=g, dtype=torch.float64) / W**0.5
    b = torch.randn(D, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, D, W - 1, generator=g, dtype=torch.float64)
    conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    # .to() keeps x's channel-last strides (preserve_format keeps dense non-contiguous layouts).
    return conv(x), conv(w), conv(b), conv(h0)


def _seq_idx(B, L, nseg, seed=0, device="cpu"):
    """Non-decreasing segment ids with nseg segments per row (some may be short, length 1)."""
    g = _gen(seed + 1000)
    rows = []
    for _ in range(B):
        if nseg > 1 and L > 1:
            cuts = torch.randperm(L - 1, generator=g)[: min(nseg - 1, L - 1)].sort().values + 1
        else:
            cuts = torch.zeros(0, dtype=torch.int64)
        row = torch.zeros(L, dtype=torch.int32)
        for c in cuts.tolist():
            row[c:] += 1
        rows.append(row)
    return torch.stack(rows).to(device)


def _fconv(x, w, b, act):
    W = w.shape[1]
    y = F.conv1d(x, w[:, None], b, padding=W - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(y) if act == "silu" else y


# ---------------------------------------------------------------------------------------------------
# The reference: definition checks in float64
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("W", WIDTHS, ids=lambda w: f"W{w}")
@pytest.mark.parametrize("act", [None, "silu"], ids=["noact", "silu"])
@pytest.mark.parametrize("B,D,L", [(2, 37, 63), (1, 5, 1), (3, 8, 7)], ids=lambda v: str(v))
def test_ref_matches_fconv(B, D, L, W, act):
    x, w, b, _ = _inputs(B, D, L, W)
    assert_close("y", _fconv(x, w, b, act), causal_conv1d_ref(x, w, b, act), 1e-10)
    assert_close("y_nobias", _fconv(x, w, None, act), causal_conv1d_ref(x, w, None, act), 1e-10)


@pytest.mark.parametrize("W", WIDTHS, ids=lambda w: f"W{w}")
@pytest.mark.parametrize("L", [1, 2, 9, 40], ids=lambda v: f"L{v}")
def test_ref_states_match_concatenation(L, W):
    """initial_states are the inputs before t = 0; final_states are the last width - 1 inputs."""
    B, D = 2, 6
    x, w, b, h0 = _inputs(B, D, L, W, seed=L * 10 + W)
    y, hT = causal_conv1d_ref(x, w, b, "silu", h0, True)
    xx = torch.cat([h0, x], -1)
    assert_close("y", _fconv(xx, w, b, "silu")[..., W - 1:], y, 1e-10)
    assert_close("final_states", xx[..., -(W - 1):], hT, 1e-10)


@pytest.mark.parametrize("W", [2, 4, 8], ids=lambda w: f"W{w}")
def test_ref_split_continues_with_states(W):
    B, D, L = 2, 5, 30
    x, w, b, h0 = _inputs(B, D, L, W, seed=W)
    y, hT = causal_conv1d_ref(x, w, b, None, h0, True)
    for cut in (1, 3, 17, 29):
        y1, h1 = causal_conv1d_ref(x[..., :cut], w, b, None, h0, True)
        y2, h2 = causal_conv1d_ref(x[..., cut:], w, b, None, h1, True)
        assert_close("y", y, torch.cat([y1, y2], -1), 1e-12)
        assert_close("final_states", hT, h2, 1e-12)


@pytest.mark.parametrize("W", [2, 4, 8], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_ref_seq_idx_equals_separate_sequences(W, with_h0):
    """Packed segments behave as separate sequences; initial_states belong to the first segment and
    final_states to the last one (zero where the last segment is shorter than width - 1)."""
    B, D, L = 3, 4, 25
    x, w, b, h0 = _inputs(B, D, L, W, seed=W + 7)
    h0 = h0 if with_h0 else None
    seq_idx = _seq_idx(B, L, nseg=5, seed=W)
    seq_idx[2] = torch.arange(L, dtype=torch.int32) // 1  # every segment of length 1 in row 2
    y, hT = causal_conv1d_ref(x, w, b, "silu", h0, True, seq_idx)
    for bi in range(B):
        segs = seq_idx[bi].unique_consecutive().tolist()
        for si, s in enumerate(segs):
            m = (seq_idx[bi] == s).nonzero().flatten()
            t0, t1 = m[0].item(), m[-1].item() + 1
            init = h0[bi: bi + 1] if (h0 is not None and si == 0) else None
            ys, hs = causal_conv1d_ref(x[bi: bi + 1, :, t0:t1], w, b, "silu", init, True)
            assert_close(f"y[b{bi},seg{s}]", ys, y[bi: bi + 1, :, t0:t1], 1e-12)
            if si == len(segs) - 1:
                assert_close(f"final_states[b{bi}]", hs, hT[bi: bi + 1], 1e-12)


@pytest.mark.parametrize("W", WIDTHS, ids=lambda w: f"W{w}")
def test_ref_step_matches_full(W):
    B, D, L = 2, 7, 12
    x, w, b, h0 = _inputs(B, D, L, W, seed=3 * W)
    y, hT = causal_conv1d_ref(x, w, b, "silu", h0, True)
    state = h0.clone()
    for t in range(L):
        yt, state = causal_conv1d_step_ref(x[:, :, t], state, w, b, "silu")
        assert_close(f"y[t={t}]", y[:, :, t], yt, 1e-12)
    assert_close("state", hT, state, 1e-12)


@pytest.mark.parametrize("W", [2, 3, 4, 8], ids=lambda w: f"W{w}")
def test_ref_autograd_gradcheck(W):
    """The reference's gradients (autograd) are what the kernels are checked against: check them."""
    B, D, L = 2, 3, 9
    x, w, b, h0 = _inputs(B, D, L, W, seed=W)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0] * 9], dtype=torch.int32)
    args = [t.clone().requires_grad_() for t in (x, w, b, h0)]

    def f(x, w, b, h0):
        y, hT = causal_conv1d_ref(x, w, b, "silu", h0, True, seq_idx)
        return y, hT

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Public functions: validation and dispatch
# ---------------------------------------------------------------------------------------------------


def _bad_calls():
    x = torch.randn(2, 6, 10)
    w = torch.randn(6, 4)
    return [
        ("rank", lambda: causal_conv1d(x[0], w), r"x: expected a 3-d tensor"),
        ("x_dtype", lambda: causal_conv1d(x.to(torch.int32), w), r"x: expected dtype"),
        ("empty_seqlen", lambda: causal_conv1d(x[..., :0], w), r"x: dim 2 must have at least 1"),
        ("dim_mismatch", lambda: causal_conv1d(x, torch.randn(5, 4)), r"weight: expected shape \(6, \*\)"),
        ("width_1", lambda: causal_conv1d(x, torch.randn(6, 1)), r"weight: width .* must be in 2..8, got 1"),
        ("width_9", lambda: causal_conv1d(x, torch.randn(6, 9)), r"weight: width .* must be in 2..8, got 9"),
        ("weight_rank", lambda: causal_conv1d(x, torch.randn(6)), r"weight: expected a 2-d tensor"),
        ("bias_shape", lambda: causal_conv1d(x, w, torch.randn(5)), r"bias: expected shape \(6\)"),
        ("h0_shape", lambda: causal_conv1d(x, w, initial_states=torch.randn(2, 6, 4)),
         r"initial_states: expected shape \(2, 6, 3\)"),
        ("seq_idx_dtype", lambda: causal_conv1d(x, w, seq_idx=torch.zeros(2, 10)), r"seq_idx: expected dtype int32"),
        ("seq_idx_shape", lambda: causal_conv1d(x, w, seq_idx=torch.zeros(2, 9, dtype=torch.int32)),
         r"seq_idx: expected shape \(2, 10\)"),
        ("activation", lambda: causal_conv1d(x, w, activation="relu"), r"activation: expected None or 'silu'"),
        ("step_rank", lambda: causal_conv1d_step(x, torch.randn(2, 6, 3), w), r"x: expected a 2-d tensor"),
        ("step_state_shape", lambda: causal_conv1d_step(x[..., 0], torch.randn(2, 6, 4), w),
         r"conv_state: expected shape \(2, 6, 3\)"),
        ("step_state_dtype", lambda: causal_conv1d_step(x[..., 0], torch.zeros(2, 6, 3, dtype=torch.int64), w),
         r"conv_state: expected dtype"),
        ("step_width", lambda: causal_conv1d_step(x[..., 0], torch.randn(2, 6, 8), torch.randn(6, 9)),
         r"weight: width"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_validation_errors_name_the_argument(case):
    _, call, match = case
    with pytest.raises(ValueError, match=match):
        call()


def test_devices_must_match():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device for a second device")
    with pytest.raises(ValueError, match="weight: expected a tensor on"):
        causal_conv1d(torch.randn(1, 4, 5, device="cuda"), torch.randn(4, 3))


def test_public_reference_backend_matches_ref_and_steps_in_place():
    B, D, L, W = 2, 9, 11, 4
    x, w, b, h0 = _inputs(B, D, L, W, dtype=torch.float32)
    with backend("reference"):
        y, hT = causal_conv1d(x, w, b, activation="silu", initial_states=h0, return_final_states=True)
        y_w3 = causal_conv1d(x, w[:, None], b, activation="silu", initial_states=h0)  # (dim, 1, width)
        state = h0.clone()
        ys = torch.stack([causal_conv1d_step(x[:, :, t], state, w, b, activation="silu") for t in range(L)], -1)
    y_ref, hT_ref = causal_conv1d_ref(x.double(), w.double(), b.double(), "silu", h0.double(), True)
    assert_close("y", y_ref, y, tol(torch.float32))
    assert_close("y(dim,1,width)", y_ref, y_w3, tol(torch.float32))
    assert_close("final_states", hT_ref, hT, tol(torch.float32))
    assert_close("y_step", y_ref, ys, tol(torch.float32))
    assert_close("conv_state", hT_ref, state, tol(torch.float32))


# ---------------------------------------------------------------------------------------------------
# Kernels against the float64 reference (interpreter on CPU, Triton on GPU)
# ---------------------------------------------------------------------------------------------------


def _layout(x, layout):
    """x (B, D, L) float64 -> the requested memory layout (values unchanged)."""
    B, D, L = x.shape
    if layout == "cl":  # channel-last, what the model feeds
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "cf":  # channel-first, contiguous
        return x.contiguous()
    # "strided": a view into a larger buffer, no dimension of stride 1
    big = torch.zeros(B, L + 3, 2 * D, dtype=x.dtype, device=x.device)
    view = big[:, 2: L + 2, ::2].transpose(1, 2)
    view.copy_(x)
    return view


def _check_kernel(B, D, L, W, dtype, layout="cl", act="silu", bias=True, h0=True, final=True, nseg=0, seed=0):
    assert torch.cuda.is_available() or torch.device(DEVICE).type == "cpu"
    g = _gen(seed)
    x64 = torch.randn(B, D, L, generator=g, dtype=torch.float64)
    w64 = torch.randn(D, W, generator=g, dtype=torch.float64) / W**0.5
    b64 = torch.randn(D, generator=g, dtype=torch.float64) if bias else None
    h64 = torch.randn(B, D, W - 1, generator=g, dtype=torch.float64) if h0 else None
    seq_idx = _seq_idx(B, L, nseg, seed=seed, device=DEVICE) if nseg else None
    # rounded to the compute dtype first: the reference sees exactly the kernel's inputs
    x = _layout(x64.to(DEVICE, dtype), layout).requires_grad_()
    w = w64.to(DEVICE, dtype).requires_grad_()
    b = b64.to(DEVICE, dtype).requires_grad_() if bias else None
    h = h64.to(DEVICE, dtype).requires_grad_() if h0 else None
    leaves = [("dx", x), ("dweight", w), ("dbias", b), ("dinitial_states", h)]
    leaves = [(n, t) for n, t in leaves if t is not None]
    refs = [t.detach().double().requires_grad_() for _, t in leaves]
    rmap = dict(zip([n for n, _ in leaves], refs))

    out = causal_conv1d(x, w, b, activation=act, initial_states=h, return_final_states=final, seq_idx=seq_idx)
    ref = causal_conv1d_ref(rmap["dx"], rmap["dweight"], rmap.get("dbias"), act, rmap.get("dinitial_states"),
                            final, seq_idx)
    y, ht = (out if final else (out, None))
    yr, htr = (ref if final else (ref, None))
    if layout == "cl":
        assert y.stride(1) == 1, f"y: channel-last input should give channel-last output, strides {y.stride()}"
    assert_close("y", yr, y, tol(dtype, "fwd"))
    gy = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    loss, loss_r = (y.double() * gy.to(DEVICE)).sum(), (yr * gy.to(DEVICE)).sum()
    if final:
        assert_close("final_states", htr, ht, tol(dtype, "fwd"))
        gh = torch.randn(htr.shape, generator=g, dtype=torch.float64)
        loss, loss_r = loss + (ht.double() * gh.to(DEVICE)).sum(), loss_r + (htr * gh.to(DEVICE)).sum()
    grads = torch.autograd.grad(loss, [t for _, t in leaves])
    grads_r = torch.autograd.grad(loss_r, refs)
    for (name, _), gk, gr in zip(leaves, grads, grads_r):
        assert_close(name, gr, gk, tol(dtype, "grad"))


def _kernel_cases():
    """A sampled cross-product: every width, both CPU dtypes, every layout and optional input, the
    awkward sizes of issue 3 (dim 37 and 2048 + 16; seqlen 1, 63, 500). Interpreter-sized."""
    cases = []
    feats = [dict(), dict(act=None, bias=False), dict(h0=False, nseg=4), dict(final=False, nseg=3),
             dict(act=None, h0=False, final=False), dict(nseg=6), dict(bias=False, nseg=2)]
    layouts = ["cl", "cf", "strided"]
    for i, W in enumerate(range(2, 9)):
        for j, dtype in enumerate([torch.float32, torch.float16]):
            f = feats[(i + 3 * j) % len(feats)]
            cases.append(((2, 37, 63, W, dtype, layouts[(i + j) % 3]), f))
    cases += [
        ((2, 37, 1, 2, torch.float32, "cl"), dict(nseg=2)),  # seqlen 1 (nseg clipped to 1)
        ((2, 37, 1, 8, torch.float16, "cf"), dict()),  # seqlen 1 < width - 1: final_states reach into h0
        ((1, 37, 5, 8, torch.float32, "cl"), dict(nseg=3)),
        ((1, 37, 500, 4, torch.float32, "cl"), dict(nseg=5)),
        ((1, 37, 500, 8, torch.float16, "strided"), dict()),
        ((1, 2064, 1, 4, torch.float32, "cl"), dict()),
        ((1, 2064, 63, 4, torch.float16, "cl"), dict(nseg=3)),
        ((1, 2064, 63, 3, torch.float32, "cf"), dict(act=None)),
    ]
    return cases


def _case_id(c):
    (B, D, L, W, dtype, layout), f = c
    extra = "-".join(f"{k}{v}" for k, v in f.items())
    return f"B{B}-D{D}-L{L}-W{W}-{dtype_id(dtype)}-{layout}" + (f"-{extra}" if extra else "")


@pytest.mark.parametrize("case", _kernel_cases(), ids=_case_id)
def test_kernel_matches_reference(case):
    (B, D, L, W, dtype, layout), f = case
    _check_kernel(B, D, L, W, dtype, layout, seed=W * 100 + L, **f)


_GPU_DTYPE_CASES = [(W, torch.bfloat16) for W in WIDTHS] + [(W, d) for W in (2, 4, 8) for d in (torch.float16, torch.float32)]


@pytest.mark.gpu
@pytest.mark.parametrize("W,dtype", _GPU_DTYPE_CASES, ids=lambda v: f"W{v}" if isinstance(v, int) else dtype_id(v))
def test_kernel_gpu_dtypes(W, dtype):
    _check_kernel(2, 2064, 500, W, dtype, "cl", nseg=3, seed=W)
    _check_kernel(2, 37, 63, W, dtype, "strided", act=None, seed=W + 1)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("W", [4, 8], ids=lambda w: f"W{w}")
def test_kernel_gpu_big_bf16(W):
    _check_kernel(8, 2304, 8192, W, torch.bfloat16, "cl", seed=W)
    _check_kernel(1, 2304, 131072, W, torch.bfloat16, "cl", nseg=7, seed=W + 1)


@pytest.mark.gpu
@pytest.mark.bigmem
@pytest.mark.slow
def test_kernel_int64_addressing():
    """batch x dim x seqlen > 2^31: check the tail (addresses past 2^31) against the reference run on
    the tail alone, with the preceding inputs as initial_states."""
    B, D, L, W, T = 1, 4096, 2**19 + 5, 4, 256
    assert B * D * L > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, L, D, generator=g, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    w = torch.randn(D, W, generator=g, device="cuda", dtype=torch.bfloat16)
    y = causal_conv1d(x, w, None, activation="silu")
    gy = torch.zeros_like(y)
    gy[..., -T:] = torch.randn(B, D, T, generator=g, device="cuda", dtype=torch.bfloat16)
    (dx,) = torch.autograd.grad(y, x, gy)
    xt = x.detach()[..., -T:].double().requires_grad_()
    yr = causal_conv1d_ref(xt, w.double(), None, "silu", x.detach()[..., -T - W + 1: -T].double())
    (dxr,) = torch.autograd.grad(yr, xt, gy[..., -T:].double())
    assert_close("y_tail", yr, y[..., -T:], tol(torch.bfloat16, "fwd"))
    assert_close("dx_tail", dxr, dx[..., -T:], tol(torch.bfloat16, "grad"))


def test_kernel_backward_is_deterministic():
    B, D, L, W = 2, 40, 200, 4
    x = torch.randn(B, D, L, device=DEVICE, requires_grad=True)
    w = torch.randn(D, W, device=DEVICE, requires_grad=True)
    b = torch.randn(D, device=DEVICE, requires_grad=True)
    gy = torch.randn(B, D, L, device=DEVICE)
    runs = [torch.autograd.grad(causal_conv1d(x, w, b, activation="silu"), (x, w, b), gy) for _ in range(2)]
    for name, a, c in zip(("dx", "dweight", "dbias"), *runs):
        assert torch.equal(a, c), f"{name}: two backward runs differ"


@pytest.mark.parametrize("W", WIDTHS, ids=lambda w: f"W{w}")
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
def test_step_kernel_matches_full_kernel(W, dtype):
    """Decoding token by token from initial_states reproduces the full kernel's outputs and final_states;
    conv_state is a strided view into a larger cache buffer and is updated in place."""
    B, D, L = 2, 37, 6
    g = _gen(W)
    x = torch.randn(B, D, L, generator=g).to(DEVICE, dtype)
    w = (torch.randn(D, W, generator=g) / W**0.5).to(DEVICE, dtype)
    b = torch.randn(D, generator=g).to(DEVICE, dtype)
    h0 = torch.randn(B, D, W - 1, generator=g).to(DEVICE, dtype)
    y, ht = causal_conv1d(x, w, b, activation="silu", initial_states=h0, return_final_states=True)
    cache = torch.zeros(B, D, W + 2, device=DEVICE, dtype=dtype)
    state = cache[..., 2: W + 1]
    state.copy_(h0)
    ptr = state.data_ptr()
    for t in range(L):
        yt = causal_conv1d_step(x[:, :, t], state, w, b, activation="silu")
        assert_close(f"y[t={t}]", y[:, :, t], yt, tol(dtype, "fwd"))
    assert state.data_ptr() == ptr
    assert_close("conv_state", ht, state, tol(dtype, "fwd"))
    y_ref, ht_ref = causal_conv1d_ref(x.double(), w.double(), b.double(), "silu", h0.double(), True)
    assert_close("y_vs_ref", y_ref, y, tol(dtype, "fwd"))
    assert_close("conv_state_vs_ref", ht_ref, state, tol(dtype, "fwd"))
    assert cache[..., :2].eq(0).all() and cache[..., W + 1:].eq(0).all(), "step wrote outside conv_state"


def _cfg_id(c):
    return "-".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in c.items())


def _variant_inputs(B, D, L, W, dtype, seed, with_seq=True):
    g = _gen(seed)
    x = torch.randn(B, L, D, generator=g).transpose(1, 2).to(DEVICE, dtype)
    w = (torch.randn(D, W, generator=g) / W**0.5).to(DEVICE, dtype)
    b = torch.randn(D, generator=g).to(DEVICE, dtype)
    h0 = torch.randn(B, D, W - 1, generator=g).to(DEVICE, dtype)
    seq_idx = _seq_idx(B, L, 4, seed=seed, device=DEVICE) if with_seq else None
    return x, w, b, h0, seq_idx


# (B, D, L, W, dtype, with seq_idx); on GPU the W8 shape skips seq_idx (its compiles take ~30 s each)
_VARIANT_SHAPES = [(1, 37, 150, 4, torch.float32, True)] + (
    [(2, 300, 700, 8, torch.bfloat16, False), (1, 2064, 257, 3, torch.float16, True)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("shape", _VARIANT_SHAPES, ids=lambda s: f"B{s[0]}-D{s[1]}-L{s[2]}-W{s[3]}-{dtype_id(s[4])}" + ("-seq" if s[5] else ""))
@pytest.mark.parametrize("config", conv._bwd_configs(), ids=_cfg_id)
def test_bwd_tile_variants(config, shape):
    """Every backward tiling the benchmark may pick computes the same gradients (states, seq_idx, silu)."""
    B, D, L, W, dtype, with_seq = shape
    x, w, b, h0, seq_idx = _variant_inputs(B, D, L, W, dtype, seed=L, with_seq=with_seq)
    dy = torch.randn(B, D, L, device=DEVICE, dtype=dtype)
    dht = torch.randn(B, D, W - 1, device=DEVICE, dtype=dtype)
    dx, dw, db, dh0 = conv.causal_conv1d_bwd(x, w, b, "silu", h0, seq_idx, dy, dht, True, config=config)
    refs = [t.double().requires_grad_() for t in (x, w, b, h0)]
    y, ht = causal_conv1d_ref(*refs[:3], "silu", refs[3], True, seq_idx)
    grads = torch.autograd.grad((y * dy.double()).sum() + (ht * dht.double()).sum(), refs)
    for name, r, o in zip(("dx", "dweight", "dbias", "dinitial_states"), grads, (dx, dw, db, dh0)):
        assert_close(name, r, o, tol(dtype, "grad"))


@pytest.mark.parametrize("shape", _VARIANT_SHAPES, ids=lambda s: f"B{s[0]}-D{s[1]}-L{s[2]}-W{s[3]}-{dtype_id(s[4])}" + ("-seq" if s[5] else ""))
@pytest.mark.parametrize("config", conv._fwd_configs(), ids=_cfg_id)
def test_fwd_tile_variants(config, shape):
    B, D, L, W, dtype, with_seq = shape
    x, w, b, h0, seq_idx = _variant_inputs(B, D, L, W, dtype, seed=L + 1, with_seq=with_seq)
    y, ht = conv.causal_conv1d_fwd(x, w, b, "silu", h0, True, seq_idx, config=config)
    yr, htr = causal_conv1d_ref(x.double(), w.double(), b.double(), "silu", h0.double(), True, seq_idx)
    assert_close("y", yr, y, tol(dtype, "fwd"))
    assert_close("final_states", htr, ht, tol(dtype, "fwd"))


# ---------------------------------------------------------------------------------------------------
# torch.library registration: torch.compile traces the kernels without a graph break
# ---------------------------------------------------------------------------------------------------


def _compile_inputs(W=4, dtype=torch.float32, seed=0):
    B, D, L = 2, 12, 19
    x, w, b, h0 = (t.to(DEVICE, dtype) for t in _inputs(B, D, L, W, seed=seed)[:4])
    seq_idx = _seq_idx(B, L, 3, seed=seed, device=DEVICE)
    return x, w, b, h0, seq_idx


def test_registered_ops_opcheck():
    """Schema, fake (meta) implementations and autograd registration agree with the real kernels."""
    x, w, b, h0, seq_idx = _compile_inputs()
    for args in [(x, w, b, "silu", h0, True, seq_idx), (x.contiguous(), w, None, None, None, False, None)]:
        args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in args)
        torch.library.opcheck(torch.ops.hybridna.causal_conv1d_fwd.default, args)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.hybridna.causal_conv1d_bwd.default,
                          (x, w, b, "silu", h0, seq_idx, dy, torch.randn_like(h0), True))
    torch.library.opcheck(torch.ops.hybridna.causal_conv1d_step.default, (x[..., 0], h0.clone(), w, b, "silu"))


@pytest.mark.parametrize("which", ["kernel", "reference"])
def test_torch_compile_fullgraph(which):
    """fullgraph=True fails on any graph break; outputs and gradients match eager mode."""
    x, w, b, h0, seq_idx = _compile_inputs(W=3, seed=5)

    def f(x, w, b, h0):
        y, ht = causal_conv1d(x, w, b, activation="silu", initial_states=h0, return_final_states=True,
                              seq_idx=seq_idx)
        return (y * y).sum() + (ht * 2).sum()

    def step(xt, state):
        return causal_conv1d_step(xt, state, w, b, activation="silu")

    with backend("triton" if which == "kernel" else "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, h0)]
        loss = f(*leaves)
        grads = torch.autograd.grad(loss, leaves)
        torch._dynamo.reset()
        cleaves = [t.clone().requires_grad_() for t in (x, w, b, h0)]
        closs = torch.compile(f, backend="aot_eager", fullgraph=True)(*cleaves)
        cgrads = torch.autograd.grad(closs, cleaves)
        s_eager, s_comp = h0.clone(), h0.clone()
        y_eager = step(x[..., 0], s_eager)
        y_comp = torch.compile(step, backend="aot_eager", fullgraph=True)(x[..., 0], s_comp)
    assert_close("loss", loss.detach(), closs.detach(), 1e-6)
    for name, g, cg in zip(("dx", "dweight", "dbias", "dinitial_states"), grads, cgrads):
        assert_close(name, g, cg, 1e-6)
    assert_close("y_step", y_eager, y_comp, 1e-6)
    assert_close("conv_state", s_eager, s_comp, 1e-6)


def test_kernel_model_layout_and_mixed_dtypes():
    """What the model feeds: x a transposed column slice of a projection (channel-last, time stride >
    dim), fp16 activations with fp32 weight and bias; the step reads a strided row of the same kind."""
    B, L, D, W, extra = 2, 45, 40, 4, 24
    g = _gen(11)
    proj = torch.randn(B, L, D + extra, generator=g).to(DEVICE, torch.float16)
    x = proj[:, :, 8: 8 + D].transpose(1, 2).requires_grad_()  # (B, D, L), strides (L*(D+extra), 1, D+extra)
    w = (torch.randn(D, W, generator=g) / 2).to(DEVICE).requires_grad_()
    b = torch.randn(D, generator=g).to(DEVICE).requires_grad_()
    y, ht = causal_conv1d(x, w, b, activation="silu", return_final_states=True)
    assert y.dtype == torch.float16 and ht.dtype == torch.float16
    gy = torch.randn(y.shape, generator=g).to(DEVICE, torch.float16)
    grads = torch.autograd.grad(y, (x, w, b), gy)
    assert grads[1].dtype == torch.float32 and grads[0].dtype == torch.float16
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    yr, htr = causal_conv1d_ref(*refs, "silu", None, True)
    grads_r = torch.autograd.grad(yr, refs, gy.double())
    assert_close("y", yr, y, tol(torch.float16, "fwd"))
    assert_close("final_states", htr, ht, tol(torch.float16, "fwd"))
    for name, r, o in zip(("dx", "dweight", "dbias"), grads_r, grads):
        assert_close(name, r, o, tol(torch.float16, "grad"))
    state = ht.clone()
    nxt = torch.randn(B, D + extra, generator=g).to(DEVICE, torch.float16)[:, 8: 8 + D]
    y1 = causal_conv1d_step(nxt, state, w.detach(), b.detach(), activation="silu")
    y_full = causal_conv1d_ref(torch.cat([x.detach(), nxt[:, :, None]], -1).double(), w.double(), b.double(), "silu")
    assert_close("y_step", y_full[..., -1], y1, tol(torch.float16, "fwd"))


# small chunks, so that each channel block has many programs (the fused partial sums' arrival counter,
# full and partial chunks for EVEN); dy laid out like x (channel-last), so that CST takes its constant
# row stride; every flag alone and together
_FUSED_CONFIGS = [dict(KIND="streams", BD=32, num_warps=2, NS=2, R=r, CH=ch, FUSE=fu, TAIL=ta, CST=cs, EVEN=ev)
                  for r, ch, fu, ta, cs, ev in [
                      (8, 32, True, False, False, False), (8, 32, False, True, False, False),
                      (8, 32, False, False, True, False), (8, 32, True, True, True, True),
                      (4, 8, True, True, True, True), (8, 32, 2, True, True, True), (4, 8, 2, False, False, False)]] + [
    dict(KIND="rows", BD=32, num_warps=1, R=8, CH=32, PF=False, FUSE=2)] + [
    dict(KIND="rows", BD=32, num_warps=1, R=8, CH=32, PF=False, FUSE=True)]


@pytest.mark.parametrize("W", [2, 4, 8], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("config", _FUSED_CONFIGS, ids=_cfg_id)
def test_bwd_fused_lean_variants(config, W):
    B, D, L = 2, 37, 100
    x, w, b, h0, seq_idx = _variant_inputs(B, D, L, W, torch.float32, seed=W + 7, with_seq=W != 8)
    dy = torch.randn(B, L, D, device=DEVICE).transpose(1, 2)
    dht = torch.randn(B, D, W - 1, device=DEVICE)
    runs = [conv.causal_conv1d_bwd(x, w, b, "silu", h0, seq_idx, dy, dht, True, config=config) for _ in range(2)]
    refs = [t.double().requires_grad_() for t in (x, w, b, h0)]
    y, ht = causal_conv1d_ref(*refs[:3], "silu", refs[3], True, seq_idx)
    grads = torch.autograd.grad((y * dy.double()).sum() + (ht * dht.double()).sum(), refs)
    for name, r, o, o2 in zip(("dx", "dweight", "dbias", "dinitial_states"), grads, *runs):
        assert_close(name, r, o, tol(torch.float32, "grad"))
        assert torch.equal(o, o2), f"{name}: two backward runs differ"


# RESET: the fused partial sums' last program at each arrival counter sets it back to 0, so the launcher keeps
# one zeroed counter buffer per stream (conv._counters) instead of a torch.zeros per call; repeated calls must
# keep giving the same gradients and leave the buffer zeroed (the second call would see stale counts otherwise)
_RESET_CONFIGS = [dict(KIND="streams", BD=32, num_warps=2, NS=2, R=4, CH=8, FUSE=fu, TAIL=True, CST=True, EVEN=True,
                       RESET=True) for fu in (1, 2)] + [
    dict(KIND="rows", BD=32, num_warps=1, R=4, CH=16, PF=True, FUSE=2, RESET=True)]


@pytest.mark.parametrize("config", _RESET_CONFIGS, ids=_cfg_id)
def test_bwd_reset_counters_repeat(config):
    B, D, L, W = 2, 37, 40, 4
    x, w, b, h0, seq_idx = _variant_inputs(B, D, L, W, torch.float32, seed=5, with_seq=True)
    dy = torch.randn(B, L, D, device=DEVICE).transpose(1, 2)
    conv._CNT_CACHE.clear()
    runs = [conv.causal_conv1d_bwd(x, w, b, "silu", h0, seq_idx, dy, None, True, config=config) for _ in range(3)]
    refs = [t.double().requires_grad_() for t in (x, w, b, h0)]
    y = causal_conv1d_ref(*refs[:3], "silu", refs[3], False, seq_idx)
    grads = torch.autograd.grad((y * dy.double()).sum(), refs)
    for name, r, *outs in zip(("dx", "dweight", "dbias", "dinitial_states"), grads, *runs):
        assert_close(name, r, outs[0], tol(torch.float32, "grad"))
        assert all(torch.equal(outs[0], o) for o in outs[1:]), f"{name}: repeated backward runs differ"
    (buf,) = conv._CNT_CACHE.values()
    assert buf.numel() >= cdiv(D, config["BD"]) * (B + 1 if config["FUSE"] == 2 else 1)
    assert int(buf.abs().sum()) == 0, "counters not reset to 0 after the launch"


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["streams_reset", "rows_helper"])
def test_bwd_reset_and_rows_gpu_bf16(which):
    """The session-5 (conv6) variants at a realistic shape in bf16: the default streams config with RESET (eager calls
    on two streams, then replays of a CUDA graph holding two backward calls), and the rows backward (its
    per-row body is _bwd_row2) with fused sums."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, D, L, W = 2, 2304, 4096, 4
    cfg = (dict(conv.BWD_STREAMS_DEFAULT, RESET=True) if which == "streams_reset"
           else dict(KIND="rows", BD=128, num_warps=2, R=8, CH=128, PF=False, FUSE=2, RESET=True))
    x, w, b, _, _ = _variant_inputs(B, D, L, W, torch.bfloat16, seed=3, with_seq=False)
    dy = torch.randn(B, L, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
    call = lambda: conv.causal_conv1d_bwd(x, w, b, "silu", None, None, dy, None, False, config=cfg)  # noqa: E731
    sl = slice(0, 256)
    refs = [t.double().requires_grad_() for t in (x[:, sl], w[sl], b[sl])]
    y = causal_conv1d_ref(*refs, "silu")
    grads = torch.autograd.grad((y * dy[:, sl].double()).sum(), refs)
    first = call()
    for name, r, o in zip(("dx", "dweight", "dbias"), grads, (first[0][:, sl], first[1][sl], first[2][sl])):
        assert_close(name, r, o, tol(torch.bfloat16, "grad"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        other = call()
    torch.cuda.current_stream().wait_stream(side)
    outs = [call(), other]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call()  # warm-up on the capture's side stream
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        c1, c2 = call(), call()
    for _ in range(2):
        g.replay()
        torch.cuda.synchronize()
        outs += [[t.clone() for t in c1[:3]], [t.clone() for t in c2[:3]]]
    for o in outs:
        for name, a, c in zip(("dx", "dweight", "dbias"), first[:3], o[:3]):
            assert torch.equal(a, c), f"{name}: a repeated / other-stream / graph-replayed backward differs"


@pytest.mark.gpu
def test_fast_launch_gpu_matches_normal_launch(monkeypatch):
    """FAST_LAUNCH (direct launcher calls, conv._launch) gives bitwise the normal launch's outputs and gradients,
    for aligned inputs and for an x whose data pointer is not 16-byte aligned (a different specialisation)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    B, D, L, W = 2, 2304, 1024, 4
    x, w, b, _, _ = _variant_inputs(B, D, L, W, torch.bfloat16, seed=4, with_seq=False)
    xm = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:].view(B, L, D).transpose(1, 2)
    xm.copy_(x)
    gy = torch.randn_like(x)

    def run(xx):
        leaves = [t.detach().clone().requires_grad_() for t in (w, b)]
        xx = xx.detach().requires_grad_()
        y = causal_conv1d(xx, *leaves, activation="silu")
        return (y.detach(), *torch.autograd.grad(y, (xx, *leaves), gy))

    ref, ref_m = run(x), run(xm)
    monkeypatch.setattr(conv, "FAST_LAUNCH", True)
    for _ in range(3):
        for name, a, c in zip(("y", "dx", "dweight", "dbias"), ref, run(x)):
            assert torch.equal(a, c), f"{name}: fast launch differs (aligned)"
        for name, a, c in zip(("y", "dx", "dweight", "dbias"), ref_m, run(xm)):
            assert torch.equal(a, c), f"{name}: fast launch differs (misaligned x)"


# UNEVEN (conv9; the row forward): the number of programs along time comes from a wave count (conv._time_programs) or
# NP, and program i of n_p covers [i * L // n_p, (i + 1) * L // n_p) (floor(L / n_p) or one more rows). Awkward lengths
# (chunks of two sizes), every width, fp32 / fp16, seq_idx, initial / final states.
_UNEVEN_FWD = [dict(KIND="rows", BD=32, num_warps=1, R=r, CH=999, PF=pf, UNEVEN=True, NP=n_p)
               for r, pf, n_p in [(4, True, 7), (8, False, 3)]]
_UNEVEN_CASES = [(2, torch.float32, 101, 0), (3, torch.float16, 40, 1), (4, torch.float32, 3, 2), (8, torch.float16, 17, 3)]


@pytest.mark.parametrize("case", _UNEVEN_CASES, ids=lambda c: f"W{c[0]}-{dtype_id(c[1])}-L{c[2]}-cfg{c[3]}")
def test_uneven_chunks(case):
    W, dtype, L, i = case
    B, D = 2, 37
    x, w, b, h0, seq_idx = _variant_inputs(B, D, L, W, dtype, seed=100 + i, with_seq=i % 3 != 2)
    yr, htr = causal_conv1d_ref(x.double(), w.double(), b.double(), "silu", h0.double(), True, seq_idx)
    y, ht = conv.causal_conv1d_fwd(x, w, b, "silu", h0, True, seq_idx, config=_UNEVEN_FWD[i % len(_UNEVEN_FWD)])
    assert_close("y", yr, y, tol(dtype, "fwd"))
    assert_close("final_states", htr, ht, tol(dtype, "fwd"))


def test_uneven_time_programs():
    """The wave-sized program counts at the issue's shape on an H100 (132 SMs), NP, and the clamp to L."""
    x = torch.empty(8, 2304, 8192, device="meta")
    f1, f2 = (c for c in conv._fwd_configs() if c.get("UNEVEN"))
    assert conv._time_programs(x, f1, 8 * 9, 132) == 22 and conv._time_programs(x, f2, 8 * 9, 132) == 44
    assert conv._time_programs(x, f1, 8 * 36, 1) == 1  # pairs > one wave: one program along time
    assert conv._time_programs(x, dict(f1, NP=5), 8 * 9) == 5
    assert conv._time_programs(torch.empty(1, 4, 3, device="meta"), dict(f1, NP=5), 1) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["fwd_w1", "fwd_w2", "bwd_ch1024", "bwd_notail"])
def test_conv9_waves_gpu_bf16(which):
    """The conv9 wave-sized variants at a realistic shape in bf16 against the float64 reference (first 256 channels),
    the backward twice (bitwise equal: the fused partial sums stay deterministic)."""
    B, D, L, W = 2, 2304, 4096, 4
    fw = [c for c in conv._fwd_configs() if c.get("UNEVEN")]
    cfg = {"fwd_w1": fw[0], "fwd_w2": fw[1], "bwd_ch1024": dict(conv.BWD_STREAMS_DEFAULT, CH=1024),
           "bwd_notail": dict(conv.BWD_STREAMS_DEFAULT, TAIL=False, EVEN=False)}[which]
    x, w, b, _, _ = _variant_inputs(B, D, L, W, torch.bfloat16, seed=9, with_seq=False)
    dy = torch.randn(B, L, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
    sl = slice(0, 256)
    refs = [t.double().requires_grad_() for t in (x[:, sl], w[sl], b[sl])]
    yr = causal_conv1d_ref(*refs, "silu")
    if which.startswith("fwd"):
        y, _ = conv.causal_conv1d_fwd(x, w, b, "silu", config=cfg)
        assert_close("y", yr, y[:, sl], tol(torch.bfloat16, "fwd"))
        return
    grads = torch.autograd.grad((yr * dy[:, sl].double()).sum(), refs)
    runs = [conv.causal_conv1d_bwd(x, w, b, "silu", None, None, dy, None, False, config=cfg) for _ in range(2)]
    for name, r, o, o2 in zip(("dx", "dweight", "dbias"), grads, runs[0][:3], runs[1][:3]):
        assert_close(name, r, o[:, sl] if o.dim() == 3 else o[sl], tol(torch.bfloat16, "grad"))
        assert torch.equal(o, o2), f"{name}: two backward runs differ"
