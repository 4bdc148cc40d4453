"""Triton causal depthwise conv1d: forward and backward kernels, launchers, autograd Function.

Maths and the seq_idx / state conventions: README.md. Work partition: one program per
(time tile, channel block, batch row); the width - 1 halo is re-read through L1/L2 by shifted masked
loads (one per tap), so HBM sees each input once. Strides are kernel arguments: Triton specialises a
stride equal to 1, so channel-last (x.stride(1) == 1) and channel-first layouts both get coalesced
accesses without copies. Addresses are int64.

Backward: one pass. Each program recomputes u = w * x (+ bias) at the W shifted times it needs
(a (W, BT, BD) block built from 2W - 1 shifted loads of x), forms du = dy * act'(u), and writes
dx = (flipped w) * du. dweight / dbias are reduced per program over a fixed time chunk into an fp32
partial buffer and summed afterwards in a fixed order (deterministic; no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import cdiv, new_empty

__all__ = ["causal_conv1d_fn", "causal_conv1d_fwd", "causal_conv1d_bwd"]


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W: tl.constexpr, HAS_H0: tl.constexpr):
    """x at times tt (any int vector, may be negative) for the channels of p_x: x for 0 <= tt < L,
    initial_states for -(W-1) <= tt < 0 (zero without them), zero elsewhere. Shape (len(tt), BD)."""
    m_x = (tt >= 0) & (tt < L)
    b_x = tl.load(p_x + tt.to(tl.int64)[:, None] * sxt, mask=m_x[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    if HAS_H0:
        m_h = (tt < 0) & (tt >= -(W - 1))
        t_h = tl.where(m_h, tt + (W - 1), 0).to(tl.int64)
        b_x += tl.load(p_h0 + t_h[:, None] * shk, mask=m_h[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    return b_x


@triton.jit
def _conv1d_fwd_kernel(
    X, WT, BIAS, H0, SEQ, Y, HT,
    L, D,
    sxb, sxd, sxt, swd, swk, syb, syd, syt, shb, shd, shk, ssb, sst, stb, std, stk,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, STORE_HT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < L, o_d < D
    p_x = X + i_b * sxb + o_d.to(tl.int64)[None, :] * sxd
    p_h0 = H0 + i_b * shb + o_d.to(tl.int64)[None, :] * shd
    if HAS_SEQ:
        p_s = SEQ + i_b * ssb
        b_s = tl.load(p_s + o_t.to(tl.int64) * sst, mask=m_t, other=0)

    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for k in tl.static_range(W):
        tt = o_t - (W - 1) + k
        b_x = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
        b_w = tl.load(WT + o_d.to(tl.int64) * swd + k * swk, mask=m_d, other=0.0).to(tl.float32)
        if HAS_SEQ:
            # times before 0 belong to the first segment: clamp the lookup to t = 0
            b_st = tl.load(p_s + tl.maximum(tt, 0).to(tl.int64) * sst, mask=m_t, other=0)
            b_x = tl.where((b_st == b_s)[:, None], b_x, 0.0)
        acc += b_w[None, :] * b_x
    if HAS_BIAS:
        acc += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    p_y = Y + i_b * syb + o_d.to(tl.int64)[None, :] * syd + o_t.to(tl.int64)[:, None] * syt
    tl.store(p_y, acc.to(Y.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])

    if STORE_HT:
        # the program holding the last time tile writes the last W - 1 inputs (final_states)
        if (i_t + 1) * BT >= L:
            o_j = tl.arange(0, WP)
            tt = L - (W - 1) + o_j
            b_h = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
            if HAS_SEQ:
                b_last = tl.load(p_s + (L - 1) * sst)
                b_st = tl.load(p_s + tl.maximum(tt, 0).to(tl.int64) * sst, mask=o_j < W - 1, other=0)
                b_h = tl.where((b_st == b_last)[:, None], b_h, 0.0)
            p_ht = HT + i_b * stb + o_d.to(tl.int64)[None, :] * std + o_j.to(tl.int64)[:, None] * stk
            tl.store(p_ht, b_h.to(HT.dtype.element_ty), mask=(o_j < W - 1)[:, None] & m_d[None, :])


@triton.jit
def _conv1d_bwd_tile(
    X, WT, BIAS, H0, SEQ, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_t, o_d, m_d, L,
    sxt, swd, swk, shk, sdt, sst, sgk,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, WITH_DW: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    """dx at times o_t (negative times are initial_states' positions), and when WITH_DW the tile's
    du (at times o_t) with the W input taps of each time, for dweight / dbias."""
    o_j = tl.arange(0, WP)
    m_j = o_j < W
    # u and du at times tau[j, t] = o_t[t] + j: the outputs whose tap W - 1 - j reads x at o_t
    tau = o_t[None, :] + o_j[:, None]  # (WP, BT)
    m_tau = (tau >= 0) & (tau < L) & m_j[:, None]
    tau_c = tl.where(m_tau, tau, 0).to(tl.int64)
    m3 = m_tau[:, :, None] & m_d[None, None, :]
    b_du = tl.load(p_dy[None, :, :] + tau_c[:, :, None] * sdt, mask=m3, other=0.0).to(tl.float32)
    if HAS_SEQ:
        b_s_tau = tl.load(p_s + tau_c * sst, mask=m_tau, other=-1)  # (WP, BT)
    if SILU:
        b_u = tl.zeros([WP, BT, BD], dtype=tl.float32)
        if HAS_BIAS:
            b_u += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)[None, None, :]
        for r in tl.static_range(2 * W - 1):
            tt = o_t + (r - (W - 1))  # x times o_t + j + k - (W - 1) for k = r - j
            b_x = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
            o_k = r - o_j
            m_k = (o_k >= 0) & (o_k < W)
            b_w = tl.load(WT + o_d.to(tl.int64)[None, :] * swd + tl.where(m_k, o_k, 0)[:, None] * swk,
                          mask=m_k[:, None] & m_d[None, :], other=0.0).to(tl.float32)  # (WP, BD)
            contrib = b_w[:, None, :] * b_x[None, :, :]
            if HAS_SEQ:
                b_st = tl.load(p_s + tl.maximum(tt, 0).to(tl.int64) * sst, mask=tt < L, other=-2)
                contrib = tl.where((b_st[None, :] == b_s_tau)[:, :, None], contrib, 0.0)
            b_u += contrib
        b_sig = 1.0 / (1.0 + tl.exp(-b_u))
        b_du = b_du * b_sig * (1.0 + b_u * (1.0 - b_sig))
    # dx[t] = sum_j w[W - 1 - j] * du[t + j], no tap across a segment boundary
    o_kf = W - 1 - o_j
    b_wf = tl.load(WT + o_d.to(tl.int64)[None, :] * swd + tl.where(m_j, o_kf, 0)[:, None] * swk,
                   mask=m_j[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    b_dxs = b_wf[:, None, :] * b_du
    if HAS_SEQ:
        b_s_t = tl.load(p_s + tl.maximum(o_t, 0).to(tl.int64) * sst, mask=o_t < L, other=-3)
        b_dxs = tl.where((b_s_t[None, :] == b_s_tau)[:, :, None], b_dxs, 0.0)
    b_dx = tl.sum(b_dxs, axis=0)
    if HAS_GH:
        # final_states[j] = x at time L - (W - 1) + j: its gradient lands on that input
        jj = o_t - (L - (W - 1))
        m_g = (jj >= 0) & (jj < W - 1)
        b_gh = tl.load(p_gh + tl.where(m_g, jj, 0).to(tl.int64)[:, None] * sgk,
                       mask=m_g[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            b_last = tl.load(p_s + (L - 1) * sst)
            b_s_g = tl.load(p_s + tl.maximum(o_t, 0).to(tl.int64) * sst, mask=o_t < L, other=-4)
            b_gh = tl.where((b_s_g == b_last)[:, None], b_gh, 0.0)
        b_dx += b_gh
    b_du0 = tl.sum(tl.where((o_j == 0)[:, None, None], b_du, 0.0), axis=0)  # du at times o_t
    b_dw = tl.zeros([WP, BD], dtype=tl.float32)
    if WITH_DW:
        # dw[k] += sum_t du[t] * x[t - (W - 1) + k]
        tk = o_t[None, :] + o_j[:, None] - (W - 1)  # (WP, BT)
        m_x = (tk >= 0) & (tk < L) & m_j[:, None]
        b_x3 = tl.load(p_x[None, :, :] + tl.where(m_x, tk, 0).to(tl.int64)[:, :, None] * sxt,
                       mask=m_x[:, :, None] & m_d[None, None, :], other=0.0).to(tl.float32)
        if HAS_H0:
            m_h = (tk < 0) & m_j[:, None]
            b_x3 += tl.load(p_h0[None, :, :] + tl.where(m_h, tk + (W - 1), 0).to(tl.int64)[:, :, None] * shk,
                            mask=m_h[:, :, None] & m_d[None, None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            b_s_t0 = tl.load(p_s + tl.maximum(o_t, 0).to(tl.int64) * sst, mask=o_t < L, other=-5)
            b_s_k = tl.load(p_s + tl.maximum(tk, 0).to(tl.int64) * sst, mask=tk < L, other=-6)
            b_x3 = tl.where((b_s_k == b_s_t0[None, :])[:, :, None], b_x3, 0.0)
        b_dw = tl.sum(b_x3 * b_du0[None, :, :], axis=1)
    return b_dx, b_du0, b_dw


@triton.jit
def _conv1d_bwd_kernel(
    X, WT, BIAS, H0, SEQ, DY, GH, DX, DH0, DWP, DBP,
    L, D, CH,
    sxb, sxd, sxt, swd, swk, shb, shd, shk, ssb, sst, sdb, sdd, sdt, sgb, sgd, sgk,
    sxgb, sxgd, sxgt, shgb, shgd, shgk,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, STORE_DH0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    i_c, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)[None, :]
    p_x = X + i_b * sxb + o_d64 * sxd
    p_h0 = H0 + i_b * shb + o_d64 * shd
    p_dy = DY + i_b * sdb + o_d64 * sdd
    p_gh = GH + i_b * sgb + o_d64 * sgd
    p_s = SEQ + i_b * ssb
    p_dx = DX + i_b * sxgb + o_d64 * sxgd

    b_dw = tl.zeros([WP, BD], dtype=tl.float32)
    b_db = tl.zeros([BD], dtype=tl.float32)
    t_end = tl.minimum(i_c * CH + CH, L)
    for t0 in range(i_c * CH, t_end, BT):
        o_t = t0 + tl.arange(0, BT)
        m_t = o_t < t_end
        b_dx, b_du0, b_dwt = _conv1d_bwd_tile(
            X, WT, BIAS, H0, SEQ, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_t, o_d, m_d, L,
            sxt, swd, swk, shk, sdt, sst, sgk,
            W, WP, SILU, HAS_BIAS, HAS_H0, HAS_SEQ, HAS_GH, True, BT, BD)
        tl.store(p_dx + o_t.to(tl.int64)[:, None] * sxgt, b_dx.to(DX.dtype.element_ty),
                 mask=m_t[:, None] & m_d[None, :])
        b_dw += b_dwt
        b_db += tl.sum(b_du0, axis=0)  # du is zero at times >= L (dy is masked there)
    o_j = tl.arange(0, WP)
    row = i_b * tl.num_programs(0) + i_c
    tl.store(DWP + row * W * D + o_j.to(tl.int64)[:, None] * D + o_d64, b_dw,
             mask=(o_j < W)[:, None] & m_d[None, :])
    tl.store(DBP + row * D + o_d, b_db, mask=m_d)

    if STORE_DH0:
        if i_c == 0:
            o_t = o_j - (W - 1)  # times -(W-1) .. -1 (WP >= W - 1 rows, the rest masked)
            b_dh, b_du0, b_dwt = _conv1d_bwd_tile(
                X, WT, BIAS, H0, SEQ, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_t, o_d, m_d, L,
                sxt, swd, swk, shk, sdt, sst, sgk,
                W, WP, SILU, HAS_BIAS, HAS_H0, HAS_SEQ, HAS_GH, False, WP, BD)
            p_dh = DH0 + i_b * shgb + o_d64 * shgd + tl.where(o_t < 0, o_j, 0).to(tl.int64)[:, None] * shgk
            tl.store(p_dh, b_dh.to(DH0.dtype.element_ty), mask=(o_t < 0)[:, None] & m_d[None, :])


def _fwd_configs():
    """Tile configs the benchmark sweeps (bench/bench_conv1d.py --sweep)."""
    return [triton.Config({"BT": bt, "BD": bd}, num_warps=nw) for bt, bd, nw in [
        (64, 128, 4), (32, 128, 4), (64, 128, 8), (128, 64, 4), (16, 256, 4), (32, 256, 8),
        (128, 128, 8), (256, 32, 4), (64, 64, 4)]]


def _bwd_configs():
    return [triton.Config({"BT": bt, "BD": bd}, num_warps=nw) for bt, bd, nw in [
        (32, 64, 4), (16, 128, 4), (32, 128, 8), (64, 64, 8), (16, 64, 4), (8, 256, 4), (64, 128, 8)]]


# Fixed tile choices instead of autotuning: first-call tuning would cost ~20 compiles per key, and
# the best tiles depend on layout and width only (bench/RESULTS.md has the sweep).
def _fwd_config(x, W):
    if x.stride(2) == 1 and x.shape[2] > 1:  # time-contiguous (channel-first): long rows along t
        return dict(BT=128, BD=32, num_warps=4)
    return dict(BT=64, BD=128, num_warps=4)


def _bwd_config(x, W):
    if x.stride(2) == 1 and x.shape[2] > 1:
        return dict(BT=64, BD=16, num_warps=4)
    return dict(BT=32, BD=64, num_warps=4)


def _layout_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """New (B, D, L) output with x's memory order for the two dense layouts (channel-last or not)."""
    B, D, L = x.shape
    if x.stride(1) == 1 and L > 1 and D > 1:
        return new_empty((B, L, D), dtype=dtype, device=x.device).transpose(1, 2)
    return new_empty((B, D, L), dtype=dtype, device=x.device)


def _strides3(t, n=3):
    return tuple(t.stride()) if t is not None else (0,) * n


def causal_conv1d_fwd(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                      seq_idx=None, config=None):
    """Launch the forward kernel. Shapes as in causal_conv1d. Returns (y, final_states or None).
    config: optional dict(BT=, BD=, num_warps=) to bypass autotuning (benchmarks)."""
    B, D, L = x.shape
    W = weight.shape[1]
    y = _layout_like(x, x.dtype)
    ht = new_empty((B, D, W - 1), dtype=x.dtype, device=x.device) if return_final_states else None
    dummy = x
    args = (
        x, weight, bias if bias is not None else dummy, initial_states if initial_states is not None else dummy,
        seq_idx if seq_idx is not None else dummy, y, ht if ht is not None else dummy,
        L, D, *x.stride(), *weight.stride(), *y.stride(), *_strides3(initial_states),
        *(_strides3(seq_idx, 2) if seq_idx is not None else (0, 0)), *_strides3(ht),
    )
    flags = dict(W=W, WP=_pow2(W), SILU=activation == "silu", HAS_BIAS=bias is not None,
                 HAS_H0=initial_states is not None, HAS_SEQ=seq_idx is not None, STORE_HT=ht is not None)
    cfg = config or _fwd_config(x, W)
    grid = (cdiv(L, cfg["BT"]), cdiv(D, cfg["BD"]), B)
    _conv1d_fwd_kernel[grid](*args, **flags, BT=cfg["BT"], BD=cfg["BD"], num_warps=cfg.get("num_warps", 4))
    return y, ht


def _chunk_len(L: int, B: int, D: int) -> int:
    """Time per backward program (dweight partial rows = B * cdiv(L, CH)); a multiple of every BT."""
    ch = 1024
    # keep >= ~4 waves of programs on 132 SMs for short inputs
    while ch > 64 and B * cdiv(D, 128) * cdiv(L, ch) < 528:
        ch //= 2
    return ch


def causal_conv1d_bwd(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0, config=None):
    """Launch the backward kernel. Returns (dx, dweight, dbias or None, dinitial_states or None)."""
    B, D, L = x.shape
    W = weight.shape[1]
    cfg = config or _bwd_config(x, W)
    CH = max(_chunk_len(L, B, D), cfg["BT"])
    n_c = cdiv(L, CH)
    dx = _layout_like(x, x.dtype)
    dh0 = new_empty(initial_states.shape, dtype=initial_states.dtype, device=x.device) if need_dh0 else None
    dwp = new_empty((B * n_c, W, D), dtype=torch.float32, device=x.device)
    dbp = new_empty((B * n_c, D), dtype=torch.float32, device=x.device)
    dummy = x
    args = (
        x, weight, bias if bias is not None else dummy, initial_states if initial_states is not None else dummy,
        seq_idx if seq_idx is not None else dummy, dy, dht if dht is not None else dummy, dx,
        dh0 if dh0 is not None else dummy, dwp, dbp,
        L, D, CH, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *(tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)), *dy.stride(), *_strides3(dht),
        *dx.stride(), *_strides3(dh0),
    )
    flags = dict(W=W, WP=_pow2(W), SILU=activation == "silu", HAS_BIAS=bias is not None,
                 HAS_H0=initial_states is not None, HAS_SEQ=seq_idx is not None, HAS_GH=dht is not None,
                 STORE_DH0=dh0 is not None)
    grid = (n_c, cdiv(D, cfg["BD"]), B)
    _conv1d_bwd_kernel[grid](*args, **flags, BT=cfg["BT"], BD=cfg["BD"], num_warps=cfg.get("num_warps", 4))
    # fixed-order reduction of the per-program partials: deterministic
    dw = dwp.sum(0).t().to(weight.dtype)
    db = dbp.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dw, db, dh0


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation, initial_states, return_final_states, seq_idx):
        y, ht = causal_conv1d_fwd(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
        ctx.save_for_backward(x, weight, bias, initial_states, seq_idx)
        ctx.activation = activation
        if ht is not None:
            return y, ht
        return y

    @staticmethod
    def backward(ctx, dy, dht=None):
        x, weight, bias, initial_states, seq_idx = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, dw, db, dh0 = causal_conv1d_bwd(
            x, weight, bias, ctx.activation, initial_states, seq_idx, dy, dht,
            need_dh0=initial_states is not None and ctx.needs_input_grad[4])
        return dx, dw, db, None, dh0, None, None


def causal_conv1d_fn(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                     seq_idx=None):
    """Differentiable kernel path of causal_conv1d (inputs already validated)."""
    return _CausalConv1dFn.apply(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
