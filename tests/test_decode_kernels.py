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
CONFIGS = [None, (4, 16, 4), (16, 256, 8), "persist"]  # default heuristic, a tiny tile (many K steps), a
# wide one, and persistent programs over one-K-tile row blocks (4 programs on CPU: several blocks each)


def _rand(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def _d(t):
    return None if t is None else t.double()


def _cfg_id(c):
    return "heur" if c is None else c if isinstance(c, str) else "BN{}-BK{}-w{}".format(*c)


@pytest.mark.parametrize("config", CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("mode", ["plain", "norm", "gated", "residual", "swiglu"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-K{}-N{}".format(*s))
def test_decode_gemv(shape, dtype, mode, config, monkeypatch):
    torch.manual_seed(0)
    if config == "persist":
        monkeypatch.setenv("HYBRIDNA_GEMV_PERSIST", "1")
        config = (4, 2048, 4)
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
def test_decode_gemv_conv(shape, dtype, width, monkeypatch):
    """in_proj + conv step: rows [c0, c0 + C) convolved with SiLU, the state shifted in place."""
    torch.manual_seed(1)
    B, K, N, c0, C = shape
    a, w = _rand(B, K, dtype=dtype, scale=2.0), _rand(N, K, dtype=dtype, scale=K ** -0.5)
    nw = _rand(K, dtype=dtype) + 1
    cw, cb = _rand(C, width, dtype=dtype, scale=0.5), _rand(C, dtype=dtype)
    st = _rand(B, C, width - 1, dtype=dtype)
    st_ref = st.double()
    monkeypatch.setenv("HYBRIDNA_GEMV_PERSIST", "1")  # one-K-tile shapes: persistent programs
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
def test_decode_gemv_kv(dtype, monkeypatch):
    """qkv_proj: q returned, K and V written into the caches at each row's own position."""
    torch.manual_seed(2)
    B, K, hq, hkv, hd, T = 3, 48, 4, 2, 16, 11
    N = (hq + 2 * hkv) * hd
    a, w = _rand(B, K, dtype=dtype), _rand(N, K, dtype=dtype, scale=K ** -0.5)
    nw = _rand(K, dtype=dtype) + 1
    kc, vc = _rand(B, T, hkv, hd, dtype=dtype), _rand(B, T, hkv, hd, dtype=dtype)
    pos = torch.tensor([0, 5, 10], device=DEVICE)
    kr, vr = kc.double(), vc.double()
    kc0, vc0 = kc.clone(), vc.clone()
    q = decode_gemv(a, w, norm_weight=nw, kv=(kc, vc, pos, hq * hd), config=(8, 16, 4))
    qr = decode_gemv_ref(a.double(), w.double(), norm_weight=nw.double(), kv=(kr, vr, pos, hq * hd))
    assert_close("gemv-kv-q", qr, q, tol(dtype, "fwd"))
    assert_close("gemv-kv-k", kr, kc, tol(dtype, "fwd"))
    assert_close("gemv-kv-v", vr, vc, tol(dtype, "fwd"))
    monkeypatch.setenv("HYBRIDNA_GEMV_PERSIST", "1")
    kc2, vc2 = kc0.clone(), vc0.clone()
    q2 = decode_gemv(a, w, norm_weight=nw, kv=(kc2, vc2, pos, hq * hd), config=(4, 64, 4))  # 8 blocks each
    assert_close("gemv-kv-q-persist", qr, q2, tol(dtype, "fwd"))
    assert_close("gemv-kv-k-persist", kr, kc2, tol(dtype, "fwd"))
    assert_close("gemv-kv-v-persist", vr, vc2, tol(dtype, "fwd"))


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


def _sample(logits, T=4, t=0, **kw):
    from hybridna_kernels.decode import sample_step

    B, V = logits.shape
    ban = torch.zeros(V, dtype=torch.uint8, device=DEVICE)
    for i in kw.pop("banned", ()):
        ban[i] = 1
    tok = torch.full((B,), -5, dtype=torch.long, device=DEVICE)
    hist = torch.full((B, T), -7, dtype=torch.long, device=DEVICE)
    done = kw.pop("done", torch.zeros(B, dtype=torch.uint8, device=DEVICE))
    pos = torch.tensor([100 + t], device=DEVICE)
    sample_step(logits, ban, tok, hist, done, pos, 100, pad_id=0, **kw)
    return tok, hist, done


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
def test_sample_step_greedy_forced_eos(dtype):
    """Greedy = argmax over the non-suppressed ids; the token lands in tok and hist[:, t] only;
    forced tokens override; finished rows get pad; eos marks a row done; the raw logits are saved."""
    torch.manual_seed(4)
    B, V, T = 5, 13, 6
    logits = torch.randn(B, V + 3, device=DEVICE).to(dtype)[:, :V]  # a row-strided view, like the head's
    ref = logits.float().clone()
    ref[:, [0, 2]] = float("-inf")
    lh = torch.full((B, T, V), float("nan"), dtype=dtype, device=DEVICE)
    tok, hist, done = _sample(logits, T, t=2, temperature=0, banned=[0, 2], logits_hist=lh)
    want = ref.argmax(-1)
    assert torch.equal(tok, want) and torch.equal(hist[:, 2], want)
    assert bool((hist[:, [0, 1, 3, 4, 5]] == -7).all()) and torch.equal(done, torch.zeros_like(done))
    assert torch.equal(lh[:, 2], logits) and bool(lh[:, 3].isnan().all())
    forced = torch.arange(B * T, device=DEVICE).reshape(B, T) % V
    d0 = torch.tensor([0, 1, 0, 0, 0], dtype=torch.uint8, device=DEVICE)
    eos = int(forced[3, 2])
    tok, hist, done = _sample(logits, T, t=2, temperature=0.7, forced=forced, done=d0.clone(), eos_token_id=eos)
    want = forced[:, 2].clone()
    want[1] = 0
    assert torch.equal(tok, want) and torch.equal(hist[:, 2], want)
    assert done.tolist() == [int(want[b] == eos) or int(d0[b]) for b in range(B)] and done[3] == 1


def test_sample_step_distribution():
    """temperature sampling draws from softmax(logits / T) without the suppressed ids: frequencies
    over 768 rows within 5 sigma of the probabilities; the same seed and step give the same
    tokens, another step or seed others."""
    torch.manual_seed(5)
    V, B, temp = 9, 768, 0.8
    row = torch.randn(V, device=DEVICE) * 1.5
    logits = row.expand(B, V).contiguous()
    tok, _, _ = _sample(logits, temperature=temp, seed=11, banned=[3])
    p = torch.softmax(torch.cat([row[:3], row[4:]]).double() / temp, 0)
    p = torch.cat([p[:3], p.new_zeros(1), p[3:]]).cpu()
    freq = torch.bincount(tok.cpu(), minlength=V).double() / B
    sigma = (p * (1 - p) / B).sqrt()
    assert freq[3] == 0 and bool(((freq - p).abs() <= 5 * sigma + 1e-12).all()), (freq, p)
    lg = logits[:64]
    tok = tok[:64]
    again, _, _ = _sample(lg, temperature=temp, seed=11, banned=[3])
    other, _, _ = _sample(lg, t=1, temperature=temp, seed=11, banned=[3])
    other2, _, _ = _sample(lg, temperature=temp, seed=12, banned=[3])
    assert torch.equal(tok, again) and not torch.equal(tok, other) and not torch.equal(tok, other2)


@pytest.mark.gpu
def test_gpu_pdl_chain(monkeypatch):
    """Programmatic dependent launch: a chain of dependent decode kernels (each reads the previous
    output; the conv state and the K/V cache updated in place), eager and replayed from a CUDA
    graph, gives bit for bit what it gives without PDL."""
    import hybridna_kernels.decode.gemv as gm

    torch.manual_seed(6)
    dt = torch.bfloat16
    d, F, C = 1024, 2048, 2304
    w_in, w_gu = _rand(C + 100, d, dtype=dt, scale=0.03), _rand(2 * F, d, dtype=dt, scale=0.03)
    w_dn, w_qkv = _rand(d, F, dtype=dt, scale=0.02), _rand(1536, d, dtype=dt, scale=0.03)
    nw, cw, cb = _rand(d, dtype=dt) + 1, _rand(C, 4, dtype=dt, scale=0.5), _rand(C, dtype=dt)
    x0 = _rand(1, d, dtype=dt)
    pos = torch.tensor([7], device=DEVICE)

    def chain(st, kc, vc):
        x = x0
        outs = []
        for _ in range(4):
            h = decode_gemv(x, w_in, norm_weight=nw, conv=(st, cw, cb, 50))
            a = decode_gemv(x, w_gu, norm_weight=nw, swiglu=True)
            x = decode_gemv(a + h[:, :F], w_dn, residual=x)
            q = decode_gemv(x, w_qkv, norm_weight=nw, kv=(kc, vc, pos, 1024))
            o = attention_step(q.view(1, 16, 64), kc, vc, pos)
            x = decode_gemv(o.reshape(1, -1), w_dn[:, :1024].contiguous(), residual=x)
            outs.append(x)
        return torch.cat(outs)

    res = {}
    for pdl in (False, True):
        monkeypatch.setattr(gm, "PDL", pdl)
        st = torch.zeros(1, C, 3, dtype=dt, device=DEVICE)
        kc = torch.zeros(1, 16, 4, 64, dtype=dt, device=DEVICE)
        vc = torch.zeros_like(kc)
        eager = chain(st, kc, vc)
        st.zero_(), kc.zero_(), vc.zero_()
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
            out = chain(st, kc, vc)
        torch.cuda.current_stream().wait_stream(s)
        st.zero_(), kc.zero_(), vc.zero_()
        g.replay()
        torch.cuda.synchronize()
        res[pdl] = (eager, out.clone(), st.clone(), kc.clone())
        assert torch.equal(eager, out)
    for a, b in zip(res[False], res[True]):
        assert torch.equal(a, b)
