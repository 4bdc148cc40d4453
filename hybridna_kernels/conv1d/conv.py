"""Triton causal depthwise conv1d: forward and backward kernels, launchers, autograd Function, and
torch.library ops for torch.compile.

Kernel families, picked per call by a config dict (KIND): "rows" (the forward default unless time is
the contiguous dimension) walks a chunk of time one row at a time, each thread owning a few adjacent
channels and carrying the last W - 1 inputs (and du rows, in the backward) in registers: one load per
input element, one store per output element, no shifted re-reads, dweight / dbias summed in registers
per program. "streams" (the backward default, same layouts): the same walk over NS chunks per program,
one warp each, dweight / dbias also summed across the NS warps. "tile" (below; the default for
channel-first inputs, whose rows are not contiguous):

Maths and the seq_idx / state conventions: README.md. Work partition: one program per
(time tile, channel block, batch row); the width - 1 halo is re-read through L1/L2 by shifted masked
loads (one per tap), so HBM sees each input once. Strides are kernel arguments: Triton specialises a
stride equal to 1, so channel-last (x.stride(1) == 1) and channel-first layouts both get coalesced
accesses without copies. Addresses are int64.

Backward: one pass over x and dy, one program per (time chunk, channel block, batch row) looping
over BT-row tiles. With SiLU, du at the W times t + j that dx[t] needs is rebuilt either from 2W - 1
shifted loads of x shared by all j (SHARE) or from a per-program fp32 scratch holding the tile's du
and its W - 1 halo rows (SCRATCH). dweight / dbias accumulate elementwise per program, are reduced
once per program into an fp32 partial buffer, and summed afterwards in a fixed order
(deterministic; no atomics).
"""
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..utils import cdiv, grad_dest, new_empty, next_pow2, num_sms, take_dest

__all__ = ["causal_conv1d_fn", "causal_conv1d_fwd", "causal_conv1d_bwd"]


def _pow2(n: int) -> int:
    """next_pow2(max(n, 1)) (utils: plain Python, not Triton's ~10 us constexpr_function wrapper)."""
    return next_pow2(max(int(n), 1))


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
def _seg(p_s, tt, L, sst):
    """Segment id at times tt, clamped into [0, L): times before 0 belong to the first segment."""
    return tl.load(p_s + tl.minimum(tl.maximum(tt, 0), L - 1).to(tl.int64) * sst)


@triton.jit
def _wcol(WT, o_d, m_d, swd, swk, k):
    return tl.load(WT + o_d.to(tl.int64) * swd + k * swk, mask=m_d, other=0.0).to(tl.float32)


@triton.jit
def _conv1d_fwd_kernel(
    X, WT, BIAS, H0, SEQ, Y, HT,
    L, D,
    sxb, sxd, sxt, swd, swk, syb, syd, syt, shb, shd, shk, ssb, sst, stb, std, stk,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, STORE_HT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, SYNC: tl.constexpr,
):
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < L, o_d < D
    p_x = X + i_b * sxb + o_d.to(tl.int64)[None, :] * sxd
    p_h0 = H0 + i_b * shb + o_d.to(tl.int64)[None, :] * shd
    p_s = SEQ + i_b * ssb
    if HAS_SEQ:
        b_s = _seg(p_s, o_t, L, sst)

    # the unshifted tap first: with SYNC, a barrier after it lets the W - 1 shifted re-reads of
    # the same rows hit L1 instead of all missing to L2 at once
    acc = _wcol(WT, o_d, m_d, swd, swk, W - 1)[None, :] * _load_x(X, H0, p_x, p_h0, o_t, m_d, L, sxt, shk, W, HAS_H0)
    if SYNC:
        tl.debug_barrier()
    for k in tl.static_range(W - 1):
        tt = o_t - (W - 1) + k
        b_x = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
        if HAS_SEQ:
            b_x = tl.where((_seg(p_s, tt, L, sst) == b_s)[:, None], b_x, 0.0)
        acc += _wcol(WT, o_d, m_d, swd, swk, k)[None, :] * b_x
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
            t_h = L - (W - 1) + o_j
            b_h = _load_x(X, H0, p_x, p_h0, t_h, m_d, L, sxt, shk, W, HAS_H0)
            if HAS_SEQ:
                b_h = tl.where((_seg(p_s, t_h, L, sst) == _seg(p_s, L - 1 + 0 * o_j, L, sst))[:, None], b_h, 0.0)
            p_ht = HT + i_b * stb + o_d.to(tl.int64)[None, :] * std + o_j.to(tl.int64)[:, None] * stk
            tl.store(p_ht, b_h.to(HT.dtype.element_ty), mask=(o_j < W - 1)[:, None] & m_d[None, :])


@triton.jit
def _acc_j(u0, u1, u2, u3, u4, u5, u6, u7, c, j: tl.constexpr):
    """u_j += c for a compile-time j (the W pre-activations live in named registers)."""
    if j == 0:
        u0 += c
    if j == 1:
        u1 += c
    if j == 2:
        u2 += c
    if j == 3:
        u3 += c
    if j == 4:
        u4 += c
    if j == 5:
        u5 += c
    if j == 6:
        u6 += c
    if j == 7:
        u7 += c
    return u0, u1, u2, u3, u4, u5, u6, u7


@triton.jit
def _set_j(u0, u1, u2, u3, u4, u5, u6, u7, c, j: tl.constexpr):
    """u_j = c for a compile-time j."""
    if j == 0:
        u0 = c
    if j == 1:
        u1 = c
    if j == 2:
        u2 = c
    if j == 3:
        u3 = c
    if j == 4:
        u4 = c
    if j == 5:
        u5 = c
    if j == 6:
        u6 = c
    if j == 7:
        u7 = c
    return u0, u1, u2, u3, u4, u5, u6, u7


@triton.jit
def _pick_j(u0, u1, u2, u3, u4, u5, u6, u7, j: tl.constexpr):
    if j == 0:
        r = u0
    if j == 1:
        r = u1
    if j == 2:
        r = u2
    if j == 3:
        r = u3
    if j == 4:
        r = u4
    if j == 5:
        r = u5
    if j == 6:
        r = u6
    if j == 7:
        r = u7
    return r


@triton.jit
def _wcols(WT, BIAS, o_d, m_d, swd, swk, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The shared prologue of the row kernels: the W weight columns in named fp32 registers (w_k for
    k >= W alias w_0 and are never read) and the bias (zeros without one), each (BD,)."""
    w0 = _wcol(WT, o_d, m_d, swd, swk, 0)
    w1, w2, w3, w4, w5, w6, w7 = w0, w0, w0, w0, w0, w0, w0
    for k in tl.static_range(1, W):
        w0, w1, w2, w3, w4, w5, w6, w7 = _set_j(w0, w1, w2, w3, w4, w5, w6, w7, _wcol(WT, o_d, m_d, swd, swk, k), k)
    b_b = tl.zeros_like(w0)
    if HAS_BIAS:
        b_b += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)
    return w0, w1, w2, w3, w4, w5, w6, w7, b_b


@triton.jit
def _conv1d_bwd_tile(
    X, BIAS, H0, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_t, o_d, m_d, L,
    sxt, shk, sdt, sst, sgk, w0, w1, w2, w3, w4, w5, w6, w7,
    W: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, SHARE: tl.constexpr,
):
    """dx at times o_t (negative times: initial_states' positions) and du at times o_t.

    dx[t] = sum_j w[W - 1 - j] * du[t + j]; with SiLU, du[t + j] = dy * silu'(u[t + j]) needs the
    pre-activations u at the W times t + j. SHARE: build all W of them from 2W - 1 shifted loads of x
    (fewer loads, W live tiles); otherwise one at a time from W loads each (W^2 loads, 1 live tile)."""
    if HAS_SEQ:
        b_s = _seg(p_s, o_t, L, sst)
    if SILU:
        bias0 = tl.zeros([BT, BD], dtype=tl.float32)
        if HAS_BIAS:
            bias0 += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
        if SHARE:
            u0, u1, u2, u3, u4, u5, u6, u7 = bias0, bias0, bias0, bias0, bias0, bias0, bias0, bias0
            for r in tl.static_range(2 * W - 1):
                tt = o_t + (r - (W - 1))  # x at this time is tap k = r - j of the output at t + j
                b_x = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
                if HAS_SEQ:
                    b_sr = _seg(p_s, tt, L, sst)
                for j in tl.static_range(W):
                    if r >= j:
                        if r - j < W:
                            c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, r - j)[None, :] * b_x
                            if HAS_SEQ:
                                c = tl.where((b_sr == _seg(p_s, o_t + j, L, sst))[:, None], c, 0.0)
                            u0, u1, u2, u3, u4, u5, u6, u7 = _acc_j(u0, u1, u2, u3, u4, u5, u6, u7, c, j)
    b_dx = tl.zeros([BT, BD], dtype=tl.float32)
    for j in tl.static_range(W):
        tau = o_t + j
        m_tau = (tau >= 0) & (tau < L)
        b_du = tl.load(p_dy + tl.where(m_tau, tau, 0).to(tl.int64)[:, None] * sdt,
                       mask=m_tau[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            b_stau = _seg(p_s, tau, L, sst)
        if SILU:
            if SHARE:
                b_u = _pick_j(u0, u1, u2, u3, u4, u5, u6, u7, j)
            else:
                b_u = bias0
                for k in tl.static_range(W):
                    tt = tau - (W - 1) + k
                    c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, k)[None, :] * _load_x(
                        X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
                    if HAS_SEQ:
                        c = tl.where((_seg(p_s, tt, L, sst) == b_stau)[:, None], c, 0.0)
                    b_u += c
            b_sig = 1.0 / (1.0 + tl.exp(-b_u))
            b_du = b_du * b_sig * (1.0 + b_u * (1.0 - b_sig))
        if j == 0:
            b_du0 = b_du
        c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1 - j)[None, :] * b_du
        if HAS_SEQ:
            c = tl.where((b_s == b_stau)[:, None], c, 0.0)
        b_dx += c
    if HAS_GH:
        # final_states[j] = x at time L - (W - 1) + j: its gradient lands on that input
        jj = o_t - (L - (W - 1))
        m_g = (jj >= 0) & (jj < W - 1)
        b_gh = tl.load(p_gh + tl.where(m_g, jj, 0).to(tl.int64)[:, None] * sgk,
                       mask=m_g[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            b_gh = tl.where((b_s == _seg(p_s, L - 1 + 0 * o_t, L, sst))[:, None], b_gh, 0.0)
        b_dx += b_gh
    return b_dx, b_du0


@triton.jit
def _du_rows(X, BIAS, H0, p_x, p_h0, p_dy, p_s, tt, o_d, m_d, L, sxt, shk, sdt, sst,
             w0, w1, w2, w3, w4, w5, w6, w7,
             W: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
             HAS_SEQ: tl.constexpr):
    """du = dy * act'(u) at times tt (zero outside [0, L)), recomputing u from W shifted loads of x."""
    m_t = (tt >= 0) & (tt < L)
    b_du = tl.load(p_dy + tl.where(m_t, tt, 0).to(tl.int64)[:, None] * sdt,
                   mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    if SILU:
        if HAS_SEQ:
            b_s = _seg(p_s, tt, L, sst)
        b_u = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1)[None, :] * _load_x(
            X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
        for k in tl.static_range(W - 1):
            tk = tt - (W - 1) + k
            c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, k)[None, :] * _load_x(
                X, H0, p_x, p_h0, tk, m_d, L, sxt, shk, W, HAS_H0)
            if HAS_SEQ:
                c = tl.where((_seg(p_s, tk, L, sst) == b_s)[:, None], c, 0.0)
            b_u += c
        if HAS_BIAS:
            b_u += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
        b_sig = 1.0 / (1.0 + tl.exp(-b_u))
        b_du = b_du * b_sig * (1.0 + b_u * (1.0 - b_sig))
    return b_du


@triton.jit
def _dw_acc(X, H0, p_x, p_h0, p_s, o_t, m_d, L, sxt, shk, sst, b_du0, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7,
            W: tl.constexpr, HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr):
    """dw[k] += du[t] * x[t - (W - 1) + k], elementwise (summed over time at the end)."""
    if HAS_SEQ:
        b_s = _seg(p_s, o_t, L, sst)
    for k in tl.static_range(W):
        tt = o_t - (W - 1) + k
        b_x = _load_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0)
        if HAS_SEQ:
            b_x = tl.where((_seg(p_s, tt, L, sst) == b_s)[:, None], b_x, 0.0)
        dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _acc_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_du0 * b_x, k)
    return dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7


@triton.jit
def _conv1d_bwd_kernel(
    X, WT, BIAS, H0, SEQ, DY, GH, DX, DH0, DWP, DBP, SCR,
    L, D, CH,
    sxb, sxd, sxt, swd, swk, shb, shd, shk, ssb, sst, sdb, sdd, sdt, sgb, sgd, sgk,
    sxgb, sxgd, sxgt, shgb, shgd, shgk,
    W: tl.constexpr, HP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, STORE_DH0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
    SHARE: tl.constexpr, SCRATCH: tl.constexpr,
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

    # the W weight columns, loaded once, in named registers (w_k for k >= W are unused zeros)
    w0 = _wcol(WT, o_d, m_d, swd, swk, 0)
    w1, w2, w3, w4, w5, w6, w7 = w0, w0, w0, w0, w0, w0, w0
    for k in tl.static_range(1, W):
        w0, w1, w2, w3, w4, w5, w6, w7 = _set_j(w0, w1, w2, w3, w4, w5, w6, w7, _wcol(WT, o_d, m_d, swd, swk, k), k)
    # dweight / dbias of this program's time chunk: elementwise (BT, BD) accumulators per tap, reduced
    # over time once at the end (a reduction per tile costs shared-memory round trips and barriers)
    dw0 = tl.zeros([BT, BD], dtype=tl.float32)
    dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db = dw0, dw0, dw0, dw0, dw0, dw0, dw0, dw0
    t_end = tl.minimum(i_c * CH + CH, L)
    if SCRATCH:
        # this program's (BT + HP, BD) fp32 scratch rows: du of the tile plus its W - 1 halo rows,
        # written once and re-read shifted (L1/L2), instead of recomputing u at W shifts
        prog = (i_b * tl.num_programs(1) + i_d) * tl.num_programs(0) + i_c
        o_r = tl.arange(0, BT)
        o_hr = tl.arange(0, HP)
        p_scr = SCR + prog * (BT + HP) * BD + tl.arange(0, BD)[None, :]
    for t0 in range(i_c * CH, t_end, BT):
        o_t = t0 + tl.arange(0, BT)
        m_t = o_t < t_end
        if SCRATCH:
            b_du0 = _du_rows(X, BIAS, H0, p_x, p_h0, p_dy, p_s, o_t, o_d, m_d, L, sxt, shk, sdt, sst,
                             w0, w1, w2, w3, w4, w5, w6, w7, W, SILU, HAS_BIAS, HAS_H0, HAS_SEQ)
            # dweight / dbias first, while the x taps just loaded are still in registers
            b_du0 = tl.where(m_t[:, None], b_du0, 0.0)
            b_db += b_du0
            dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _dw_acc(
                X, H0, p_x, p_h0, p_s, o_t, m_d, L, sxt, shk, sst, b_du0,
                dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, W, HAS_H0, HAS_SEQ)
            b_duh = _du_rows(X, BIAS, H0, p_x, p_h0, p_dy, p_s, t0 + BT + o_hr, o_d, m_d, L, sxt, shk, sdt, sst,
                             w0, w1, w2, w3, w4, w5, w6, w7, W, SILU, HAS_BIAS, HAS_H0, HAS_SEQ)
            tl.store(p_scr + o_r[:, None] * BD, b_du0)
            tl.store(p_scr + (BT + o_hr)[:, None] * BD, b_duh)
            tl.debug_barrier()
            if HAS_SEQ:
                b_s = _seg(p_s, o_t, L, sst)
            b_dx = tl.zeros([BT, BD], dtype=tl.float32)
            for j in tl.static_range(W):
                c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1 - j)[None, :] * tl.load(p_scr + (o_r + j)[:, None] * BD)
                if HAS_SEQ:
                    c = tl.where((b_s == _seg(p_s, o_t + j, L, sst))[:, None], c, 0.0)
                b_dx += c
            if HAS_GH:
                jj = o_t - (L - (W - 1))
                m_g = (jj >= 0) & (jj < W - 1)
                b_gh = tl.load(p_gh + tl.where(m_g, jj, 0).to(tl.int64)[:, None] * sgk,
                               mask=m_g[:, None] & m_d[None, :], other=0.0).to(tl.float32)
                if HAS_SEQ:
                    b_gh = tl.where((b_s == _seg(p_s, L - 1 + 0 * o_t, L, sst))[:, None], b_gh, 0.0)
                b_dx += b_gh
            tl.debug_barrier()  # every thread has read the scratch before the next tile overwrites it
        else:
            b_dx, b_du0 = _conv1d_bwd_tile(
                X, BIAS, H0, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_t, o_d, m_d, L,
                sxt, shk, sdt, sst, sgk, w0, w1, w2, w3, w4, w5, w6, w7,
                W, SILU, HAS_BIAS, HAS_H0, HAS_SEQ, HAS_GH, BT, BD, SHARE)
            b_du0 = tl.where(m_t[:, None], b_du0, 0.0)
            b_db += b_du0
            dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _dw_acc(
                X, H0, p_x, p_h0, p_s, o_t, m_d, L, sxt, shk, sst, b_du0,
                dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, W, HAS_H0, HAS_SEQ)
        tl.store(p_dx + o_t.to(tl.int64)[:, None] * sxgt, b_dx.to(DX.dtype.element_ty),
                 mask=m_t[:, None] & m_d[None, :])
    row = i_b * tl.num_programs(0) + i_c
    p_dw = DWP + row * (W + 1) * D + o_d  # partial row: W dweight rows, then dbias
    for k in tl.static_range(W):
        tl.store(p_dw + k * D, tl.sum(_pick_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, k), axis=0), mask=m_d)
    tl.store(DBP + row * (W + 1) * D + o_d, tl.sum(b_db, axis=0), mask=m_d)

    if STORE_DH0:
        if i_c == 0:
            o_j = tl.arange(0, HP)
            o_h = o_j - (W - 1)  # times -(W-1) .. -1 (HP >= W - 1 rows, the rest masked)
            b_dh, b_duh = _conv1d_bwd_tile(
                X, BIAS, H0, DY, GH, p_x, p_h0, p_dy, p_s, p_gh, o_h, o_d, m_d, L,
                sxt, shk, sdt, sst, sgk, w0, w1, w2, w3, w4, w5, w6, w7,
                W, SILU, HAS_BIAS, HAS_H0, HAS_SEQ, HAS_GH, HP, BD, SHARE)
            p_dh = DH0 + i_b * shgb + o_d64 * shgd + tl.where(o_h < 0, o_j, 0).to(tl.int64)[:, None] * shgk
            tl.store(p_dh, b_dh.to(DH0.dtype.element_ty), mask=(o_h < 0)[:, None] & m_d[None, :])


# ------------------------------------------------------------------------------------------------
# Row kernels: one program per (time chunk, channel block, batch row) walks its chunk one time row at
# a time. Each thread owns BD / (32 * num_warps) adjacent channels; the W - 1 previous input rows (and,
# in the backward, the W - 1 previous du rows and segment ids) are carried in registers, so every
# element of x, dy, y, dx crosses the memory system once (plus W - 1 halo rows per chunk), with no
# shifted re-reads and no reductions. R rows are loaded at the top of each loop step so that 2R (bwd)
# or R (fwd) row loads are in flight per thread.
# ------------------------------------------------------------------------------------------------


@triton.jit
def _rm(m_d, cond):
    """m_d and a scalar condition (a select: the interpreter rejects vector & scalar bool masks)."""
    return tl.where(cond, m_d, False)


@triton.jit
def _push(a1, a2, a3, a4, a5, a6, a7, v, W: tl.constexpr):
    """Shift the carried rows by one (a_k holds the row k steps back), v the newest. Only the W - 1
    carries in use are touched, so the others are not loop-carried."""
    if W > 7:
        a7 = a6
    if W > 6:
        a6 = a5
    if W > 5:
        a5 = a4
    if W > 4:
        a4 = a3
    if W > 3:
        a3 = a2
    if W > 2:
        a2 = a1
    a1 = v
    return a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _sigmoid(u, FAST: tl.constexpr):
    """1 / (1 + exp(-u)). FAST (CUDA only, inline PTX): ex2.approx.ftz and rcp.approx.ftz, about
    1e-7 relative error, 5 instructions instead of 12 (no denormal fix-ups, no division sequence)."""
    if FAST:
        e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [u * -1.4426950408889634],
                                      dtype=tl.float32, is_pure=True, pack=1)
        sg = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e],
                                       dtype=tl.float32, is_pure=True, pack=1)
    else:
        sg = 1.0 / (1.0 + tl.exp(-u))
    return sg


@triton.jit
def _load_rows(p, t0, st, lim, m_d, R: tl.constexpr):
    """Rows t0 .. t0 + R - 1 (zero from lim on) in x's dtype, as R named vectors (the rest alias row 0).
    One 64-bit base address per step; the rows add the loop-invariant offsets r * st."""
    pb = p + tl.cast(t0, tl.int64) * st
    for r in tl.static_range(R):
        tt = t0 + r
        b = tl.load(pb + r * st, mask=_rm(m_d, tt < lim), other=0.0)
        if r == 0:
            v0, v1, v2, v3, v4, v5, v6, v7 = b, b, b, b, b, b, b, b
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = _set_j(v0, v1, v2, v3, v4, v5, v6, v7, b, r)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _load_rows1(p, t0, st, lim, m_d, R: tl.constexpr):
    """_load_rows on a (1, BD) pointer row at a scalar time t0: (1, BD) rows with a uniform time mask."""
    pb = p + tl.cast(t0, tl.int64) * st
    for r in tl.static_range(R):
        b = tl.load(pb + r * st, mask=_rm(m_d, t0 + r < lim)[None, :], other=0.0)
        if r == 0:
            v0, v1, v2, v3, v4, v5, v6, v7 = b, b, b, b, b, b, b, b
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = _set_j(v0, v1, v2, v3, v4, v5, v6, v7, b, r)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _row_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W: tl.constexpr, HAS_H0: tl.constexpr):
    """x row at scalar time tt (initial_states for -(W-1) <= tt < 0, zero outside)."""
    b = tl.load(p_x + tt.to(tl.int64) * sxt, mask=_rm(m_d, (tt >= 0) & (tt < L)), other=0.0).to(tl.float32)
    if HAS_H0:
        th = tl.maximum(tt + (W - 1), 0)
        b += tl.load(p_h0 + th.to(tl.int64) * shk, mask=_rm(m_d, (tt < 0) & (th >= 0)), other=0.0).to(tl.float32)
    return b


@triton.jit
def _seg1(p_s, tt, L, sst):
    """Segment id at scalar time tt clamped into [0, L)."""
    return tl.load(p_s + tl.minimum(tl.maximum(tt, 0), L - 1).to(tl.int64) * sst)


@triton.jit
def _conv1d_fwd_rows_kernel(
    X, WT, BIAS, H0, SEQ, Y, HT,
    L, D, CH,
    sxb, sxd, sxt, swd, swk, syb, syd, syt, shb, shd, shk, ssb, sst, stb, std, stk,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, STORE_HT: tl.constexpr, BD: tl.constexpr, R: tl.constexpr,
    PF: tl.constexpr, FAST: tl.constexpr, UNEVEN: tl.constexpr = False,
):
    """UNEVEN: program i_c of n_p = num_programs(0) takes times [i_c * L // n_p, (i_c + 1) * L // n_p) (chunks
    of floor(L / n_p) or one more rows; CH unused), so the launcher may pick any program count (_time_programs)."""
    i_c, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)
    p_x = X + i_b * sxb + o_d64 * sxd
    p_h0 = H0 + i_b * shb + o_d64 * shd
    p_y = Y + i_b * syb + o_d64 * syd
    p_s = SEQ + i_b * ssb
    w0, w1, w2, w3, w4, w5, w6, w7, b_b = _wcols(WT, BIAS, o_d, m_d, swd, swk, W, HAS_BIAS)
    if UNEVEN:
        n_p = tl.num_programs(0)
        c0 = (i_c.to(tl.int64) * L // n_p).to(tl.int32)
        c1 = ((i_c + 1).to(tl.int64) * L // n_p).to(tl.int32)
    else:
        c0 = i_c * CH
        c1 = tl.minimum(c0 + CH, L)
    # carries: a_k = x at time t - k, s_k its segment id
    a1 = tl.zeros([BD], dtype=tl.float32)
    a2, a3, a4, a5, a6, a7 = a1, a1, a1, a1, a1, a1
    s1 = c0 * 0
    s2, s3, s4, s5, s6, s7 = s1, s1, s1, s1, s1, s1
    for k in tl.static_range(W - 1):
        tt = c0 - (W - 1) + k
        a1, a2, a3, a4, a5, a6, a7 = _push(a1, a2, a3, a4, a5, a6, a7,
                                           _row_x(X, H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0), W)
        if HAS_SEQ:
            s1, s2, s3, s4, s5, s6, s7 = _push(s1, s2, s3, s4, s5, s6, s7, _seg1(p_s, tt, L, sst), W)
    if PF:  # prefetch: the next step's rows load while this step computes
        v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows(p_x, c0, sxt, c1, m_d, R)
    for t0 in range(c0, c1, R):
        if PF:
            n0, n1, n2, n3, n4, n5, n6, n7 = _load_rows(p_x, t0 + R, sxt, c1, m_d, R)
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows(p_x, t0, sxt, c1, m_d, R)
        p_yb = p_y + tl.cast(t0, tl.int64) * syt
        for r in tl.static_range(R):
            tt = t0 + r
            v = _pick_j(v0, v1, v2, v3, v4, v5, v6, v7, r).to(tl.float32)
            acc = b_b + _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1) * v
            if HAS_SEQ:
                s = _seg1(p_s, tt, L, sst)
            for k in tl.static_range(1, W):
                c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1 - k) * _pick_j(a1, a1, a2, a3, a4, a5, a6, a7, k)
                if HAS_SEQ:
                    c = tl.where(_pick_j(s1, s1, s2, s3, s4, s5, s6, s7, k) == s, c, 0.0)
                acc += c
            if SILU:
                acc = acc * _sigmoid(acc, FAST)
            tl.store(p_yb + r * syt, acc.to(Y.dtype.element_ty), mask=_rm(m_d, tt < c1))
            a1, a2, a3, a4, a5, a6, a7 = _push(a1, a2, a3, a4, a5, a6, a7, v, W)
            if HAS_SEQ:
                s1, s2, s3, s4, s5, s6, s7 = _push(s1, s2, s3, s4, s5, s6, s7, s, W)
        if PF:
            v0, v1, v2, v3, v4, v5, v6, v7 = n0, n1, n2, n3, n4, n5, n6, n7

    if STORE_HT:
        if c1 >= L:
            o_j = tl.arange(0, WP)
            t_h = L - (W - 1) + o_j
            p_x2 = p_x[None, :]
            b_h = _load_x(X, H0, p_x2, p_h0[None, :], t_h, m_d, L, sxt, shk, W, HAS_H0)
            if HAS_SEQ:
                b_h = tl.where((_seg(p_s, t_h, L, sst) == _seg(p_s, L - 1 + 0 * o_j, L, sst))[:, None], b_h, 0.0)
            p_ht = HT + i_b * stb + o_d64[None, :] * std + o_j.to(tl.int64)[:, None] * stk
            tl.store(p_ht, b_h.to(HT.dtype.element_ty), mask=(o_j < W - 1)[:, None] & m_d[None, :])


@triton.jit
def _conv1d_bwd_rows_kernel(
    X, WT, BIAS, H0, SEQ, DY, GH, DX, DH0, DWP, DBP, DW, DB, CNT,
    L, D, CH,
    sxb, sxd, sxt, swd, swk, shb, shd, shk, ssb, sst, sdb, sdd, sdt, sgb, sgd, sgk,
    sxgb, sxgd, sxgt, shgb, shgd, shgk, sdwd, sdwk,
    W: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, STORE_DH0: tl.constexpr, BD: tl.constexpr, R: tl.constexpr,
    PF: tl.constexpr, FAST: tl.constexpr, FUSE: tl.constexpr, RB: tl.constexpr, RESET: tl.constexpr = False,
):
    """Row t = tau walks [c0, c1 + W - 1): it loads x[tau], dy[tau], rebuilds u[tau] from the carried
    x rows, forms du[tau], adds to dweight / dbias when tau < c1, and emits dx[tau - (W - 1)] from the
    carried du rows (and dinitial_states, at negative times, in the first chunk)."""
    i_c, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)
    p_x = X + i_b * sxb + o_d64 * sxd
    p_h0 = H0 + i_b * shb + o_d64 * shd
    p_dy = DY + i_b * sdb + o_d64 * sdd
    p_gh = GH + i_b * sgb + o_d64 * sgd
    p_dx = DX + i_b * sxgb + o_d64 * sxgd
    p_dh = DH0 + i_b * shgb + o_d64 * shgd
    p_s = SEQ + i_b * ssb
    w0, w1, w2, w3, w4, w5, w6, w7, b_b = _wcols(WT, BIAS, o_d, m_d, swd, swk, W, HAS_BIAS)
    # the per-row body is the streams kernel's _bwd_row2 on (1, BD) tiles (one stream): weights, carries
    # and accumulators are (1, BD), times and segment ids (1,)
    w0, w1, w2, w3, w4, w5, w6, w7 = w0[None, :], w1[None, :], w2[None, :], w3[None, :], w4[None, :], \
        w5[None, :], w6[None, :], w7[None, :]
    b_b = b_b[None, :]
    p_x2, p_dy2, p_h02 = p_x[None, :], p_dy[None, :], p_h0[None, :]
    p_dx2, p_dh2, p_gh2 = p_dx[None, :], p_dh[None, :], p_gh[None, :]
    z1 = tl.zeros([1], dtype=tl.int32)  # scalar time -> (1,) vector
    c0 = i_c * CH
    c1 = tl.minimum(c0 + CH, L)
    s_last = 0
    if HAS_SEQ:
        s_last = _seg1(p_s, L - 1, L, sst)
    # carries: a_k = x at tau - k, e_k = du at tau - k (zero before c0: dx[t >= c0] never needs it),
    # s_k the segment id at tau - k
    a1 = tl.zeros([1, BD], dtype=tl.float32)
    a2, a3, a4, a5, a6, a7 = a1, a1, a1, a1, a1, a1
    e1, e2, e3, e4, e5, e6, e7 = a1, a1, a1, a1, a1, a1, a1
    dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db = a1, a1, a1, a1, a1, a1, a1, a1, a1
    s1 = z1
    s2, s3, s4, s5, s6, s7 = s1, s1, s1, s1, s1, s1
    for k in tl.static_range(W - 1):
        tt = c0 - (W - 1) + k
        a1, a2, a3, a4, a5, a6, a7 = _push(a1, a2, a3, a4, a5, a6, a7,
                                           _row_x2(H0, p_x2, p_h02, tt + z1, m_d, L, sxt, shk, W, HAS_H0), W)
        if HAS_SEQ:
            s1, s2, s3, s4, s5, s6, s7 = _push(s1, s2, s3, s4, s5, s6, s7, _seg1(p_s, tt + z1, L, sst), W)
    # the first chunk also emits dx at the initial_states' positions (times -(W-1) .. -1)
    t_lo = tl.where(i_c == 0, -(W - 1), c0)
    t_end = tl.minimum(c1 + (W - 1), L)
    if PF:  # prefetch: the next step's rows load while this step computes
        v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows1(p_x2, c0, sxt, t_end, m_d, R)
        g0, g1, g2, g3, g4, g5, g6, g7 = _load_rows1(p_dy2, c0, sdt, t_end, m_d, R)
    for t0 in range(c0, c1 + (W - 1), R):
        if PF:
            n0, n1, n2, n3, n4, n5, n6, n7 = _load_rows1(p_x2, t0 + R, sxt, t_end, m_d, R)
            h0, h1, h2, h3, h4, h5, h6, h7 = _load_rows1(p_dy2, t0 + R, sdt, t_end, m_d, R)
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows1(p_x2, t0, sxt, t_end, m_d, R)
            g0, g1, g2, g3, g4, g5, g6, g7 = _load_rows1(p_dy2, t0, sdt, t_end, m_d, R)
        p_dxb = p_dx2 + tl.cast(t0 - (W - 1), tl.int64) * sxgt  # dx rows lag the loaded rows by W - 1
        for r in tl.static_range(R):
            (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
             dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db) = _bwd_row2(
                _pick_j(v0, v1, v2, v3, v4, v5, v6, v7, r), _pick_j(g0, g1, g2, g3, g4, g5, g6, g7, r), t0 + r + z1, t0 + r - c0, c0, c1, t_lo, L, p_dxb + r * sxgt, p_dh2, p_gh2, p_s, sst, sgk, shgk, m_d,
                s_last, w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
                s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
                W, SILU, HAS_SEQ, HAS_GH, STORE_DH0, FAST, True, True, True)
        if PF:
            v0, v1, v2, v3, v4, v5, v6, v7 = n0, n1, n2, n3, n4, n5, n6, n7
            g0, g1, g2, g3, g4, g5, g6, g7 = h0, h1, h2, h3, h4, h5, h6, h7
    row = i_b * tl.num_programs(0) + i_c
    p_dw = DWP + row * (W + 1) * D + o_d[None, :]  # partial row: W dweight rows, then dbias
    for k in tl.static_range(W):
        tl.store(p_dw + k * D, _pick_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, k), mask=m_d[None, :])
    tl.store(DBP + row * (W + 1) * D + o_d[None, :], b_db, mask=m_d[None, :])
    if FUSE:
        _finish_partials(DWP, DW, DB, CNT, i_d, i_b, tl.num_programs(0), tl.num_programs(1), tl.num_programs(2), D,
                         o_d, m_d, sdwd, sdwk, W, HAS_BIAS, BD, RB, FUSE, RESET)


# ------------------------------------------------------------------------------------------------
# Backward with NS time streams per program: the row kernel's walk on (NS, BD) tiles, stream s of
# program i_c taking chunk i_c * NS + s (one warp per stream). dweight / dbias are summed over the NS
# streams inside the program (one cross-warp reduction at the end), so the fp32 partial buffer is NS
# times smaller than the row kernel's (it was ~5-10% of the backward's bytes at CH 64-128).
# ------------------------------------------------------------------------------------------------


@triton.jit
def _rm2(m_d, cond):
    """(NS, BD) mask: a per-stream time condition and the channel mask."""
    return cond[:, None] & m_d[None, :]


@triton.jit
def _load_rows2(p, tb, st, lim, m_d, R: tl.constexpr, MT: tl.constexpr):
    """Rows tb + r (per stream, r < R) of a (1, BD) pointer row, zero from lim (per stream) on. MT=False:
    the caller knows every row is inside [0, lim): only the (loop-invariant) channel mask."""
    pb = p + tb.to(tl.int64)[:, None] * st
    for r in tl.static_range(R):
        tt = tb + r
        if MT:
            b = tl.load(pb + r * st, mask=_rm2(m_d, tt < lim), other=0.0)
        else:
            b = tl.load(pb + r * st, mask=m_d[None, :], other=0.0)
        if r == 0:
            v0, v1, v2, v3, v4, v5, v6, v7 = b, b, b, b, b, b, b, b
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = _set_j(v0, v1, v2, v3, v4, v5, v6, v7, b, r)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _row_x2(H0, p_x, p_h0, tt, m_d, L, sxt, shk, W: tl.constexpr, HAS_H0: tl.constexpr):
    """x rows at per-stream times tt (initial_states for -(W-1) <= tt < 0, zero outside): (NS, BD)."""
    b = tl.load(p_x + tt.to(tl.int64)[:, None] * sxt, mask=_rm2(m_d, (tt >= 0) & (tt < L)), other=0.0).to(tl.float32)
    if HAS_H0:
        th = tl.maximum(tt + (W - 1), 0)
        b += tl.load(p_h0 + th.to(tl.int64)[:, None] * shk, mask=_rm2(m_d, (tt < 0) & (th >= 0)),
                     other=0.0).to(tl.float32)
    return b


@triton.jit
def _bwd_row2(v, du, tt, rel, c0, c1, t_lo, L, p_dxr, p_dh, p_gh, p_s, sst, sgk, shgk, m_d, s_last,
              w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
              s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
              W: tl.constexpr, SILU: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr,
              STORE_DH0: tl.constexpr, FAST: tl.constexpr, ACC: tl.constexpr, SEL: tl.constexpr, MT: tl.constexpr):
    """One time row tau = tt (per stream) of the streams backward (and of the rows backward, on (1, BD) tiles):
    x row v and dy row du (NS, BD) in,
    u[tau] rebuilt from the carried x rows, du[tau] formed, dweight / dbias accumulated (ACC; SEL:
    only where tau < c1, for steps that may hold the W - 1 halo rows), dx[tau - (W - 1)] emitted from
    the carried du rows at p_dxr (dinitial_states at negative times), and the carries shifted. MT=False:
    the row belongs to a full chunk's main walk (no end-of-chunk store mask).
    Returns the carries and the accumulators."""
    v = v.to(tl.float32)
    du = du.to(tl.float32)
    if HAS_SEQ:
        s = _seg1(p_s, tt, L, sst)
    if SILU:
        u = b_b + _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1) * v
        for k in tl.static_range(1, W):
            c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, W - 1 - k) * _pick_j(a1, a1, a2, a3, a4, a5, a6, a7, k)
            if HAS_SEQ:
                c = tl.where((_pick_j(s1, s1, s2, s3, s4, s5, s6, s7, k) == s)[:, None], c, 0.0)
            u += c
        sg = _sigmoid(u, FAST)
        # du * silu'(u) = c * (1 + q) with c = du * sg, q = u * (1 - sg): 3 instructions (FFMA, FMUL, FFMA)
        q = u - u * sg
        c = du * sg
        du = c * q + c
    if ACC:
        # dweight / dbias over this chunk's own times only (rows past L hold du = 0: dy loads as 0)
        if SEL:
            dsel = tl.where((tt < c1)[:, None], du, 0.0)
        else:
            dsel = du
        b_db += dsel
        dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _acc_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, dsel * v, W - 1)
        for k in tl.static_range(1, W):
            c = dsel * _pick_j(a1, a1, a2, a3, a4, a5, a6, a7, k)
            if HAS_SEQ:
                c = tl.where((_pick_j(s1, s1, s2, s3, s4, s5, s6, s7, k) == s)[:, None], c, 0.0)
            dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _acc_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, c, W - 1 - k)
    # dx at t = tau - (W - 1): sum_j w[W-1-j] du[t + j]; du[t + j] is e_{W-1-j} (e_0 = du)
    t = tt - (W - 1)
    b_dx = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, 0) * du
    if HAS_SEQ:
        s_t = _pick_j(s1, s1, s2, s3, s4, s5, s6, s7, W - 1)
        b_dx = tl.where((s_t == s)[:, None], b_dx, 0.0)
    for k in tl.static_range(1, W):
        c = _pick_j(w0, w1, w2, w3, w4, w5, w6, w7, k) * _pick_j(e1, e1, e2, e3, e4, e5, e6, e7, k)
        if HAS_SEQ:
            if k < W - 1:
                c = tl.where((_pick_j(s1, s1, s2, s3, s4, s5, s6, s7, k) == s_t)[:, None], c, 0.0)
        b_dx += c
    if HAS_GH:
        # final_states[j] = x at time L - (W - 1) + j: its gradient lands on that input
        jj = t - (L - (W - 1))
        m_g = (jj >= 0) & (jj < W - 1)
        b_gh = tl.load(p_gh + tl.maximum(jj, 0).to(tl.int64)[:, None] * sgk, mask=_rm2(m_d, m_g),
                       other=0.0).to(tl.float32)
        if HAS_SEQ:
            b_gh = tl.where((s_t == s_last)[:, None], b_gh, 0.0)
        b_dx += b_gh
    if MT:
        tl.store(p_dxr, b_dx.to(p_dxr.dtype.element_ty), mask=_rm2(m_d, (t >= c0) & (t < c1)))
    else:
        # a full chunk's main walk: t < c0 + CH - (W - 1) <= c1 always, and t >= c0 once the walk is
        # W - 1 rows in (rel = tau - c0, the same scalar for every stream: a uniform predicate)
        tl.store(p_dxr, b_dx.to(p_dxr.dtype.element_ty), mask=_rm(m_d, rel >= W - 1)[None, :])
    if STORE_DH0:
        tl.store(p_dh + tl.maximum(t + (W - 1), 0).to(tl.int64)[:, None] * shgk,
                 b_dx.to(p_dh.dtype.element_ty), mask=_rm2(m_d, (t < 0) & (t >= t_lo)))
    a1, a2, a3, a4, a5, a6, a7 = _push(a1, a2, a3, a4, a5, a6, a7, v, W)
    e1, e2, e3, e4, e5, e6, e7 = _push(e1, e2, e3, e4, e5, e6, e7, du, W)
    if HAS_SEQ:
        s1, s2, s3, s4, s5, s6, s7 = _push(s1, s2, s3, s4, s5, s6, s7, s, W)
    return (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
            dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db)


@triton.jit
def _bwd_walk2(p_x, p_dy, p_dx, p_dh, p_gh, p_s, n_walk, c0, c1, t_lo, t_end, L, sxt, sdt, sxgt, sst, sgk, shgk,
               m_d, s_last, w0, w1, w2, w3, w4, w5, w6, w7, b_b,
               a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
               s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
               W: tl.constexpr, SILU: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr,
               STORE_DH0: tl.constexpr, FAST: tl.constexpr, R: tl.constexpr, SEL: tl.constexpr, MT: tl.constexpr):
    """Rows tau = c0 + t0 + r, t0 in range(0, n_walk, R), of every stream: R x rows and R dy rows loaded
    per step (MT=False: no time masks, every row is inside the chunk and before L), then _bwd_row2 on
    each. Returns the carries and the accumulators."""
    for t0 in range(0, n_walk, R):
        tb = c0 + t0
        v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows2(p_x, tb, sxt, t_end, m_d, R, MT)
        g0, g1, g2, g3, g4, g5, g6, g7 = _load_rows2(p_dy, tb, sdt, t_end, m_d, R, MT)
        p_dxb = p_dx + (tb - (W - 1)).to(tl.int64)[:, None] * sxgt  # dx rows lag the loaded rows by W - 1
        for r in tl.static_range(R):
            (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
             dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db) = _bwd_row2(
                _pick_j(v0, v1, v2, v3, v4, v5, v6, v7, r), _pick_j(g0, g1, g2, g3, g4, g5, g6, g7, r), tb + r,
                t0 + r, c0, c1, t_lo, L, p_dxb + r * sxgt, p_dh, p_gh, p_s, sst, sgk, shgk, m_d, s_last,
                w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
                s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
                W, SILU, HAS_SEQ, HAS_GH, STORE_DH0, FAST, True, SEL, MT)
    return (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
            dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db)


@triton.jit
def _sum_rows(P, r0, n, D, o_d, m_d, W: tl.constexpr, BD: tl.constexpr, RB: tl.constexpr):
    """Sums over the partial rows r0 .. r0 + n - 1 of the (rows, W + 1, D) fp32 buffer P for the channels
    o_d: W + 1 vectors (BD,) (a_k for k > W are unused). Fixed order: RB rows per step, the W + 1 loads
    of a step in flight together, then one tile reduction (deterministic). .cg: read at L2, where the
    other programs' rows are."""
    o_r = tl.arange(0, RB)
    a0 = tl.zeros([RB, BD], dtype=tl.float32)
    a1, a2, a3, a4, a5, a6, a7, a8 = a0, a0, a0, a0, a0, a0, a0, a0
    for n0 in range(0, n, RB):
        rr = n0 + o_r
        m = (rr < n)[:, None] & m_d[None, :]
        p = P + (r0 + rr).to(tl.int64)[:, None] * ((W + 1) * D) + o_d[None, :]
        for k in tl.static_range(W + 1):
            b = tl.load(p + k * D, mask=m, other=0.0, cache_modifier=".cg")
            if k == 0:
                a0 += b
            else:
                a1, a2, a3, a4, a5, a6, a7, a8 = _acc_j(a1, a2, a3, a4, a5, a6, a7, a8, b, k - 1)
    return (tl.sum(a0, axis=0), tl.sum(a1, axis=0), tl.sum(a2, axis=0), tl.sum(a3, axis=0), tl.sum(a4, axis=0),
            tl.sum(a5, axis=0), tl.sum(a6, axis=0), tl.sum(a7, axis=0), tl.sum(a8, axis=0))


@triton.jit
def _finish_partials(DWP, DW, DB, CNT, i_d, i_b, n_p, n_d, n_b, D, o_d, m_d, sdwd, sdwk,
                     W: tl.constexpr, HAS_DB: tl.constexpr, BD: tl.constexpr, RB: tl.constexpr,
                     LEVELS: tl.constexpr, RESET: tl.constexpr):
    """Fused partial sums (FUSE): called by every program (n_p along time, n_d channel blocks, n_b batch
    rows) after it stored its partial row (W dweight rows, then dbias) of channel block i_d; the rows of
    batch row b are b * n_p .. b * n_p + n_p - 1. Arrival counters (CNT, zeroed per call by the launcher)
    pick the last program to finish, which sums rows in a fixed order (the result does not depend on
    which program is last: deterministic) and writes dweight (D, W) and dbias in their dtypes.
    LEVELS 1: one counter per channel block; the last of all n_p * n_b programs sums every row.
    LEVELS 2: the last program of each (batch row, channel block) sums its batch row's n_p rows into row
    n_b * n_p + b (this overlaps with later batch rows' programs), and the last of those n_b sums them,
    so the work left after the final program is two short sums instead of n_p * n_b rows.
    RESET: the last program at each counter sets it back to 0 once no other program of this launch can
    touch it, so the launcher may keep one zeroed counter buffer per stream (_counters) instead of a
    torch.zeros per call; the next launch that uses it is ordered after this one by the stream."""
    # every thread's partial stores are done (CTA barrier) before the counter is bumped; the atomic is
    # acq_rel at GPU scope: it publishes this program's rows and, for the last program, makes every
    # other program's rows visible (the pattern of a cooperative grid barrier)
    tl.debug_barrier()
    if LEVELS == 1:
        cnt = tl.atomic_add(CNT + i_d, 1, sem="acq_rel")
        if cnt == n_p * n_b - 1:
            if RESET:
                tl.store(CNT + i_d, 0)
            s0, s1, s2, s3, s4, s5, s6, s7, s8 = _sum_rows(DWP, 0, n_p * n_b, D, o_d, m_d, W, BD, RB)
            _write_dw(DW, DB, o_d, m_d, sdwd, sdwk, s0, s1, s2, s3, s4, s5, s6, s7, s8, W, HAS_DB)
    else:
        cnt = tl.atomic_add(CNT + i_b * n_d + i_d, 1, sem="acq_rel")
        if cnt == n_p - 1:
            if RESET:
                tl.store(CNT + i_b * n_d + i_d, 0)
            s0, s1, s2, s3, s4, s5, s6, s7, s8 = _sum_rows(DWP, i_b * n_p, n_p, D, o_d, m_d, W, BD, RB)
            p_l1 = DWP + (n_b * n_p + i_b) * ((W + 1) * D) + o_d
            for k in tl.static_range(W + 1):
                tl.store(p_l1 + k * D, _pick9(s0, s1, s2, s3, s4, s5, s6, s7, s8, k), mask=m_d)
            tl.debug_barrier()
            cnt2 = tl.atomic_add(CNT + n_b * n_d + i_d, 1, sem="acq_rel")
            if cnt2 == n_b - 1:
                if RESET:
                    tl.store(CNT + n_b * n_d + i_d, 0)
                s0, s1, s2, s3, s4, s5, s6, s7, s8 = _sum_rows(DWP, n_b * n_p, n_b, D, o_d, m_d, W, BD, RB)
                _write_dw(DW, DB, o_d, m_d, sdwd, sdwk, s0, s1, s2, s3, s4, s5, s6, s7, s8, W, HAS_DB)


@triton.jit
def _pick9(s0, s1, s2, s3, s4, s5, s6, s7, s8, k: tl.constexpr):
    if k == 8:
        r = s8
    else:
        r = _pick_j(s0, s1, s2, s3, s4, s5, s6, s7, k)
    return r


@triton.jit
def _write_dw(DW, DB, o_d, m_d, sdwd, sdwk, s0, s1, s2, s3, s4, s5, s6, s7, s8,
              W: tl.constexpr, HAS_DB: tl.constexpr):
    """dweight[:, k] = s_k (k < W) and dbias = s_W, in their dtypes."""
    o_d64 = o_d.to(tl.int64)
    for k in tl.static_range(W):
        tl.store(DW + o_d64 * sdwd + k * sdwk, _pick9(s0, s1, s2, s3, s4, s5, s6, s7, s8, k).to(DW.dtype.element_ty),
                 mask=m_d)
    if HAS_DB:
        tl.store(DB + o_d, _pick9(s0, s1, s2, s3, s4, s5, s6, s7, s8, W).to(DB.dtype.element_ty), mask=m_d)


@triton.jit
def _conv1d_bwd_streams_kernel(
    X, WT, BIAS, H0, SEQ, DY, GH, DX, DH0, DWP, DBP, DW, DB, CNT,
    L, D, CH,
    sxb, sxd, sxt, swd, swk, shb, shd, shk, ssb, sst, sdb, sdd, sdt, sgb, sgd, sgk,
    sxgb, sxgd, sxgt, shgb, shgd, shgk, sdwd, sdwk,
    W: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_GH: tl.constexpr, STORE_DH0: tl.constexpr, BD: tl.constexpr, R: tl.constexpr,
    NS: tl.constexpr, FAST: tl.constexpr, FUSE: tl.constexpr, TAIL: tl.constexpr, RB: tl.constexpr,
    ST: tl.constexpr, EVEN: tl.constexpr,  # FUSE: 0, 1 or 2 (levels of fused partial sums)
    RESET: tl.constexpr = False,
):
    """_conv1d_bwd_rows_kernel on NS chunks at once; same maths, per-stream times. Chunks past the end
    (c0 >= L) load, store and add nothing. TAIL (needs CH % R == 0): CH / R full steps of R rows with
    dweight / dbias accumulated unconditionally, then one step of the W - 1 halo rows with no
    dweight / dbias; otherwise cdiv(CH + W - 1, R) steps of R rows, the last mostly masked, with a
    select per row. FUSE: the last program per channel block also sums the partials (_finish_partials).
    ST (CST): x, dy and dx share the row stride ST, a compile-time constant, so the R rows of a step are
    addressed by immediate offsets (no 64-bit address arithmetic per row). EVEN (with TAIL): programs
    whose chunks all end at or before L run the walk without time masks (no compares, no zero fills per
    row); the last program along time keeps them."""
    i_c, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)[None, :]
    p_x = X + i_b * sxb + o_d64 * sxd
    p_h0 = H0 + i_b * shb + o_d64 * shd
    p_dy = DY + i_b * sdb + o_d64 * sdd
    p_gh = GH + i_b * sgb + o_d64 * sgd
    p_dx = DX + i_b * sxgb + o_d64 * sxgd
    p_dh = DH0 + i_b * shgb + o_d64 * shgd
    p_s = SEQ + i_b * ssb
    w0, w1, w2, w3, w4, w5, w6, w7, b_b = _wcols(WT, BIAS, o_d, m_d, swd, swk, W, HAS_BIAS)
    # (1, BD) rows broadcast over the NS streams
    w0, w1, w2, w3, w4, w5, w6, w7 = w0[None, :], w1[None, :], w2[None, :], w3[None, :], w4[None, :], \
        w5[None, :], w6[None, :], w7[None, :]
    b_b = tl.zeros([NS, BD], dtype=tl.float32) + b_b[None, :]
    i_s = i_c * NS + tl.arange(0, NS)  # this program's chunks
    c0 = i_s * CH
    c1 = tl.minimum(c0 + CH, L)  # c1 <= c0 for the chunks past NC: nothing loads, stores or adds
    s_last = 0
    if HAS_SEQ:
        s_last = _seg1(p_s, L - 1, L, sst)
    a1 = tl.zeros([NS, BD], dtype=tl.float32)
    a2, a3, a4, a5, a6, a7 = a1, a1, a1, a1, a1, a1
    e1, e2, e3, e4, e5, e6, e7 = a1, a1, a1, a1, a1, a1, a1
    dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db = a1, a1, a1, a1, a1, a1, a1, a1, a1
    s1 = c0 * 0
    s2, s3, s4, s5, s6, s7 = s1, s1, s1, s1, s1, s1
    for k in tl.static_range(W - 1):
        tt = c0 - (W - 1) + k
        a1, a2, a3, a4, a5, a6, a7 = _push(a1, a2, a3, a4, a5, a6, a7,
                                           _row_x2(H0, p_x, p_h0, tt, m_d, L, sxt, shk, W, HAS_H0), W)
        if HAS_SEQ:
            s1, s2, s3, s4, s5, s6, s7 = _push(s1, s2, s3, s4, s5, s6, s7, _seg1(p_s, tt, L, sst), W)
    t_lo = tl.where(i_s == 0, -(W - 1), c0)
    t_end = tl.minimum(c1 + (W - 1), L)
    if ST != 0:  # CST: the row stride of x, dy and dx as a constant (immediate load / store offsets)
        sxt = ST
        sdt = ST
        sxgt = ST
    # TAIL: the chunk's own CH rows here, the W - 1 halo rows in their own step below; else rows tau in
    # [c0, c1 + W - 1) per stream in R-row steps (the last mostly masked), with a select per row.
    # EVEN: programs whose NS chunks all end at or before L walk without time masks (MT=False).
    n_walk = CH
    if not TAIL:
        n_walk = CH + (W - 1)
    full = False
    if TAIL:
        if EVEN:
            full = (i_c + 1) * (NS * CH) <= L
    if full:
        (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
         dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db) = _bwd_walk2(
            p_x, p_dy, p_dx, p_dh, p_gh, p_s, n_walk, c0, c1, t_lo, t_end, L, sxt, sdt, sxgt, sst, sgk, shgk,
            m_d, s_last, w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
            s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
            W, SILU, HAS_SEQ, HAS_GH, STORE_DH0, FAST, R, False, False)
    else:
        (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
         dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db) = _bwd_walk2(
            p_x, p_dy, p_dx, p_dh, p_gh, p_s, n_walk, c0, c1, t_lo, t_end, L, sxt, sdt, sxgt, sst, sgk, shgk,
            m_d, s_last, w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
            s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
            W, SILU, HAS_SEQ, HAS_GH, STORE_DH0, FAST, R, not TAIL, True)
    if TAIL:
        # the W - 1 halo rows after the chunk: du only feeds dx of the chunk's last W - 1 rows
        tb = c0 + CH
        v0, v1, v2, v3, v4, v5, v6, v7 = _load_rows2(p_x, tb, sxt, t_end, m_d, W - 1, True)
        g0, g1, g2, g3, g4, g5, g6, g7 = _load_rows2(p_dy, tb, sdt, t_end, m_d, W - 1, True)
        p_dxb = p_dx + (tb - (W - 1)).to(tl.int64)[:, None] * sxgt
        for r in tl.static_range(W - 1):
            (a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7, s1, s2, s3, s4, s5, s6, s7,
             dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db) = _bwd_row2(
                _pick_j(v0, v1, v2, v3, v4, v5, v6, v7, r), _pick_j(g0, g1, g2, g3, g4, g5, g6, g7, r), tb + r,
                CH + r, c0, c1, t_lo, L, p_dxb + r * sxgt, p_dh, p_gh, p_s, sst, sgk, shgk, m_d, s_last,
                w0, w1, w2, w3, w4, w5, w6, w7, b_b, a1, a2, a3, a4, a5, a6, a7, e1, e2, e3, e4, e5, e6, e7,
                s1, s2, s3, s4, s5, s6, s7, dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, b_db,
                W, SILU, HAS_SEQ, HAS_GH, STORE_DH0, FAST, False, False, True)
    row = i_b * tl.num_programs(0) + i_c
    p_dw = DWP + row * (W + 1) * D + o_d  # partial row: W dweight rows, then dbias
    for k in tl.static_range(W):
        tl.store(p_dw + k * D, tl.sum(_pick_j(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, k), axis=0), mask=m_d)
    tl.store(DBP + row * (W + 1) * D + o_d, tl.sum(b_db, axis=0), mask=m_d)
    if FUSE:
        _finish_partials(DWP, DW, DB, CNT, i_d, i_b, tl.num_programs(0), tl.num_programs(1), tl.num_programs(2), D,
                         o_d, m_d, sdwd, sdwk, W, HAS_BIAS, BD, RB, FUSE, RESET)


def _fwd_configs():
    """Configs the benchmark sweeps (bench/bench_conv1d.py --sweep); tests run every one. KIND "rows":
    the row-walking kernel (CH rows per program; BD / (32 * num_warps) channels per thread; R rows
    loaded per step, at most 8; PF: prefetch the next step; FAST=False: the plain exp / division SiLU instead of
    the approximate PTX one). The tile kernels (KIND "tile", the channel-first default) were swept in
    earlier runs (bench/RESULTS.md)."""
    rows = [dict(KIND="rows", BD=bd, num_warps=nw, R=r, CH=ch, PF=pf, FAST=fast) for bd, nw, r, ch, pf, fast in [
        (256, 2, 8, 128, False, True), (256, 2, 4, 128, False, True), (128, 2, 8, 128, False, True),
        (256, 2, 8, 128, True, True), (256, 2, 8, 128, False, False)]]
    # UNEVEN (wave-sized grids, _time_programs): the W <= 4 default's tiles in WAVES whole waves of OCC = 12 resident
    # programs per SM (80 registers, 2 warps); at B8 D2304 on an H100 (132 SMs) 22 or 44 programs along time (chunks
    # of 372-373 / 186-187 rows) instead of the default's 64 (2.91 waves)
    uneven = [dict(KIND="rows", BD=256, num_warps=2, R=8, CH=128, PF=False, FAST=True, UNEVEN=True, WAVES=wv, OCC=12)
              for wv in (1, 2)]
    return rows + uneven


def _bwd_configs():
    """KIND "streams": NS chunks per program (one warp each), dweight / dbias summed in the program.
    FUSE (1 or 2 levels, _finish_partials): the last program per channel block sums the partials (no
    _partials_sum_kernel launch); TAIL
    (streams): the W - 1 halo rows get their own short step instead of a mostly masked R-row step; CST
    and EVEN: see _conv1d_bwd_streams_kernel."""
    rows = [dict(KIND="rows", BD=bd, num_warps=nw, R=r, CH=ch, PF=False, FUSE=fu) for bd, nw, r, ch, fu in [
        (128, 1, 8, 64, False), (128, 2, 8, 128, False), (128, 2, 8, 128, True)]]
    streams = [dict(KIND="streams", BD=bd, num_warps=ns, NS=ns, R=r, CH=ch, FUSE=fu, TAIL=ta)
               for bd, ns, r, ch, fu, ta in [
                   (128, 4, 8, 64, False, False), (128, 4, 8, 128, False, False), (64, 4, 8, 128, False, False),
                   (64, 2, 8, 128, False, False), (64, 8, 8, 128, False, False), (64, 4, 8, 256, False, False),
                   (32, 4, 8, 128, False, False),
                   (64, 4, 8, 128, True, False), (64, 4, 8, 128, True, True)]]
    # CST: the common row stride of x / dy / dx as a constant; EVEN: full chunks walk without time masks
    lean = [dict(KIND="streams", BD=64, num_warps=4, NS=4, R=8, CH=ch, FUSE=fu, TAIL=True, CST=True, EVEN=True)
            for ch, fu in ((128, 1), (256, 1), (128, 2), (256, 2))]
    # the default's masked walk (TAIL and EVEN off; session 8, H100: 0.3471 ms against the default's 0.3475). (The
    # default at CH1024, 576 programs in one wave, is timed by .gpu/conv9.py but not listed: under the interpreter a
    # stream walks CH rows whatever L is.)
    masked = [dict(BWD_STREAMS_DEFAULT, TAIL=False, EVEN=False)]
    return rows + streams + lean + masked


# Fixed configs instead of autotuning: first-call tuning would cost ~20 compiles per key, and the
# best configs depend on layout and width only (bench/RESULTS.md has the sweep). The overrides let
# the benchmark time a config end to end through the public function.
FWD_CONFIG_OVERRIDE = None
BWD_CONFIG_OVERRIDE = None


def _fwd_config(x, W):
    if FWD_CONFIG_OVERRIDE is not None:
        return FWD_CONFIG_OVERRIDE
    if x.stride(2) == 1 and x.shape[2] > 1:  # time-contiguous (channel-first): long rows along t
        return dict(KIND="tile", BT=128, BD=32, num_warps=4, SYNC=False)
    # H100 round-2 sweep (bench/RESULTS.md): 4 channels per thread at W <= 4 (0.2215 ms at B8 L8192,
    # 0.909 of copy), 2 above (W8: 0.2326 ms vs 0.2393 with 4)
    if W <= 4:
        return dict(KIND="rows", BD=256, num_warps=2, R=8, CH=128)
    return dict(KIND="rows", BD=128, num_warps=2, R=8, CH=128)


def _bwd_config(x, W):
    if BWD_CONFIG_OVERRIDE is not None:
        return BWD_CONFIG_OVERRIDE
    if x.stride(2) == 1 and x.shape[2] > 1:
        return dict(KIND="tile", BT=32, BD=16, num_warps=4, SHARE=True, SCRATCH=False)
    return dict(BWD_STREAMS_DEFAULT)  # channel-last: the streams kernel (measured: see BWD_STREAMS_DEFAULT)


# The backward default (channel-last): "lean256_f2" of .gpu/conv4.py, the fastest of three in one process on an
# H100 (2026-12-07, B8 D2304 L8192 W4 bf16, fwd+bwd through autograd): old flags (CH128, separate partial sum)
# 0.5739 ms (graph 0.5644), the same with FUSE=2 TAIL CST EVEN 0.5719 (0.5633), and CH256 with them 0.5613 (0.5536).
BWD_STREAMS_DEFAULT = dict(KIND="streams", BD=64, num_warps=4, NS=4, R=8, CH=256, FUSE=2, TAIL=True, CST=True, EVEN=True)


def _rows_chunk(x, cfg) -> int:
    """Time rows per program of the row kernels: cfg["CH"], halved (not below 4 * R) while the grid
    has fewer than ~16 resident warps' worth per SM of an H100 (132 SMs) for short inputs. Not on CPU
    (the interpreter runs programs one after another, and each costs its W - 1 halo rows)."""
    B, D, L = x.shape
    ch = cfg.get("CH", 128)
    if x.device.type == "cpu":
        return ch
    warps = cfg.get("num_warps", 1) // (cfg.get("NS", 1) if cfg.get("KIND") == "streams" else 1)  # per chunk
    while ch > 4 * cfg["R"] and B * cdiv(D, cfg["BD"]) * cdiv(L, ch) * max(warps, 1) < 132 * 16:
        ch //= 2
    return ch


def _time_programs(x, cfg, pairs: int, sms: Optional[int] = None) -> int:
    """UNEVEN (row forward): the number of programs along time. cfg["NP"] if set; else the most that keep the grid
    (pairs = batch x channel blocks programs per time slot) within WAVES (default 1) waves of OCC resident programs
    per SM on sms SMs (default: this device's; 1 on CPU, where the interpreter runs programs one after another, so
    that the tests of the sweep configs stay short). OCC default: 24 // num_warps (24 resident warps per SM at 73-80
    registers per thread, the default kernels' count on sm_90). At most L (each program at least one row), at
    least 1."""
    n_p = cfg.get("NP")
    if not n_p:
        occ = cfg.get("OCC") or max(1, 24 // cfg.get("num_warps", 1))
        if sms is None:
            sms = num_sms(x.device) if x.is_cuda else 1
        n_p = cfg.get("WAVES", 1) * sms * occ // pairs
    return max(1, min(int(n_p), x.shape[2]))


def _cpu_rows(x, cfg):
    """Under the interpreter (CPU), wider channel blocks for the default row / streams config: the cost
    is per program and per row, hardly per element; and for streams no longer chunks or more streams
    than the sequence fills (a streams program walks CH + W - 1 rows whatever L is). The variant tests
    still run every GPU config as is."""
    if x.device.type == "cpu" and cfg.get("KIND") in ("rows", "streams"):
        cfg = dict(cfg, BD=max(cfg["BD"], min(1024, _pow2(x.shape[1]))))
        if cfg["KIND"] == "streams":
            ch = min(cfg["CH"], cdiv(x.shape[2], cfg["R"]) * cfg["R"])
            ns = min(cfg["NS"], _pow2(cdiv(x.shape[2], ch)))
            cfg = dict(cfg, CH=ch, NS=ns, num_warps=ns)
    return cfg


# FAST_LAUNCH (opt-in, HYBRIDNA_CONV1D_FAST_LAUNCH=1; CUDA only): the default row forward and streams backward
# launches skip JITFunction.run (argument binding, specialisation, cache-key string, hook checks) after the first
# call with a given key, calling the compiled kernel's launcher directly. The key holds every runtime int argument
# exactly and each tensor's dtype and 16-byte alignment, which is all Triton specialises on, plus the constexprs
# and options: a new key goes through JITFunction.run once (compiling if needed). Launch hooks (profilers such as
# proton) are not called on the direct path.
FAST_LAUNCH = os.environ.get("HYBRIDNA_CONV1D_FAST_LAUNCH", "0") == "1"
_LAUNCH_CACHE: dict = {}


def _launch(fn, grid, args, kw):
    key = (fn, tuple(kw.items()),
           tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args))
    ent = _LAUNCH_CACHE.get(key)
    if ent is None:
        k = fn[grid](*args, **kw)
        # constexpr values in signature order (the launcher skips them, but takes every parameter)
        consts = tuple(kw[p.name] if p.name in kw else p.default for p in fn.params[len(args):])
        if len(_LAUNCH_CACHE) < 256 and k is not None:
            _LAUNCH_CACHE[key] = (k, consts)
        return
    k, consts = ent
    k.run(grid[0], grid[1], grid[2], torch.cuda.current_stream().cuda_stream, k.function, k.packed_metadata,
          None, None, None, *args, *consts)


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
    cfg = config or _cpu_rows(x, _fwd_config(x, W))
    if cfg.get("KIND", "tile") == "rows":
        uneven = cfg.get("UNEVEN", False)
        if uneven:  # programs along time from the wave count, chunks of floor(L / n_p) or one more rows
            n_t = _time_programs(x, cfg, B * cdiv(D, cfg["BD"]))
            CH = cdiv(L, n_t)
        else:
            CH = _rows_chunk(x, cfg)
            n_t = cdiv(L, CH)
        grid = (n_t, cdiv(D, cfg["BD"]), B)
        kw = dict(BD=cfg["BD"], R=cfg["R"], PF=cfg.get("PF", False), FAST=x.is_cuda and cfg.get("FAST", True),
                  num_warps=cfg.get("num_warps", 1))
        if uneven:
            kw["UNEVEN"] = True
        if FAST_LAUNCH and x.is_cuda:
            _launch(_conv1d_fwd_rows_kernel, grid, (*args[:9], CH, *args[9:]), dict(flags, **kw))
        else:
            _conv1d_fwd_rows_kernel[grid](*args[:9], CH, *args[9:], **flags, **kw)
        return y, ht
    grid = (cdiv(L, cfg["BT"]), cdiv(D, cfg["BD"]), B)
    _conv1d_fwd_kernel[grid](*args, **flags, BT=cfg["BT"], BD=cfg["BD"], SYNC=cfg.get("SYNC", False),
                             num_warps=cfg.get("num_warps", 4))
    return y, ht


def _chunk_len(L: int, B: int, D: int) -> int:
    """Time per backward program (dweight partial rows = B * cdiv(L, CH)); a multiple of every BT."""
    ch = 1024
    # keep >= ~4 waves of programs on 132 SMs for short inputs
    while ch > 64 and B * cdiv(D, 128) * cdiv(L, ch) < 528:
        ch //= 2
    return ch


def causal_conv1d_bwd(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0, config=None,
                      dx_out=None):
    """Launch the backward kernel. Returns (dx, dweight, dbias or None, dinitial_states or None).
    dx_out: optional preallocated dx like x (any strides; utils.GradSlab), else a new one laid out like x."""
    B, D, L = x.shape
    W = weight.shape[1]
    cfg = config or _cpu_rows(x, _bwd_config(x, W))
    if cfg.get("KIND", "tile") in ("rows", "streams"):
        return _bwd_rows(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0, cfg, dx_out)
    CH = max(_chunk_len(L, B, D), cfg["BT"])
    n_c = cdiv(L, CH)
    dx = _layout_like(x, x.dtype) if dx_out is None else dx_out
    dh0 = new_empty(initial_states.shape, dtype=initial_states.dtype, device=x.device) if need_dh0 else None
    dwp = new_empty((B * n_c, W + 1, D), dtype=torch.float32, device=x.device)  # dweight rows, dbias row
    dbp = dwp[:, W]
    HP = _pow2(max(W - 1, 2))
    scratch = cfg.get("SCRATCH", False)
    n_prog = n_c * cdiv(D, cfg["BD"]) * B
    scr = new_empty((n_prog * (cfg["BT"] + HP) * cfg["BD"],) if scratch else (1,), dtype=torch.float32,
                    device=x.device)
    dummy = x
    args = (
        x, weight, bias if bias is not None else dummy, initial_states if initial_states is not None else dummy,
        seq_idx if seq_idx is not None else dummy, dy, dht if dht is not None else dummy, dx,
        dh0 if dh0 is not None else dummy, dwp, dbp, scr,
        L, D, CH, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *(tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)), *dy.stride(), *_strides3(dht),
        *dx.stride(), *_strides3(dh0),
    )
    flags = dict(W=W, HP=HP, SILU=activation == "silu", HAS_BIAS=bias is not None,
                 HAS_H0=initial_states is not None, HAS_SEQ=seq_idx is not None, HAS_GH=dht is not None,
                 STORE_DH0=dh0 is not None)
    grid = (n_c, cdiv(D, cfg["BD"]), B)
    _conv1d_bwd_kernel[grid](*args, **flags, BT=cfg["BT"], BD=cfg["BD"], SHARE=cfg.get("SHARE", True),
                             SCRATCH=scratch, num_warps=cfg.get("num_warps", 4))
    # fixed-order reduction of the per-program partials: deterministic
    dw, db = _reduce_partials(dwp, weight, bias)
    return dx, dw, db, dh0


@triton.jit
def _partials_sum_kernel(P, DW, DB, N, D, sdd, sdk, W: tl.constexpr, HAS_DB: tl.constexpr, RB: tl.constexpr,
                         BC: tl.constexpr):
    """Column sums of the (N, (W + 1) * D) fp32 partials in a fixed order (deterministic): column
    k * D + d is dweight[d, k] for k < W, dbias[d] for k = W. RB rows per step keep loads in flight."""
    o_c = tl.program_id(0) * BC + tl.arange(0, BC)
    m_c = o_c < (W + 1) * D
    o_r = tl.arange(0, RB)
    acc = tl.zeros([RB, BC], dtype=tl.float32)
    for n0 in range(0, N, RB):
        n = n0 + o_r
        acc += tl.load(P + n.to(tl.int64)[:, None] * ((W + 1) * D) + o_c[None, :],
                       mask=(n < N)[:, None] & m_c[None, :], other=0.0)
    s = tl.sum(acc, axis=0)
    k = o_c // D
    d = o_c - k * D
    tl.store(DW + d * sdd + k * sdk, s.to(DW.dtype.element_ty), mask=m_c & (k < W))
    if HAS_DB:
        tl.store(DB + d, s.to(DB.dtype.element_ty), mask=m_c & (k == W))


def _reduce_partials(dwp, weight, bias):
    """dweight (D, W) in weight's dtype and dbias in bias's dtype from the (N, W + 1, D) partials: one
    launch instead of sum / transpose / cast kernels."""
    N, W1, D = dwp.shape
    dw = new_empty((D, W1 - 1), dtype=weight.dtype, device=dwp.device)
    db = new_empty((D,), dtype=bias.dtype, device=dwp.device) if bias is not None else None
    BC = 128
    _partials_sum_kernel[(cdiv(W1 * D, BC),)](dwp, dw, db if db is not None else dw, N, D, *dw.stride(),
                                               W=W1 - 1, HAS_DB=db is not None, RB=32, BC=BC, num_warps=4)
    return dw, db


# Arrival counters of the fused partial sums with RESET (the kernel sets each counter back to 0 after
# its last arrival): one zeroed int32 buffer per (device, stream), grown when a grid needs more. Launches
# on one stream run one after another, so they can share it; launches on different streams get their
# own. Under CUDA graph capture every call gets a fresh torch.zeros (a memset node in the graph), so a
# graph never shares counters with eager calls or with other graphs that may be replayed concurrently.
_CNT_CACHE: dict = {}


def _counters(n: int, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros((n,), dtype=torch.int32, device=device)
        key = (device, torch.cuda.current_stream().cuda_stream)  # the stream Triton launches on
    else:  # the interpreter runs launches synchronously
        key = (device, 0)
    buf = _CNT_CACHE.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros((max(n, 2 * buf.numel() if buf is not None else 0),), dtype=torch.int32, device=device)
        _CNT_CACHE[key] = buf
    return buf


def _bwd_rows(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0, cfg, dx_out=None):
    B, D, L = x.shape
    W = weight.shape[1]
    CH = _rows_chunk(x, cfg)
    n_c = cdiv(L, CH)
    NS = cfg.get("NS", 1) if cfg["KIND"] == "streams" else 1
    n_p = cdiv(n_c, NS)  # programs along time, each with NS chunks
    dx = _layout_like(x, x.dtype) if dx_out is None else dx_out
    dh0 = new_empty(initial_states.shape, dtype=initial_states.dtype, device=x.device) if need_dh0 else None
    fuse = int(cfg.get("FUSE", False))  # 0: _partials_sum_kernel; 1, 2: fused sums in 1 or 2 levels
    # dweight rows, dbias row per program (two-level fused sums: B more rows for the per-batch sums)
    dwp = new_empty((B * n_p + (B if fuse == 2 else 0), W + 1, D), dtype=torch.float32, device=x.device)
    dbp = dwp[:, W]
    n_blk = cdiv(D, cfg["BD"])
    reset = bool(fuse and cfg.get("RESET", False))
    if fuse:  # the last program per channel block sums the partials (arrival counters)
        dw = new_empty((D, W), dtype=weight.dtype, device=x.device)
        db = new_empty((D,), dtype=bias.dtype, device=x.device) if bias is not None else None
        n_cnt = n_blk * (B + 1) if fuse == 2 else n_blk
        # RESET: counters left at 0 by the previous launch on this stream; else zeroed per call
        cnt = _counters(n_cnt, x.device) if reset else torch.zeros((n_cnt,), dtype=torch.int32, device=x.device)
    dummy = x
    args = (
        x, weight, bias if bias is not None else dummy, initial_states if initial_states is not None else dummy,
        seq_idx if seq_idx is not None else dummy, dy, dht if dht is not None else dummy, dx,
        dh0 if dh0 is not None else dummy, dwp, dbp,
        dw if fuse else dummy, (db if db is not None else dummy) if fuse else dummy, cnt if fuse else dummy,
        L, D, CH, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *(tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)), *dy.stride(), *_strides3(dht),
        *dx.stride(), *_strides3(dh0), *(dw.stride() if fuse else (0, 0)),
    )
    flags = dict(W=W, SILU=activation == "silu", HAS_BIAS=bias is not None,
                 HAS_H0=initial_states is not None, HAS_SEQ=seq_idx is not None, HAS_GH=dht is not None,
                 STORE_DH0=dh0 is not None)
    grid = (n_p, n_blk, B)
    fast = x.is_cuda and cfg.get("FAST", True)
    nw = cfg.get("num_warps", NS if cfg["KIND"] == "streams" else 1)
    # fused sums: RB partial rows per step, at most 8 fp32 per thread per accumulator (W + 1 of them)
    rb = max(1, min(16, 8 * 32 * nw // cfg["BD"]))
    if cfg["KIND"] == "streams":
        tail = cfg.get("TAIL", False) and CH % cfg["R"] == 0
        st = x.stride(2) if cfg.get("CST", False) and x.stride(2) == dy.stride(2) == dx.stride(2) else 0
        kw = dict(BD=cfg["BD"], R=cfg["R"], NS=NS, FAST=fast, FUSE=fuse, TAIL=tail, RB=rb, ST=st,
                  EVEN=tail and cfg.get("EVEN", False), RESET=reset, num_warps=nw)
        if FAST_LAUNCH and x.is_cuda:
            _launch(_conv1d_bwd_streams_kernel, grid, args, dict(flags, **kw))
        else:
            _conv1d_bwd_streams_kernel[grid](*args, **flags, **kw)
    else:
        _conv1d_bwd_rows_kernel[grid](*args, **flags, BD=cfg["BD"], R=cfg["R"], PF=cfg.get("PF", False),
                                      FAST=fast, FUSE=fuse, RB=rb, RESET=reset, num_warps=nw)
    if not fuse:
        dw, db = _reduce_partials(dwp, weight, bias)
    return dx, dw, db, dh0


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation, initial_states, return_final_states, seq_idx):
        y, ht = causal_conv1d_fwd(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
        ctx.save_for_backward(x, weight, bias, initial_states, seq_idx)
        ctx.activation = activation
        ctx.dx_dest = grad_dest(x)  # dx into a caller's slab (utils.GradSlab)
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
            need_dh0=initial_states is not None and ctx.needs_input_grad[4],
            dx_out=take_dest(ctx.dx_dest) if ctx.needs_input_grad[0] else None)
        return dx, dw, db, None, dh0, None, None


# torch.library registration: torch.compile traces the ops as opaque nodes (fake impls give the output
# shapes and strides) instead of breaking the graph at the Triton launch. Eager calls keep the plain
# autograd.Function above, which skips the custom-op dispatch overhead.
_EMPTY = (0,)


def _fake_like_x(x, dtype):
    B, D, L = x.shape
    if x.stride(1) == 1 and L > 1 and D > 1:
        return x.new_empty((B, L, D), dtype=dtype).transpose(1, 2)
    return x.new_empty((B, D, L), dtype=dtype)


@torch.library.custom_op("hybridna::causal_conv1d_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
            initial_states: Optional[torch.Tensor], return_final_states: bool,
            seq_idx: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    y, ht = causal_conv1d_fwd(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
    return y, (ht if ht is not None else x.new_empty(_EMPTY))


@_fwd_op.register_fake
def _fwd_fake(x, weight, bias, activation, initial_states, return_final_states, seq_idx):
    B, D, _ = x.shape
    ht = x.new_empty((B, D, weight.shape[1] - 1)) if return_final_states else x.new_empty(_EMPTY)
    return _fake_like_x(x, x.dtype), ht


@torch.library.custom_op("hybridna::causal_conv1d_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
            initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor], dy: torch.Tensor,
            dht: Optional[torch.Tensor], need_dh0: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db, dh0 = causal_conv1d_bwd(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0)
    return (dx, dw, db if db is not None else x.new_empty(_EMPTY),
            dh0 if dh0 is not None else x.new_empty(_EMPTY))


@_bwd_op.register_fake
def _bwd_fake(x, weight, bias, activation, initial_states, seq_idx, dy, dht, need_dh0):
    db = bias.new_empty(bias.shape) if bias is not None else x.new_empty(_EMPTY)
    dh0 = initial_states.new_empty(initial_states.shape) if need_dh0 else x.new_empty(_EMPTY)
    return _fake_like_x(x, x.dtype), weight.new_empty(weight.shape), db, dh0


def _op_setup_context(ctx, inputs, output):
    x, weight, bias, activation, initial_states, return_final_states, seq_idx = inputs
    ctx.save_for_backward(x, weight, bias, initial_states, seq_idx)
    ctx.activation = activation
    ctx.has_ht = return_final_states
    ctx.has_bias = bias is not None
    ctx.has_h0 = initial_states is not None


def _op_backward(ctx, dy, dht):
    x, weight, bias, initial_states, seq_idx = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    need_dh0 = ctx.has_h0 and ctx.needs_input_grad[4]
    dx, dw, db, dh0 = _bwd_op(x, weight, bias, ctx.activation, initial_states, seq_idx, dy,
                              dht if ctx.has_ht else None, need_dh0)
    return dx, dw, (db if ctx.has_bias else None), None, (dh0 if need_dh0 else None), None, None


_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


def causal_conv1d_fn(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                     seq_idx=None):
    """Differentiable kernel path of causal_conv1d (inputs already validated)."""
    if _is_compiling():
        y, ht = _fwd_op(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
        return (y, ht) if return_final_states else y
    return _CausalConv1dFn.apply(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
