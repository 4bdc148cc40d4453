"""Decode kernels (hybridna_kernels.decode): the fused GEMV in every prologue / epilogue mode and the
attention step with a device-side cache length, against the fp64 references of naive.py.

CPU runs the kernels through the interpreter in fp32 and fp16; bf16 runs on the GPU only. Outputs
are NaN-poisoned (conftest), so an element a kernel forgets to write fails; in-place state (the conv
state, the K/V caches) is compared too, untouched parts included."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, KERNEL_DTYPES, assert_close, dtype_id, tol

from hybridna_kernels.decode import attention_step, attention_step_ref, decode_gemv, decode_gemv_ref

# (B, K, N): K below / above one BK tile and not a power of two, N not a multiple of any BN.
SHAPES = [(1, 64, 45), (3, 37, 20), (1, 1100, 70), (2, 300, 9)]
CONFIGS = [None, (4, 16, 4), (16, 256, 8)]  # default heuristic, a tiny tile (many K steps), a wide one


def _rand(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def _d(t):
    return None if t is None else t.double()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "heur" if c is None else "BN{}-BK{}-w{}".format(*c))
@pytest.mark.parametrize("mode", ["plain", "norm", "gated", "residual", "swiglu"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-K{}-N{}".format(*s))
def test_decode_gemv(shape, dtype, mode, config):
    torch.manual_seed(0)
    B, K, N = shape
    a = _rand(B, K, dtype=dtype, scale=2.0)
    w = _rand(2 * N if mode == "swiglu" else N, K, dtype=dtype, scale=K ** -0.5)
    kw = {}
    if mode in ("norm", "gated", "swiglu", "residual"):
        kw["norm_weight"] = _rand(K, dtype=dtype) + 1
    if mode == "gated":
        kw["z"] = _rand(B, K, dtype=dtype)
        kw["group_size"] = next(g for g in (K // 4, K // 2, K) if g and K % g == 0 and g * 4 >= K)
    if mode == "residual":
        kw["residual"] = _rand(B, N, dtype=dtype)
    if mode == "swiglu":
        kw["swiglu"] = True
    out = decode_gemv(a, w, eps=1e-5, config=config, **kw)
    ref = decode_gemv_ref(_d(a), _d(w), eps=1e-5, **{k: _d(v) if isinstance(v, torch.Tensor) else v
                                                    for k, v in kw.items()})
    assert out.dtype == dtype
    assert_close(f"gemv-{mode}", ref, out, tol(dtype, "fwd"))


@pytest.mark.parametrize("width", [4, 3])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 64, 45, 7, 30), (2, 37, 60, 0, 60), (1, 130, 300, 100, 150)],
                         ids=lambda s: "B{}-K{}-N{}-c{}+{}".format(*s))
def test_decode_gemv_conv(shape, dtype, width):
    """in_proj + conv step: rows [c0, c0 + C) convolved with SiLU, the state shifted in place."""
    torch.manual_seed(1)
    B, K, N, c0, C = shape
    a, w = _rand(B, K, dtype=dtype, scale=2.0), _rand(N, K, dtype=dtype, scale=K ** -0.5)
    nw = _rand(K, dtype=dtype) + 1
    cw, cb = _rand(C, width, dtype=dtype, scale=0.5), _rand(C, dtype=dtype)
    st = _rand(B, C, width - 1, dtype=dtype)
    st_ref = st.double()
    out = decode_gemv(a, w, norm_weight=nw, conv=(st, cw, cb, c0), config=(8, 32, 4))
    ref = decode_gemv_ref(a.double(), w.double(), norm_weight=nw.double(),
                          conv=(st_ref, cw.double(), cb.double(), c0))
    assert_close("gemv-conv-out", ref, out, tol(dtype, "fwd"))
    assert_close("gemv-conv-state", st_ref, st, tol(dtype, "fwd"))
    out2 = decode_gemv(a, w, conv=(st, cw, None, c0))  # second step, no bias, no norm
    ref2 = decode_gemv_ref(a.double(), w.double(), conv=(st_ref, cw.double(), None, c0))
    assert_close("gemv-conv-out2", ref2, out2, tol(dtype, "fwd"))
    assert_close("gemv-conv-state2", st_ref, st, tol(dtype, "fwd"))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
def test_decode_gemv_kv(dtype):
    """qkv_proj: q returned, K and V written into the caches at each row's own position."""
    torch.manual_seed(2)
    B, K, hq, hkv, hd, T = 3, 48, 4, 2, 16, 11
    N = (hq + 2 * hkv) * hd
    a, w = _rand(B, K, dtype=dtype), _rand(N, K, dtype=dtype, scale=K ** -0.5)
    nw = _rand(K, dtype=dtype) + 1
    kc, vc = _rand(B, T, hkv, hd, dtype=dtype), _rand(B, T, hkv, hd, dtype=dtype)
    pos = torch.tensor([0, 5, 10], device=DEVICE)
    kr, vr = kc.double(), vc.double()
    q = decode_gemv(a, w, norm_weight=nw, kv=(kc, vc, pos, hq * hd), config=(8, 16, 4))
    qr = decode_gemv_ref(a.double(), w.double(), norm_weight=nw.double(), kv=(kr, vr, pos, hq * hd))
    assert_close("gemv-kv-q", qr, q, tol(dtype, "fwd"))
    assert_close("gemv-kv-k", kr, kc, tol(dtype, "fwd"))
    assert_close("gemv-kv-v", vr, vc, tol(dtype, "fwd"))


@pytest.mark.parametrize("window", [None, 5, 300])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 4, 1, 32, 70), (2, 4, 2, 64, 300), (3, 8, 2, 40, 1500)],
                         ids=lambda s: "B{}-Hq{}-Hkv{}-D{}-T{}".format(*s))
def test_attention_step(shape, dtype, window):
    """Each row over keys 0 .. pos[b] of a cache of capacity T (keys beyond pos are garbage), with
    several slices (some empty: pos far below T)."""
    torch.manual_seed(3)
    B, Hq, Hkv, D, T = shape
    q = _rand(B, Hq, D, dtype=dtype)
    kc, vc = _rand(B, T, Hkv, D, dtype=dtype), _rand(B, T, Hkv, D, dtype=dtype)
    pos = torch.tensor([T - 1, 0, T // 3][:B], device=DEVICE)
    for n_splits in (None, 3):
        o = attention_step(q, kc, vc, pos, window=window, n_splits=n_splits, BN=16 if T < 1000 else 64)
        ref = attention_step_ref(q.double(), kc.double(), vc.double(), pos, window=window)
        assert o.dtype == dtype
        assert_close(f"attention-step-{n_splits}", ref, o, tol(dtype, "fwd"))
