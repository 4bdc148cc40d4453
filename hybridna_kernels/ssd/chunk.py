"""Triton kernels of the chunked SSD scan (forward and backward) and their autograd wiring.

Notation (README.md): b batch, T tokens, H heads, P headdim, G groups, N dstate, Q chunk size,
nc = cdiv(T, Q) chunks; u = processed dt, a = u * A, cs = within-chunk cumsum of a.

Forward:  cumsum -> bmm (CB = C B^T per group and chunk) -> chunk_state (local chunk states)
          -> state_pass (states entering each chunk, final states) -> chunk_scan (y).
Backward: gate (dz, dy * silu(z)) -> chunk_state in reverse mode (dy-side local states)
          -> state_pass_bwd (gradient of each chunk's end state, d(initial), d cs_last)
          -> scan_bwd_dx (dx, du, d cs, dD) -> scan_bwd_dc / scan_bwd_db (per group, looping over
          its heads) -> cumsum_bwd (ddt, dA, d dt_bias).

Every reduction over programs goes through a partial buffer summed by torch, so results are
deterministic (no atomics). Packed sequences (seq_idx / cu_seqlens) are re-laid out so that every
segment starts on a chunk boundary (README.md, "Packed sequences"); the kernels then only see
per-chunk tables: valid length, state reset (and which initial state), final-state slot.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils import grad_dest, interpret_mode, new_empty, next_pow2, take_dest

# Chunk tables for packed input: chunk_init[c] = -2 (carry the state in), -1 (start from zero),
# k >= 0 (start from initial_states[k]); chunk_final[c] = k >= 0 when the state after chunk c is
# final_states[k], -3 when a segment ends there without a final slot, -1 inside a segment;
# chunk_len[c] = valid tokens of chunk c (the rest is padding, u = 0).
CONTINUE, NOT_END, DISCARD = -2, -1, -3


def _p2(n: int, lo: int = 16) -> int:
    return max(lo, next_pow2(int(n)))


@triton.jit
def _softplus(d):
    # torch's softplus (threshold 20); log(1 + e) is replaced by its series where e is tiny.
    e = tl.exp(tl.minimum(d, 20.0))
    sp = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
    return tl.where(d <= 20.0, sp, d)


@triton.jit
def _dt_proc(d, lo, hi, SOFTPLUS: tl.constexpr, HAS_HI: tl.constexpr):
    """dt + dt_bias -> u: softplus (SOFTPLUS), then clamped to [lo, hi] (hi only with HAS_HI)."""
    if SOFTPLUS:
        d = _softplus(d)
    d = tl.maximum(d, lo)
    if HAS_HI:
        d = tl.minimum(d, hi)
    return d


@triton.jit
def _dot_exact_f32(a, b):
    """a @ b for fp32 b and an `a` whose values are exact in tf32 (16-bit inputs widened to fp32),
    to about 21 bits: b = hi + lo with hi its tf32 part, two tf32 products.

    A plain tf32 dot drops b's low 13 mantissa bits on the GPU (the interpreter computes it in full
    fp32, so CPU tests never saw that loss): measured with the tf32 rounding emulated on CPU, it pushed
    d dt_bias to 5.5e-3 > 5e-3 in fp16. Two tf32 products cost less than tf32x3's three."""
    hi = (b.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return tl.dot(a, hi, input_precision="tf32") + tl.dot(a, b - hi, input_precision="tf32")


@triton.jit
def _ld_cs(cs_ptr, csh_ptr, csl_ptr, off, CS64: tl.constexpr):
    """Within-chunk cumsum at `off` as (hi, lo) fp32 with hi + lo = cs to ~48 bits: from the fp32 planes
    the cumsum kernel writes (no fp64 work here), or (CS64) the fp64 value and a dummy lo."""
    if CS64:
        return tl.load(cs_ptr + off), 0.0
    else:
        return tl.load(csh_ptr + off), tl.load(csl_ptr + off)


@triton.jit
def _seg_decay(hi_i, lo_i, hi_j, lo_j, CS64: tl.constexpr):
    """exp(min(cs_i[:, None] - cs_j[None, :], 0)) in fp32.

    CS64: hi is the fp64 cumsum, the tile difference in fp64 (fp64 tile arithmetic and an fp64->fp32
    conversion per element). Otherwise (hi_i - hi_j) + (lo_i - lo_j) in fp32: the large parts cancel in
    the hi difference, so the result keeps a relative error of ~1e-7 of the difference, not of |cs|."""
    if CS64:
        d = tl.minimum(hi_i[:, None] - hi_j[None, :], 0.0).to(tl.float32)
    else:
        d = tl.minimum((hi_i[:, None] - hi_j[None, :]) + (lo_i[:, None] - lo_j[None, :]), 0.0)
    return tl.exp(d)


@triton.jit
def _seg_decay_t(hi_i, lo_i, hi_j, lo_j, CS64: tl.constexpr):
    """exp(min(cs_i[None, :] - cs_j[:, None], 0)): _seg_decay laid out transposed (rows j, columns i)."""
    if CS64:
        d = tl.minimum(hi_i[None, :] - hi_j[:, None], 0.0).to(tl.float32)
    else:
        d = tl.minimum((hi_i[None, :] - hi_j[:, None]) + (lo_i[None, :] - lo_j[:, None]), 0.0)
    return tl.exp(d)


@triton.jit
def _pids(HFIRST: tl.constexpr):
    """(chunk index b * nc + c, head, block) of this program. HFIRST: the grid is (H, blocks, b * nc), so
    the programs of one chunk (all heads and blocks) run next to one another and share its CB / B / C
    tiles in L2; otherwise (b * nc, H, blocks)."""
    if HFIRST:
        return tl.program_id(2).to(tl.int64), tl.program_id(0).to(tl.int64), tl.program_id(1)
    else:
        return tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)


_GRID_Z_MAX = 65535   # CUDA's limit on grid dimensions 1 and 2 (tests lower it to reach the fallback order)


def _hfirst(b_nc, hfirst):
    """Heads-fastest grid order where the (batch x chunk) count fits grid dimension 2; the kernels' HFIRST
    flag must be this, not cfg["hfirst"], or a fallback grid is read in the wrong order (wrong results past
    ~16.7M tokens per call at chunk 256, before session 5)."""
    return bool(hfirst) and b_nc <= _GRID_Z_MAX


def _grid(b_nc, H, nblk, hfirst):
    return (H, nblk, b_nc) if _hfirst(b_nc, hfirst) else (b_nc, H, nblk)


@triton.jit
def _dot_exact_f32_a(a, b):
    """_dot_exact_f32 with the roles swapped: fp32 `a` (split into tf32 hi + lo), tf32-exact `b`."""
    hi = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return tl.dot(hi, b, input_precision="tf32") + tl.dot(a - hi, b, input_precision="tf32")


@triton.jit
def _dot_f32_16(a, b, SPLIT: tl.constexpr):
    """a @ b for an fp32 `a` and a 16-bit `b` (fp32 accumulation). SPLIT 0: `a` rounded to b's dtype,
    one 16-bit product. SPLIT 1: `a` kept to ~16 bits (bf16: hi + lo bf16 pieces, two bf16 products;
    fp16: tf32 hi + lo, two tf32 products, which also avoids fp16's range)."""
    if SPLIT == 0:
        return tl.dot(a.to(b.dtype), b)
    elif b.dtype == tl.bfloat16:
        hi = a.to(tl.bfloat16)
        return tl.dot(hi, b) + tl.dot((a - hi.to(tl.float32)).to(tl.bfloat16), b)
    else:
        return _dot_exact_f32_a(a, b.to(tl.float32))


@triton.jit
def _dot_split_bf16(a, b, TERMS: tl.constexpr):
    """a @ b for a bf16 `a` and an fp32 `b` split into TERMS bf16 pieces (8 bits each: 2 -> ~16 bits,
    3 -> ~24 bits), TERMS bf16 products (a tf32 product costs two bf16 ones on the tensor cores)."""
    b1 = b.to(tl.bfloat16)
    r = b - b1.to(tl.float32)
    b2 = r.to(tl.bfloat16)
    acc = tl.dot(a, b1) + tl.dot(a, b2)
    if TERMS == 3:
        acc += tl.dot(a, (r - b2.to(tl.float32)).to(tl.bfloat16))
    return acc


# ------------------------------------------------------------------------------------------------
# forward kernels


@triton.jit
def _dt_tile(clen_ptr, T, H, Q: tl.constexpr, BH: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The cumsum kernels' tile: batch i_b, chunk i_c, heads o_h (mask m_h) over the chunk's Q steps o_t;
    m masks the valid (step, head) pairs."""
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1).to(tl.int64)
    i_h = tl.program_id(2)
    o_t = tl.arange(0, Q)
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < H
    n_valid = T - i_c * Q
    if IS_VARLEN:
        n_valid = tl.load(clen_ptr + i_c).to(tl.int64)
    m_t = o_t < n_valid
    m = m_t[:, None] & m_h[None, :]
    return i_b, i_c, o_t, o_h, m_h, m


@triton.jit
def _dt_load(dt_ptr, bias_ptr, i_b, i_c, o_t, o_h, m_h, m, s_dt_b, s_dt_t, s_dt_h,
             Q: tl.constexpr, HAS_BIAS: tl.constexpr):
    """dt + dt_bias of a _dt_tile tile in fp32 (masked dt loads read 0)."""
    p_dt = dt_ptr + i_b * s_dt_b + (i_c * Q + o_t)[:, None] * s_dt_t + o_h[None, :] * s_dt_h
    d = tl.load(p_dt, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        d += tl.load(bias_ptr + o_h, mask=m_h, other=0.0).to(tl.float32)[None, :]
    return d


@triton.jit
def _cumsum_fwd_kernel(dt_ptr, bias_ptr, A_ptr, clen_ptr, u_ptr, cs_ptr, csh_ptr, csl_ptr,
                       T, H, nc, s_dt_b, s_dt_t, s_dt_h, lo, hi,
                       Q: tl.constexpr, BH: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                       HAS_HI: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_b, i_c, o_t, o_h, m_h, m = _dt_tile(clen_ptr, T, H, Q, BH, IS_VARLEN)
    d = _dt_load(dt_ptr, bias_ptr, i_b, i_c, o_t, o_h, m_h, m, s_dt_b, s_dt_t, s_dt_h, Q, HAS_BIAS)
    d = tl.where(m, _dt_proc(d, lo, hi, SOFTPLUS, HAS_HI), 0.0)
    A = tl.load(A_ptr + o_h, mask=m_h, other=0.0).to(tl.float32)
    # fp64 cumsum: kernels take differences cs_i - cs_j of values that can be large (|cs| ~ 1e3..1e4
    # with big dt); in fp32 those differences lost ~1e-4 absolute, i.e. relative error in the decays
    cs = tl.cumsum((d * A[None, :]).to(tl.float64), axis=0)
    o_out = ((i_b * H + o_h[None, :]) * nc + i_c) * Q + o_t[:, None]
    tl.store(u_ptr + o_out, d, mask=m_h[None, :])
    tl.store(cs_ptr + o_out, cs, mask=m_h[None, :])
    # the same as fp32 planes hi + lo for the kernels that form Q x Q decay tiles (no fp64 tile math)
    cs_hi = cs.to(tl.float32)
    tl.store(csh_ptr + o_out, cs_hi, mask=m_h[None, :])
    tl.store(csl_ptr + o_out, (cs - cs_hi.to(tl.float64)).to(tl.float32), mask=m_h[None, :])


@triton.jit
def _bmm_fwd_kernel(C_ptr, B_ptr, cb_ptr, T, G, N, nc, s_b, s_t, s_g,
                    Q: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, DOT_PREC: tl.constexpr):
    """cb[b, c, g, i, j] = C_i . B_j for the lower block triangle (upper blocks are never read)."""
    i_bc = tl.program_id(0).to(tl.int64)
    i_g = tl.program_id(1).to(tl.int64)
    i_mn = tl.program_id(2)
    nb = Q // BM
    i_m = i_mn // nb
    i_n = i_mn % nb
    if i_n > i_m:
        return
    i_b = i_bc // nc
    i_c = i_bc % nc
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = i_n * BM + tl.arange(0, BM)
    # int64 scalar bases, int32 tile offsets (int64 tiles of pointers cost registers and spills)
    base = i_b * s_b + i_g * s_g + i_c * Q * s_t
    nv = tl.minimum(T - i_c * Q, Q).to(tl.int32)
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    for k in range(0, N, BK):
        o_k = k + tl.arange(0, BK)
        m_k = o_k < N
        c = tl.load(C_ptr + base + (o_m[:, None] * s_t + o_k[None, :]), mask=(o_m < nv)[:, None] & m_k[None, :],
                    other=0.0)
        bT = tl.load(B_ptr + base + (o_n[None, :] * s_t + o_k[:, None]), mask=(o_n < nv)[None, :] & m_k[:, None],
                     other=0.0)
        acc += tl.dot(c, bT, input_precision=DOT_PREC)
    p = cb_ptr + (i_bc * G + i_g) * Q * Q + o_m[:, None] * Q + o_n[None, :]
    tl.store(p, acc.to(cb_ptr.dtype.element_ty))


@triton.jit
def _local_state(x_ptr, B_ptr, u_ptr, cs_ptr, i_b, i_c, i_h, i_g, o_xr, o_n, m_p, m_n, T, H, nc,
                 s_x_b, s_x_t, s_x_h, s_B_b, s_B_t, s_B_g, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, REVERSE: tl.constexpr, DOT_PREC: tl.constexpr, XW_SPLIT: tl.constexpr):
    """The chunk-state sum of _chunk_state_kernel (its docstring) for rows o_xr of x and columns o_n of B:
    (the BP x BN fp32 local state, cs_last)."""
    o_uc = ((i_b * H + i_h) * nc + i_c) * Q
    cs_last = tl.load(cs_ptr + o_uc + Q - 1)
    nv = tl.minimum(T - i_c * Q, Q).to(tl.int32)
    p_x = x_ptr + i_b * s_x_b + i_h * s_x_h + i_c * Q * s_x_t
    p_B = B_ptr + i_b * s_B_b + i_g * s_B_g + i_c * Q * s_B_t
    acc = tl.zeros([BP, BN], dtype=tl.float32)
    for k in range(0, Q, BK):
        o_k = k + tl.arange(0, BK)
        m_k = o_k < nv
        xT = tl.load(p_x + (o_k[None, :] * s_x_t + o_xr[:, None]), mask=m_k[None, :] & m_p[:, None], other=0.0)
        b = tl.load(p_B + (o_k[:, None] * s_B_t + o_n[None, :]), mask=m_k[:, None] & m_n[None, :], other=0.0)
        cs_k = tl.load(cs_ptr + o_uc + o_k)
        if REVERSE:
            w = tl.exp(tl.minimum(cs_k, 0.0).to(tl.float32))
        else:
            w = tl.exp(tl.minimum(cs_last - cs_k, 0.0).to(tl.float32)) * tl.load(u_ptr + o_uc + o_k)
        xw = xT.to(tl.float32) * w[None, :]
        if XW_SPLIT >= 0:
            acc += _dot_f32_16(xw, b, XW_SPLIT)
        else:
            acc += tl.dot(xw.to(b.dtype), b, input_precision=DOT_PREC)
    return acc, cs_last


@triton.jit
def _chunk_state_kernel(x_ptr, B_ptr, u_ptr, cs_ptr, out_ptr,
                        T, H, G, nc, P, N, s_x_b, s_x_t, s_x_h, s_B_b, s_B_t, s_B_g,
                        Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        REVERSE: tl.constexpr, HFIRST: tl.constexpr, DOT_PREC: tl.constexpr,
                        XW_SPLIT: tl.constexpr):
    """out[b, c, h] (P x N) = sum_k w_k x_k B_k^T over the chunk, fp32.

    Forward (chunk end state): w_k = exp(cs_last - cs_k) u_k.  REVERSE (gradient side, x = dy,
    B = C): w_k = exp(cs_k), the decay from the chunk start to k.
    """
    i_bc, i_h, i_pn = _pids(HFIRST)
    i_b = i_bc // nc
    i_c = i_bc % nc
    i_g = i_h // (H // G)
    nbn = tl.cdiv(N, BN)
    o_p = (i_pn // nbn) * BP + tl.arange(0, BP)
    o_n = (i_pn % nbn) * BN + tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    acc, _ = _local_state(x_ptr, B_ptr, u_ptr, cs_ptr, i_b, i_c, i_h, i_g, o_p, o_n, m_p, m_n, T, H, nc,
                          s_x_b, s_x_t, s_x_h, s_B_b, s_B_t, s_B_g, Q, BP, BN, BK, REVERSE, DOT_PREC, XW_SPLIT)
    p_o = out_ptr + (i_bc * H + i_h) * P * N + o_p[:, None] * N + o_n[None, :]
    tl.store(p_o, acc, mask=m_p[:, None] & m_n[None, :])


@triton.jit
def _ld_hin(hin_ptr, hinlo_ptr, off, mask, HIN_SPLIT: tl.constexpr):
    """hin at `off` in fp32: hi + lo planes (HIN_SPLIT) or the one buffer."""
    h = tl.load(hin_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HIN_SPLIT:
        h += tl.load(hinlo_ptr + off, mask=mask, other=0.0).to(tl.float32)
    return h


@triton.jit
def _state_step(h, s, cs_last, i_bc, i_c, i_h, H, PN, o_s, m_s, cfin_ptr, hin_ptr, hinlo_ptr, fin_ptr,
                IS_VARLEN: tl.constexpr, HIN_SPLIT: tl.constexpr):
    """One chunk of the forward state passing, h the state entering chunk i_c (chunk index i_bc) and s its local
    state: hin[c] = h stored, and the state after the chunk, exp(cs_last) h + s, returned (and stored where the
    chunk table of packed input makes it a final state)."""
    o_st = (i_bc * H + i_h) * PN + o_s
    h_hi = h.to(hin_ptr.dtype.element_ty)
    tl.store(hin_ptr + o_st, h_hi, mask=m_s)
    if HIN_SPLIT:  # 16-bit hi plane (what the scan reads) + 16-bit lo plane: hin to ~16 bits
        tl.store(hinlo_ptr + o_st, (h - h_hi.to(tl.float32)).to(hinlo_ptr.dtype.element_ty), mask=m_s)
    h = tl.exp(tl.minimum(cs_last, 0.0).to(tl.float32)) * h + s
    if IS_VARLEN:
        cf = tl.load(cfin_ptr + i_c)
        k2 = tl.maximum(cf, 0).to(tl.int64)
        tl.store(fin_ptr + (k2 * H + i_h) * PN + o_s, h, mask=m_s & ((o_s * 0 + cf) >= 0))
    return h


@triton.jit
def _state_pass_fwd_kernel(st_ptr, cs_ptr, init_ptr, cinit_ptr, cfin_ptr, hin_ptr, hinlo_ptr, fin_ptr,
                           H, nc, PN,
                           Q: tl.constexpr, BS: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr,
                           HIN_SPLIT: tl.constexpr):
    """Sequential over chunks: hin[c] = state entering chunk c; h <- exp(cs_last) h + local[c].
    Loads run two chunks ahead: long sequences put few programs through many chunks, and without
    the prefetch every chunk pays a full memory latency."""
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    o_s = tl.program_id(2) * BS + tl.arange(0, BS)
    m_s = o_s < PN
    if HAS_INIT and not IS_VARLEN:
        h = tl.load(init_ptr + (i_b * H + i_h) * PN + o_s, mask=m_s, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BS], dtype=tl.float32)
    o_cs = (i_b * H + i_h) * nc * Q + Q - 1
    s1 = tl.load(st_ptr + ((i_b * nc) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
    l1 = tl.load(cs_ptr + o_cs)
    c2 = tl.minimum(1, nc - 1)
    s2 = tl.load(st_ptr + ((i_b * nc + c2) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
    l2 = tl.load(cs_ptr + o_cs + c2 * Q)
    for c in range(nc):
        s = s1
        cs_last = l1
        s1 = s2
        l1 = l2
        cn = tl.minimum(c + 2, nc - 1)
        s2 = tl.load(st_ptr + ((i_b * nc + cn) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
        l2 = tl.load(cs_ptr + o_cs + cn * Q)
        if IS_VARLEN:
            ci = tl.load(cinit_ptr + c)
            if ci != -2:
                if HAS_INIT:
                    k = tl.maximum(ci, 0).to(tl.int64)
                    h = tl.load(init_ptr + (k * H + i_h) * PN + o_s, mask=m_s & ((o_s * 0 + ci) >= 0),
                                other=0.0).to(tl.float32)
                else:
                    h = tl.zeros([BS], dtype=tl.float32)
        h = _state_step(h, s, cs_last, i_b * nc + c, c, i_h, H, PN, o_s, m_s, cfin_ptr, hin_ptr, hinlo_ptr, fin_ptr,
                        IS_VARLEN, HIN_SPLIT)
    if not IS_VARLEN:
        tl.store(fin_ptr + (i_b * H + i_h) * PN + o_s, h, mask=m_s)


@triton.jit(do_not_specialize=["NBAT"])  # batch 1 (the reference checks) and 8 share one compile
def _state_chain_fwd_kernel(x_ptr, B_ptr, u_ptr, cs_ptr, init_ptr, cinit_ptr, cfin_ptr, hin_ptr, hinlo_ptr, fin_ptr,
                            ring_ptr, sync_ptr,
                            T, H, G, nc, P, N, NBLK, NBAT, RS, s_x_b, s_x_t, s_x_h, s_B_b, s_B_t, s_B_g,
                            Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                            HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, HIN_SPLIT: tl.constexpr,
                            DOT_PREC: tl.constexpr, XW_SPLIT: tl.constexpr, LEAN: tl.constexpr = False):
    """chunk_state and state_pass in one kernel that stays parallel over chunks (state_chain): each program
    forms its chunk's local state (as _chunk_state_kernel, forward), then waits for the program of the
    previous chunk (same batch, heads, P x N block) to publish the state entering this chunk, writes hin[c],
    and publishes h <- exp(cs_last) h + local for the next chunk. The fp32 local states never go through
    memory; the carried state goes through a two-slot fp32 ring (per batch, head; it stays in L2).

    Order: the programs take a ticket (an atomic counter) and decode their (chunk, batch, heads, block) from
    it, chunk slowest, so the program a program waits for has started before it (no deadlock whatever order
    the hardware starts them in), and b * H * NBLK tickets before it: with batch-major order the
    resident programs would cover a few chunks of one sequence, each waiting on the one before (one flag
    hand-off per chunk on the critical path, ~b * nc of them). sync_ptr: [ticket, one flag per (batch, head,
    block)], zeroed before the launch; flag = the number of chunks published. Slot c % 2 holds the state after chunk c:
    program c writes it only after program c - 1 (which read slot c % 2, written by c - 2) has published, so
    two slots suffice (RS: the elements of one slot, b * H * P * N). Same arithmetic as the two-kernel path
    (hin, final states and y bitwise equal)."""
    t = tl.atomic_add(sync_ptr, 1).to(tl.int64)
    i_pn = t % NBLK
    i_h = (t // NBLK) % H
    i_cb = t // (NBLK * H)  # chunk-major: i_c * NBAT + i_b
    i_b = i_cb % NBAT
    i_c = i_cb // NBAT
    i_bc = i_b * nc + i_c
    i_g = i_h // (H // G)
    nbn = tl.cdiv(N, BN)
    # hr (always 0) is what is left of session 6's two-heads-per-program option (chain_hp, removed in session 9).
    # The compiled code depends on it (offline sm_90, Triton 3.6, bf16 P64 N128 Q256): LEAN (config key chain_lean,
    # opt-in) drops it: 4528 SASS instructions instead of 5408 with grad (3776 instead of 4184 without), 128
    # shared-memory loads instead of 680; the same arithmetic. Not yet timed on a GPU: the default once it is faster.
    if LEAN:
        o_p = (i_pn // nbn) * BP + tl.arange(0, BP)
    else:
        o_r = tl.arange(0, BP)
        hr = o_r // BP
        o_p = (i_pn // nbn) * BP + o_r % BP
    o_n = (i_pn % nbn) * BN + tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    m_s = m_p[:, None] & m_n[None, :]
    PN = P * N
    if LEAN:
        o_s = (o_p * N)[:, None] + o_n[None, :]
        o_xr = o_p
    else:
        o_s = (hr * PN + o_p * N)[:, None] + o_n[None, :]
        o_xr = hr * s_x_h + o_p
    acc, cs_last = _local_state(x_ptr, B_ptr, u_ptr, cs_ptr, i_b, i_c, i_h, i_g, o_xr, o_n, m_p, m_n, T, H, nc,
                                s_x_b, s_x_t, s_x_h, s_B_b, s_B_t, s_B_g, Q, BP, BN, BK, False, DOT_PREC, XW_SPLIT)
    # the state entering this chunk
    flag = sync_ptr + 1 + (i_b * H + i_h) * NBLK + i_pn
    o_ring = (i_b * H + i_h) * PN + o_s
    if HAS_INIT and not IS_VARLEN:
        h = tl.load(init_ptr + (i_b * H + i_h) * PN + o_s, mask=m_s, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BP, BN], dtype=tl.float32)
    if i_c > 0:
        # bounded (2^16 polls, ~50 ms; a legitimate wait is a few programs long, microseconds): a broken chain
        # gives wrong states, which the tests see, instead of a hung GPU
        spins = 0
        while (tl.atomic_add(flag, 0, sem="acquire") < i_c) & (spins < 65536):
            spins += 1
        h = tl.load(ring_ptr + ((i_c - 1) % 2) * RS + o_ring, mask=m_s, other=0.0, cache_modifier=".cg")
    if IS_VARLEN:
        ci = tl.load(cinit_ptr + i_c)
        if ci != -2:
            if HAS_INIT:
                k0 = tl.maximum(ci, 0).to(tl.int64)
                h = tl.load(init_ptr + (k0 * H + i_h) * PN + o_s, mask=m_s & ((o_s * 0 + ci) >= 0),
                            other=0.0).to(tl.float32)
            else:
                h = tl.zeros([BP, BN], dtype=tl.float32)
    h = _state_step(h, acc, cs_last, i_bc, i_c, i_h, H, PN, o_s, m_s, cfin_ptr, hin_ptr, hinlo_ptr, fin_ptr,
                    IS_VARLEN, HIN_SPLIT)
    if not IS_VARLEN:
        if i_c == nc - 1:
            tl.store(fin_ptr + (i_b * H + i_h) * PN + o_s, h, mask=m_s)
    if i_c < nc - 1:
        tl.store(ring_ptr + (i_c % 2) * RS + o_ring, h, mask=m_s)
        tl.debug_barrier()  # every thread's part of the state is stored before the flag is raised
        tl.atomic_xchg(flag, (i_c + 1).to(tl.int32), sem="release")


@triton.jit
def _scan_out(acc, x_ptr, z_ptr, D_ptr, y_ptr, ypre_ptr, i_b, i_h, t0, o_m, o_p, m_m, m_p, P,
              s_x_b, s_x_t, s_x_h, s_z_b, s_z_t, s_z_h, s_y_b, s_y_t, s_y_h,
              HAS_D: tl.constexpr, D_PER_CHAN: tl.constexpr, HAS_Z: tl.constexpr, STORE_YPRE: tl.constexpr):
    """The scan's epilogue for head i_h: + D x, ypre, * silu(z), y stored."""
    p_x = x_ptr + i_b * s_x_b + i_h * s_x_h + t0 * s_x_t
    m = m_m[:, None] & m_p[None, :]
    if HAS_D:
        xm = tl.load(p_x + (o_m[:, None] * s_x_t + o_p[None, :]), mask=m, other=0.0).to(tl.float32)
        if D_PER_CHAN:
            Dv = tl.load(D_ptr + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32)[None, :]
        else:
            Dv = tl.load(D_ptr + i_h).to(tl.float32)
        acc += Dv * xm
    o_y = (o_m[:, None] * s_y_t + o_p[None, :])
    b_y = i_b * s_y_b + t0 * s_y_t + i_h * s_y_h
    if HAS_Z:
        if STORE_YPRE:
            tl.store(ypre_ptr + b_y + o_y, acc.to(ypre_ptr.dtype.element_ty), mask=m)
        z = tl.load(z_ptr + i_b * s_z_b + t0 * s_z_t + i_h * s_z_h + (o_m[:, None] * s_z_t + o_p[None, :]), mask=m,
                    other=0.0)
        z = z.to(tl.float32)
        acc *= z * tl.sigmoid(z)
    tl.store(y_ptr + b_y + o_y, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scan_e(csh_ptr, csl_ptr, off):
    """log2(e) cs at `off` as one fp32 value (scan_e2), from the hi / lo planes."""
    return (tl.load(csh_ptr + off) + tl.load(csl_ptr + off)) * 1.4426950408889634


@triton.jit
def _ex2_ftz(x):
    """2^x as ex2.approx.ftz (CUDA only, inline PTX; _exp_ftz without its log2(e) multiply)."""
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _scan_ex2(x, FTZ: tl.constexpr):
    if FTZ:
        return _ex2_ftz(x)
    else:
        return tl.math.exp2(x)


@triton.jit
def _chunk_scan_fwd_kernel(x_ptr, z_ptr, C_ptr, cb_ptr, u_ptr, cs_ptr, csh_ptr, csl_ptr, hin_ptr, D_ptr, y_ptr,
                           ypre_ptr,
                           T, H, G, nc, P, N,
                           s_x_b, s_x_t, s_x_h, s_z_b, s_z_t, s_z_h, s_C_b, s_C_t, s_C_g, s_y_b, s_y_t, s_y_h,
                           Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
                           HAS_D: tl.constexpr, D_PER_CHAN: tl.constexpr, HAS_Z: tl.constexpr,
                           STORE_YPRE: tl.constexpr, HFIRST: tl.constexpr, DOT_PREC: tl.constexpr, CS64: tl.constexpr,
                           R1: tl.constexpr,
                           SPLIT: tl.constexpr = False, FTZ: tl.constexpr = False, E2: tl.constexpr = False):
    """y_i = exp(cs_i) C_i hin^T + sum_{j<=i} CB_ij exp(cs_i - cs_j) u_j x_j (+ D x_i) (* silu(z_i)).

    R1: below the diagonal block the decay factors through the cumsum c0 just before this row block,
    exp(cs_i - cs_j) = exp(cs_i - c0) exp(c0 - cs_j), both factors <= 1 (cs does not increase). Those
    blocks then take a column scale of CB (exp(c0 - cs_j) u_j, one exp per column) and one row scale
    exp(cs_i - c0) of the sum (shared with the state term, exp(cs_i) = exp(cs_i - c0) exp(c0)); only the
    diagonal block forms the full Q x Q-style decay tile. The 16-bit operand is CB e^{c0 - cs_j} u_j,
    rounded once, as before (|.| <= |CB u_j| as before).

    SPLIT (scan_split; not R1 / CS64): the blocks strictly below the diagonal block run in a loop of their
    own, without the causal select and the clamp of the decay exponent (there j < i, so cs_i - cs_j <= 0 for
    A <= 0: the same tile; for A > 0 the unclamped value, as the reference). FTZ (scan_ftz; CUDA only, not
    CS64): the decay tiles' exp as ex2.approx.ftz (_exp_ftz: no denormal fix-up; exp below 2^-126 flushes
    to 0). E2 (scan_e2; 16-bit inputs, not R1 / CS64): the decay tile as exp2(e_i - e_j) with
    e = log2(e) cs in one fp32 value per row / column (formed from hi + lo): one subtraction per element
    instead of three and the log2(e) multiply, at an absolute exponent error of ~|cs| 2^-23 (|cs| 1e3:
    relative 1e-4 in the tile, under the 16-bit operand's rounding)."""
    i_bc, i_h, i_mp = _pids(HFIRST)
    i_b = i_bc // nc
    i_c = i_bc % nc
    i_g = i_h // (H // G)
    nbp = tl.cdiv(P, BP)
    i_m = i_mp // nbp
    o_m = i_m * BM + tl.arange(0, BM)
    o_p = (i_mp % nbp) * BP + tl.arange(0, BP)
    t0 = i_c * Q
    nv = tl.minimum(T - t0, Q).to(tl.int32)
    m_m = o_m < nv
    m_p = o_p < P
    o_uc = ((i_b * H + i_h) * nc + i_c) * Q
    cs_m, csl_m = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_m, CS64)
    p_x = x_ptr + i_b * s_x_b + i_h * s_x_h + t0 * s_x_t
    dt_in = x_ptr.dtype.element_ty

    acc = tl.zeros([BM, BP], dtype=tl.float32)
    p_hin = hin_ptr + (i_bc * H + i_h) * P * N
    p_C = C_ptr + i_b * s_C_b + i_g * s_C_g + t0 * s_C_t
    for n in range(0, N, BN):
        o_n = n + tl.arange(0, BN)
        m_n = o_n < N
        c = tl.load(p_C + (o_m[:, None] * s_C_t + o_n[None, :]), mask=m_m[:, None] & m_n[None, :], other=0.0)
        hT = tl.load(p_hin + o_p[None, :] * N + o_n[:, None], mask=m_p[None, :] & m_n[:, None], other=0.0)
        acc += tl.dot(c.to(dt_in), hT.to(dt_in), input_precision=DOT_PREC)

    p_cb = cb_ptr + (i_bc * G + i_g) * Q * Q
    if R1:
        # c0 = cs just before this row block (0 at the chunk start), as hi + lo
        o_r = o_uc + tl.maximum(i_m * BM - 1, 0)
        c0h = tl.where(i_m > 0, tl.load(csh_ptr + o_r), 0.0)
        c0l = tl.where(i_m > 0, tl.load(csl_ptr + o_r), 0.0)
        acc *= tl.exp(tl.minimum(c0h + c0l, 0.0))
        for k in range(0, i_m * BM, BK):  # blocks strictly below the diagonal block: all written
            o_k = k + tl.arange(0, BK)
            cb = tl.load(p_cb + o_m[:, None] * Q + o_k[None, :]).to(tl.float32)
            s_k = tl.exp(tl.minimum((c0h - tl.load(csh_ptr + o_uc + o_k)) + (c0l - tl.load(csl_ptr + o_uc + o_k)),
                                    0.0)) * tl.load(u_ptr + o_uc + o_k)
            xk = tl.load(p_x + (o_k[:, None] * s_x_t + o_p[None, :]), mask=(o_k < nv)[:, None] & m_p[None, :],
                         other=0.0)
            acc += tl.dot((cb * s_k[None, :]).to(dt_in), xk, input_precision=DOT_PREC)
        acc *= tl.exp(tl.minimum((cs_m - c0h) + (csl_m - c0l), 0.0))[:, None]
        k_lo = i_m * BM
    else:
        acc *= tl.exp(tl.minimum(cs_m, 0.0).to(tl.float32))[:, None]
        k_lo = 0
    if E2:
        e_m = _scan_e(csh_ptr, csl_ptr, o_uc + o_m)
    if SPLIT:
        for k in range(0, i_m * BM, BK):  # strictly below the diagonal block: every (i, j) has j < i
            o_k = k + tl.arange(0, BK)
            cb = tl.load(p_cb + o_m[:, None] * Q + o_k[None, :]).to(tl.float32)
            if E2:
                dec = _scan_ex2(e_m[:, None] - _scan_e(csh_ptr, csl_ptr, o_uc + o_k)[None, :], FTZ)
            else:
                d = (cs_m[:, None] - tl.load(csh_ptr + o_uc + o_k)[None, :]) + \
                    (csl_m[:, None] - tl.load(csl_ptr + o_uc + o_k)[None, :])
                if FTZ:
                    dec = _exp_ftz(d)
                else:
                    dec = tl.exp(d)
            w = cb * dec * tl.load(u_ptr + o_uc + o_k)[None, :]
            xk = tl.load(p_x + (o_k[:, None] * s_x_t + o_p[None, :]), mask=(o_k < nv)[:, None] & m_p[None, :],
                         other=0.0)
            acc += tl.dot(w.to(dt_in), xk, input_precision=DOT_PREC)
        k_lo = i_m * BM
    for k in range(k_lo, (i_m + 1) * BM, BK):
        o_k = k + tl.arange(0, BK)
        # blocks above the diagonal hold garbage (never written); the tl.where below drops it (NaN included)
        cb = tl.load(p_cb + o_m[:, None] * Q + o_k[None, :])
        cb = cb.to(tl.float32)
        cs_k, csl_k = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_k, CS64)
        u_k = tl.load(u_ptr + o_uc + o_k)
        if E2:
            w = cb * _scan_ex2(tl.minimum(e_m[:, None] - _scan_e(csh_ptr, csl_ptr, o_uc + o_k)[None, :], 0.0),
                               FTZ) * u_k[None, :]
        elif FTZ:
            w = cb * _seg_decay_x(cs_m, csl_m, cs_k, csl_k, False, True) * u_k[None, :]
        else:
            w = cb * _seg_decay(cs_m, csl_m, cs_k, csl_k, CS64) * u_k[None, :]
        w = tl.where(o_m[:, None] >= o_k[None, :], w, 0.0)
        xk = tl.load(p_x + (o_k[:, None] * s_x_t + o_p[None, :]), mask=(o_k < nv)[:, None] & m_p[None, :], other=0.0)
        acc += tl.dot(w.to(dt_in), xk, input_precision=DOT_PREC)

    _scan_out(acc, x_ptr, z_ptr, D_ptr, y_ptr, ypre_ptr, i_b, i_h, t0, o_m, o_p, m_m, m_p, P,
              s_x_b, s_x_t, s_x_h, s_z_b, s_z_t, s_z_h, s_y_b, s_y_t, s_y_h, HAS_D, D_PER_CHAN, HAS_Z, STORE_YPRE)


# ------------------------------------------------------------------------------------------------
# backward kernels


@triton.jit
def _gate_bwd_kernel(dy_ptr, z_ptr, ypre_ptr, dyp_ptr, dz_ptr, n, BLOCK: tl.constexpr):
    """dz = dy * ypre * silu'(z); dy_pre = dy * silu(z) (all buffers contiguous)."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    dy = tl.load(dy_ptr + o, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + o, mask=m, other=0.0).to(tl.float32)
    yp = tl.load(ypre_ptr + o, mask=m, other=0.0).to(tl.float32)
    sg = tl.sigmoid(z)
    tl.store(dz_ptr + o, (dy * yp * sg * (1.0 + z * (1.0 - sg))).to(dz_ptr.dtype.element_ty), mask=m)
    tl.store(dyp_ptr + o, (dy * z * sg).to(dyp_ptr.dtype.element_ty), mask=m)


@triton.jit
def _st_split(p, g, lo_off, mask):
    """Store fp32 g as bf16 hi at p and bf16 lo = g - hi at p + lo_off (ds_split)."""
    hi = g.to(tl.bfloat16)
    tl.store(p, hi, mask=mask)
    tl.store(p + lo_off, (g - hi.to(tl.float32)).to(tl.bfloat16), mask=mask)


@triton.jit
def _state_pass_bwd_kernel(ldh_ptr, cs_ptr, hin_ptr, hinlo_ptr, fin_ptr, dfin_ptr, cinit_ptr, cfin_ptr, dinit_ptr,
                           ddal_ptr, H, nc, PN,
                           Q: tl.constexpr, BS: tl.constexpr, HAS_DFIN: tl.constexpr, HAS_INIT: tl.constexpr,
                           IS_VARLEN: tl.constexpr, HIN_SPLIT: tl.constexpr, dsp_ptr=None,
                           DS_SPLIT: tl.constexpr = False):
    """Reverse state passing. In: ldh[c] = sum_i exp(cs_i) dy_i C_i^T. Out (in place of ldh): the
    gradient of the state after chunk c; dinit; per-block partials of d cs_last = <dh_out, h_out>.
    The loads for chunk c - 1 are issued before chunk c is processed (latency hiding: long
    sequences run few programs through many chunks).
    DS_SPLIT (ds_split): the gradient goes to dsp instead, as two bf16 planes per (chunk, head) slab,
    hi = bf16(g) then lo = bf16(g - hi): the pieces dx's state term (STATE_BF16 2) and dB's 16-bit product
    would cut from it, so both read 16-bit planes (dB only the hi one)."""
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2)
    nbs = tl.num_programs(2)
    o_s = i_s * BS + tl.arange(0, BS)
    m_s = o_s < PN
    g = tl.zeros([BS], dtype=tl.float32)
    if HAS_DFIN and not IS_VARLEN:
        g = tl.load(dfin_ptr + (i_b * H + i_h) * PN + o_s, mask=m_s, other=0.0).to(tl.float32)
    # h_out of the last chunk is a final state (its table entry says which one when packed)
    hout = tl.load(fin_ptr + (i_b * H + i_h) * PN + o_s, mask=m_s, other=0.0).to(tl.float32)
    o_cs = (i_b * H + i_h) * nc * Q + Q - 1
    c0 = nc - 1
    c1 = tl.maximum(nc - 2, 0)
    ldh1 = tl.load(ldh_ptr + ((i_b * nc + c0) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
    l1 = tl.load(cs_ptr + o_cs + c0 * Q)
    ldh2 = tl.load(ldh_ptr + ((i_b * nc + c1) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
    l2 = tl.load(cs_ptr + o_cs + c1 * Q)
    hin1 = _ld_hin(hin_ptr, hinlo_ptr, ((i_b * nc + c0) * H + i_h) * PN + o_s, m_s, HIN_SPLIT)
    for cc in range(nc):
        c = nc - 1 - cc
        cp = tl.maximum(c - 2, 0)
        cq = tl.maximum(c - 1, 0)
        o_st = ((i_b * nc + c) * H + i_h) * PN + o_s
        ldh = ldh1
        cs_last = l1
        hin_c = hin1  # h_out of chunk c - 1
        ldh1 = ldh2
        l1 = l2
        ldh2 = tl.load(ldh_ptr + ((i_b * nc + cp) * H + i_h) * PN + o_s, mask=m_s, other=0.0)
        l2 = tl.load(cs_ptr + o_cs + cp * Q)
        hin1 = _ld_hin(hin_ptr, hinlo_ptr, ((i_b * nc + cq) * H + i_h) * PN + o_s, m_s, HIN_SPLIT)
        if IS_VARLEN:
            cf = tl.load(cfin_ptr + c)
            k = tl.maximum(cf, 0).to(tl.int64)
            if cf != -1:  # a segment ends here: its end state is final (cf >= 0) or discarded
                if HAS_DFIN:
                    g = tl.load(dfin_ptr + (k * H + i_h) * PN + o_s, mask=m_s & ((o_s * 0 + cf) >= 0),
                                other=0.0).to(tl.float32)
                else:
                    g = tl.zeros([BS], dtype=tl.float32)
                hout = tl.load(fin_ptr + (k * H + i_h) * PN + o_s, mask=m_s & ((o_s * 0 + cf) >= 0),
                               other=0.0).to(tl.float32)
        tl.store(ddal_ptr + ((i_b * H + i_h) * nc + c) * nbs + i_s, tl.sum(g * hout, axis=0))
        if DS_SPLIT:
            _st_split(dsp_ptr + ((i_b * nc + c) * H + i_h) * 2 * PN + o_s, g, PN, m_s)
        else:
            tl.store(ldh_ptr + o_st, g, mask=m_s)
        g = ldh + tl.exp(tl.minimum(cs_last, 0.0).to(tl.float32)) * g
        if IS_VARLEN:
            ci = tl.load(cinit_ptr + c)
            if HAS_INIT:
                k0 = tl.maximum(ci, 0).to(tl.int64)
                tl.store(dinit_ptr + (k0 * H + i_h) * PN + o_s, g, mask=m_s & ((o_s * 0 + ci) >= 0))
        hout = hin_c
    if HAS_INIT and not IS_VARLEN:
        tl.store(dinit_ptr + (i_b * H + i_h) * PN + o_s, g, mask=m_s)


@triton.jit
def _exp_ftz(x):
    """exp(x) as ex2.approx.ftz (CUDA only, inline PTX): tl.exp's ex2 without its denormal fix-ups (a compare
    and two predicated multiplies per element); results below 2^-126 flush to zero."""
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * 1.4426950408889634],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _seg_decay_x(hi_i, lo_i, hi_j, lo_j, TRANS: tl.constexpr, FTZ: tl.constexpr):
    """_seg_decay (TRANS: _seg_decay_t) from the fp32 hi / lo planes, with _exp_ftz when FTZ (bwd_ftz)."""
    if TRANS:
        d = tl.minimum((hi_i[None, :] - hi_j[:, None]) + (lo_i[None, :] - lo_j[:, None]), 0.0)
    else:
        d = tl.minimum((hi_i[:, None] - hi_j[None, :]) + (lo_i[:, None] - lo_j[None, :]), 0.0)
    if FTZ:
        return _exp_ftz(d)
    else:
        return tl.exp(d)


@triton.jit
def _dx_state_term(p_B, p_ds, o_j, m_j, o_p, m_p, N, s_B_t, BJ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                   SPLIT_F32: tl.constexpr, STATE_BF16: tl.constexpr, DS_SPLIT: tl.constexpr = False, p_dlo=None):
    """dS B_j^T for the rows o_j of a chunk (the state part of Z_j before its decay), over N in slabs of BN.
    dS in (nearly) full fp32: a 16-bit dS doubled the dA / d dt_bias error (they sum du over many tokens), and
    so does a plain tf32 product on the GPU; with bf16 B, STATE_BF16 bf16 pieces (2: ~16 bits, 3: ~24).
    DS_SPLIT: dS stored as those two pieces already (bf16 planes hi, lo at p_ds, p_ds + P N): the same
    products without the split in registers."""
    acc = tl.zeros([BJ, BP], dtype=tl.float32)
    for n in range(0, N, BN):
        o_n = n + tl.arange(0, BN)
        m_n = o_n < N
        b = tl.load(p_B + (o_j[:, None] * s_B_t + o_n[None, :]), mask=m_j[:, None] & m_n[None, :], other=0.0)
        if DS_SPLIT:
            o_ds = o_p[None, :] * N + o_n[:, None]
            m_ds = m_p[None, :] & m_n[:, None]
            # the same expression as _dot_split_bf16's (so the same sums, in the same order)
            ds_hi = tl.load(p_ds + o_ds, mask=m_ds, other=0.0)
            ds_lo = tl.load(p_dlo + o_ds, mask=m_ds, other=0.0)
            acc += tl.dot(b, ds_hi) + tl.dot(b, ds_lo)
        else:
            dsT = tl.load(p_ds + o_p[None, :] * N + o_n[:, None], mask=m_p[None, :] & m_n[:, None], other=0.0)
            if STATE_BF16 > 0:
                acc += _dot_split_bf16(b, dsT, STATE_BF16)
            elif SPLIT_F32:
                acc += _dot_exact_f32(b.to(tl.float32), dsT)
            else:
                acc += tl.dot(b, dsT, input_precision="ieee")
    return acc


@triton.jit
def _ld_D(D_ptr, i_h, P, o_p, m_p, D_PER_CHAN: tl.constexpr):
    """D of head i_h in fp32: a [1, BP] row over the channels o_p (D_PER_CHAN: D is (H, P)), else a scalar."""
    if D_PER_CHAN:
        return tl.load(D_ptr + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32)[None, :]
    else:
        return tl.load(D_ptr + i_h).to(tl.float32)


@triton.jit
def _scan_bwd_dx_kernel(x_ptr, dy_ptr, B_ptr, cb_ptr, u_ptr, cs_ptr, csh_ptr, csl_ptr, ds_ptr, D_ptr,
                        dx_ptr, du_ptr, dcs_ptr, rowt_ptr, colt_ptr, dD_ptr,
                        T, H, G, nc, P, N,
                        s_x_b, s_x_t, s_x_h, s_dy_b, s_dy_t, s_dy_h, s_B_b, s_B_t, s_B_g,
                        s_dx_b, s_dx_t, s_dx_h,
                        Q: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                        HAS_D: tl.constexpr, D_PER_CHAN: tl.constexpr, HFIRST: tl.constexpr, DOT_PREC: tl.constexpr,
                        CS64: tl.constexpr,
                        MIXED_T: tl.constexpr, SPLIT_F32: tl.constexpr, STATE_BF16: tl.constexpr,
                        TSUM: tl.constexpr):
    """Rows j (one block) of one chunk and head:
    Z_j = sum_{i>=j} CB_ij e^{cs_i-cs_j} dy_i + e^{cs_last-cs_j} dS B_j; dx_j = u_j Z_j + D dy_j;
    du_j = x_j . Z_j. The decay gradient uses T_ij = (dy_i . x_j) CB_ij e^{cs_i-cs_j} u_j, formed once
    in fp32 so that its row sums and column sums cancel exactly where they should:
    dcs = rowsum(T) - colsum(T) - V + R (+ the chunk-end term), V_j = u_j e^{cs_last-cs_j} x_j . dS B_j.
    Here: dcs[j] <- -colsum(T)_j - V_j; rowt[jb, i] <- sum_{j in block} T_ij (this block's share).
    TSUM: the dCB kernel (run first) has written the T sums (rowt, and colt: per i-block column sums
    without u); only the diagonal T_jj / u_j = (x_j . dy_j) CB_jj is formed here, for du."""
    i_bc, i_h, jb = _pids(HFIRST)
    i_b = i_bc // nc
    i_c = i_bc % nc
    i_g = i_h // (H // G)
    NB: tl.constexpr = Q // BJ
    o_p = tl.arange(0, BP)
    o_nb = tl.arange(0, NB)
    m_p = o_p < P
    o_uc = ((i_b * H + i_h) * nc + i_c) * Q
    cs_last = tl.load(cs_ptr + o_uc + Q - 1)
    dt_in = x_ptr.dtype.element_ty
    t0 = i_c * Q
    nv = tl.minimum(T - t0, Q).to(tl.int32)
    p_dy = dy_ptr + i_b * s_dy_b + i_h * s_dy_h + t0 * s_dy_t
    p_B = B_ptr + i_b * s_B_b + i_g * s_B_g + t0 * s_B_t
    p_ds = ds_ptr + (i_bc * H + i_h) * P * N
    p_cb = cb_ptr + (i_bc * G + i_g) * Q * Q
    o_j = jb * BJ + tl.arange(0, BJ)
    m_j = o_j < nv
    m = m_j[:, None] & m_p[None, :]
    cs_j, csl_j = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_j, CS64)
    u_j = tl.load(u_ptr + o_uc + o_j)
    xj = tl.load(x_ptr + i_b * s_x_b + i_h * s_x_h + t0 * s_x_t + (o_j[:, None] * s_x_t + o_p[None, :]), mask=m,
                 other=0.0)
    xf = xj.to(tl.float32)
    acc = _dx_state_term(p_B, p_ds, o_j, m_j, o_p, m_p, N, s_B_t, BJ, BP, BN, SPLIT_F32, STATE_BF16)
    acc *= tl.exp(tl.minimum(cs_last - cs_j - csl_j, 0.0).to(tl.float32))[:, None]  # 1-D, fp64
    du = tl.sum(acc * xf, axis=1)  # state part of du; u_j * this is V_j
    dcol = du  # V_j / u_j + the strictly-lower column sum of T / u_j
    # dx = u_j Z_j: u_j goes into the 16-bit operand below rather than onto the sum, so that the
    # operand is CB e^{..} u_j, as in the forward (CB e^{..} alone passes 65504 in fp16 once
    # |C . B| does, while CB u_j, like y, stays in range for small dt)
    acc = acc * u_j[:, None]
    if TSUM:
        for ib in range(jb, NB):
            o_i = ib * BJ + tl.arange(0, BJ)
            cbT = tl.load(p_cb + o_i[None, :] * Q + o_j[:, None])
            cs_i, csl_i = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_i, CS64)
            w = cbT.to(tl.float32) * _seg_decay_t(cs_i, csl_i, cs_j, csl_j, CS64)
            w = tl.where(o_i[None, :] >= o_j[:, None], w, 0.0)
            dyi = tl.load(p_dy + (o_i[:, None] * s_dy_t + o_p[None, :]), mask=(o_i < nv)[:, None] & m_p[None, :],
                          other=0.0)
            acc += tl.dot((w * u_j[:, None]).to(dt_in), dyi.to(dt_in), input_precision=DOT_PREC)
        o_ct = ((i_b * H + i_h) * nc + i_c) * NB * Q + o_j
        csum = tl.load(colt_ptr + o_ct + jb * Q)
        for ib in range(jb + 1, NB):
            csum += tl.load(colt_ptr + o_ct + ib * Q)
        dyj_t = tl.load(p_dy + (o_j[:, None] * s_dy_t + o_p[None, :]), mask=m, other=0.0).to(tl.float32)
        cbjj = tl.load(p_cb + o_j * (Q + 1)).to(tl.float32)
        du += csum + tl.sum(xf * dyj_t, axis=1) * cbjj
        dcol += csum
    else:
        rowacc = tl.zeros([NB, BJ], dtype=tl.float32)
        for ib in range(jb, NB):
            o_i = ib * BJ + tl.arange(0, BJ)
            # as in the forward scan: the tl.where below drops the unwritten upper blocks
            cbT = tl.load(p_cb + o_i[None, :] * Q + o_j[:, None])
            cbT = cbT.to(tl.float32)
            cs_i, csl_i = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_i, CS64)
            w = cbT * _seg_decay_t(cs_i, csl_i, cs_j, csl_j, CS64)
            w = tl.where(o_i[None, :] >= o_j[:, None], w, 0.0)
            dyi = tl.load(p_dy + (o_i[:, None] * s_dy_t + o_p[None, :]), mask=(o_i < nv)[:, None] & m_p[None, :],
                          other=0.0)
            acc += tl.dot((w * u_j[:, None]).to(dt_in), dyi.to(dt_in), input_precision=DOT_PREC)
            if MIXED_T:  # 16-bit x with an fp32 (gated) dy: keep dy in fp32 (not a 16-bit cast, not tf32)
                tt = _dot_exact_f32(xf, tl.trans(dyi.to(tl.float32)))
            else:
                tt = tl.dot(xj, tl.trans(dyi), input_precision=DOT_PREC)
            tt = tt * w  # T^T block (j, i) without its u_j factor
            du += tl.sum(tt, axis=1)  # intra part of du from the fp32 T, not from the 16-bit dot above
            # T_jj enters the row and the column sum of d cs_j alike: leave it out of both (with large
            # u it dwarfs the rest, and the two fp32 sums would cancel it only to its rounding)
            tt = tl.where(o_i[None, :] > o_j[:, None], tt, 0.0)
            dcol += tl.sum(tt, axis=1)
            rowacc = tl.where(o_nb[:, None] == ib, rowacc + tl.sum(tt * u_j[:, None], axis=0)[None, :], rowacc)
    colt = u_j * dcol  # strictly-lower colsum(T)_j + V_j
    dx = acc
    if HAS_D:
        Dv = _ld_D(D_ptr, i_h, P, o_p, m_p, D_PER_CHAN)
        dyj = tl.load(p_dy + (o_j[:, None] * s_dy_t + o_p[None, :]), mask=m, other=0.0).to(tl.float32)
        dx += Dv * dyj
        tl.store(dD_ptr + ((i_bc * NB + jb) * H + i_h) * P + o_p, tl.sum(dyj * xf, axis=0), mask=m_p)
    tl.store(dx_ptr + i_b * s_dx_b + t0 * s_dx_t + i_h * s_dx_h + (o_j[:, None] * s_dx_t + o_p[None, :]),
             dx.to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(du_ptr + o_uc + o_j, du)
    tl.store(dcs_ptr + o_uc + o_j, -colt)
    if not TSUM:
        tl.store(rowt_ptr + ((((i_b * H + i_h) * nc + i_c) * NB + jb) * Q) + o_nb[:, None] * BJ
                 + tl.arange(0, BJ)[None, :], rowacc)


@triton.jit
def _scan_bwd_dx_lean_kernel(x_ptr, dy_ptr, B_ptr, cb_ptr, u_ptr, cs_ptr, csh_ptr, csl_ptr, ds_ptr, D_ptr,
                             dx_ptr, du_ptr, dcs_ptr, colt_ptr, dD_ptr,
                             T, H, G, nc, P, N,
                             s_x_b, s_x_t, s_x_h, s_dy_b, s_dy_t, s_dy_h, s_B_b, s_B_t, s_B_g,
                             s_dx_b, s_dx_t, s_dx_h,
                             Q: tl.constexpr, BJ: tl.constexpr, BI: tl.constexpr, BP: tl.constexpr,
                             BN: tl.constexpr, NBT: tl.constexpr,
                             HAS_D: tl.constexpr, D_PER_CHAN: tl.constexpr, HFIRST: tl.constexpr,
                             DOT_PREC: tl.constexpr, SPLIT_F32: tl.constexpr, STATE_BF16: tl.constexpr,
                             DS_SPLIT: tl.constexpr = False, FTZ: tl.constexpr = False):
    """_scan_bwd_dx_kernel's TSUM path (the dCB kernel has written the T sums) with fewer live registers
    (dx_lean): the state term first; then everything that needs x_j and dy_j (du, d cs, dD, the D dy_j
    part of dx), so that neither is live in the intra-chunk loop, which comes last, over column blocks of
    BI rows i (BI may be smaller than the row block BJ), with one accumulator. The colt partial sums (NBT
    of them, per dCB tile row, zero above the diagonal) are summed from one [NBT, BJ] load. The default
    kernel holds x in fp32 through its loop: 255 registers at 4 warps (sm_90, Triton 3.6, offline)."""
    i_bc, i_h, jb = _pids(HFIRST)
    i_b = i_bc // nc
    i_c = i_bc % nc
    i_g = i_h // (H // G)
    o_p = tl.arange(0, BP)
    m_p = o_p < P
    o_uc = ((i_b * H + i_h) * nc + i_c) * Q
    dt_in = x_ptr.dtype.element_ty
    t0 = i_c * Q
    nv = tl.minimum(T - t0, Q).to(tl.int32)
    p_dy = dy_ptr + i_b * s_dy_b + i_h * s_dy_h + t0 * s_dy_t
    p_cb = cb_ptr + (i_bc * G + i_g) * Q * Q
    o_j = jb * BJ + tl.arange(0, BJ)
    m_j = o_j < nv
    m = m_j[:, None] & m_p[None, :]
    cs_j = tl.load(csh_ptr + o_uc + o_j)
    csl_j = tl.load(csl_ptr + o_uc + o_j)
    u_j = tl.load(u_ptr + o_uc + o_j)
    # state term first, alone in registers: Z_j (state) = e^{cs_last - cs_j} dS B_j
    p_B = B_ptr + i_b * s_B_b + i_g * s_B_g + t0 * s_B_t
    if DS_SPLIT:  # bf16 hi / lo planes per (chunk, head) slab (ds_split)
        p_ds = ds_ptr + (i_bc * H + i_h) * 2 * P * N
        acc = _dx_state_term(p_B, p_ds, o_j, m_j, o_p, m_p, N, s_B_t, BJ, BP, BN, SPLIT_F32, STATE_BF16, True,
                             p_ds + P * N)
    else:
        p_ds = ds_ptr + (i_bc * H + i_h) * P * N
        acc = _dx_state_term(p_B, p_ds, o_j, m_j, o_p, m_p, N, s_B_t, BJ, BP, BN, SPLIT_F32, STATE_BF16)
    cs_last = tl.load(cs_ptr + o_uc + Q - 1)
    acc *= tl.exp(tl.minimum(cs_last - cs_j - csl_j, 0.0).to(tl.float32))[:, None]
    # everything that needs x_j and dy_j, before the loop (so neither is live in it): the state part and the
    # diagonal of du, the T column sums, dD, and the D dy_j term of dx
    xf = tl.load(x_ptr + i_b * s_x_b + i_h * s_x_h + t0 * s_x_t + (o_j[:, None] * s_x_t + o_p[None, :]), mask=m,
                 other=0.0).to(tl.float32)
    dyj = tl.load(p_dy + (o_j[:, None] * s_dy_t + o_p[None, :]), mask=m, other=0.0).to(tl.float32)
    o_nb = tl.arange(0, NBT)
    csum = tl.sum(tl.load(colt_ptr + ((((i_b * H + i_h) * nc + i_c) * NBT + o_nb[:, None]) * Q + o_j[None, :])),
                  axis=0)
    dcol = tl.sum(acc * xf, axis=1) + csum  # V_j / u_j + the strictly-lower column sum of T / u_j
    cbjj = tl.load(p_cb + o_j * (Q + 1)).to(tl.float32)
    tl.store(du_ptr + o_uc + o_j, dcol + tl.sum(xf * dyj, axis=1) * cbjj)
    tl.store(dcs_ptr + o_uc + o_j, -(u_j * dcol))
    acc = acc * u_j[:, None]
    if HAS_D:
        Dv = _ld_D(D_ptr, i_h, P, o_p, m_p, D_PER_CHAN)
        acc += Dv * dyj
        tl.store(dD_ptr + ((i_bc * (Q // BJ) + jb) * H + i_h) * P + o_p, tl.sum(dyj * xf, axis=0), mask=m_p)
    # intra-chunk part: sum_{i >= j} CB_ij e^{cs_i - cs_j} u_j dy_i, over column blocks of BI rows i
    for i0 in range(jb * BJ, Q, BI):
        o_i = i0 + tl.arange(0, BI)
        cbT = tl.load(p_cb + o_i[None, :] * Q + o_j[:, None]).to(tl.float32)  # upper blocks: dropped below
        cs_i = tl.load(csh_ptr + o_uc + o_i)
        csl_i = tl.load(csl_ptr + o_uc + o_i)
        if FTZ:
            w = cbT * _seg_decay_x(cs_i, csl_i, cs_j, csl_j, True, True)
        else:
            w = cbT * _seg_decay_t(cs_i, csl_i, cs_j, csl_j, False)
        w = tl.where(o_i[None, :] >= o_j[:, None], w * u_j[:, None], 0.0)
        dyi = tl.load(p_dy + (o_i[:, None] * s_dy_t + o_p[None, :]), mask=(o_i < nv)[:, None] & m_p[None, :],
                      other=0.0)
        acc += tl.dot(w.to(dt_in), dyi.to(dt_in), input_precision=DOT_PREC)
    tl.store(dx_ptr + i_b * s_dx_b + t0 * s_dx_t + i_h * s_dx_h + (o_j[:, None] * s_dx_t + o_p[None, :]),
             acc.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dcb_k(p_dy, p_x, o_dy, o_xT, m_dy, m_xT, s_dy_h, s_x_h, i_h, DOT_PREC: tl.constexpr, TSUM: tl.constexpr,
           MIXED_T: tl.constexpr):
    """dy_i . x_j of head i_h for one dCB tile."""
    dyi = tl.load(p_dy + i_h * s_dy_h + o_dy, mask=m_dy, other=0.0)
    xT = tl.load(p_x + i_h * s_x_h + o_xT, mask=m_xT, other=0.0)
    if TSUM and MIXED_T:  # fp32 (gated) dy against 16-bit x: dy kept to ~21 bits, as in dx
        k = _dot_exact_f32_a(dyi.to(tl.float32), xT.to(tl.float32))
    else:
        k = tl.dot(dyi.to(p_x.dtype.element_ty), xT, input_precision=DOT_PREC)
    return k


@triton.jit
def _dcb_acc(acc, kd, u_j, cbt, rowt_ptr, colt_ptr, o_m, o_n, i_b, i_h, i_c, i_m, i_n, H, nc, nb,
             Q: tl.constexpr, TSUM: tl.constexpr, CB_RL: tl.constexpr = False):
    """acc += the decayed K tile times u_j; with TSUM, this head's T = K CB column and row sums stored.
    CB_RL (dcb_rl): cbt is the pointer to the group's CB tile, loaded here for every head (an L1 / L2 hit)
    instead of living in registers through the head loop."""
    acc += kd * u_j[None, :]
    if TSUM:
        if CB_RL:
            cbh = tl.load(cbt + o_m[:, None] * Q + o_n[None, :]).to(tl.float32)
            tq = kd * tl.where(o_m[:, None] > o_n[None, :], cbh, 0.0)
        else:
            tq = kd * cbt
        o_hc = ((i_b * H + i_h) * nc + i_c) * nb
        tl.store(colt_ptr + (o_hc + i_m) * Q + o_n, tl.sum(tq, axis=0))
        tl.store(rowt_ptr + (o_hc + i_n) * Q + o_m, tl.sum(tq * u_j[None, :], axis=1))
    return acc


@triton.jit
def _dcb_heads(p_dy, p_x, o_dy, o_xT, m_dy, m_xT, s_dy_h, s_x_h, u_ptr, cs_ptr, csh_ptr, csl_ptr, rowt_ptr, colt_ptr,
               cbt, o_m, o_n, i_g, hpg, i_b, i_c, i_m, i_n, H, nc, nb,
               Q: tl.constexpr, BM: tl.constexpr, DOT_PREC: tl.constexpr, CS64: tl.constexpr, TSUM: tl.constexpr,
               MIXED_T: tl.constexpr, CB_RL: tl.constexpr = False, FTZ: tl.constexpr = False):
    """The head loop of _scan_bwd_dcb_kernel: sum over the group's heads of K_ij e^{cs_i - cs_j} u_j for one
    tile (and the T sums with TSUM)."""
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    for hh in range(hpg):
        i_h = i_g * hpg + hh
        o_uc = ((i_b * H + i_h) * nc + i_c) * Q
        k = _dcb_k(p_dy, p_x, o_dy, o_xT, m_dy, m_xT, s_dy_h, s_x_h, i_h, DOT_PREC, TSUM, MIXED_T)
        cs_i, csl_i = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_m, CS64)
        cs_j, csl_j = _ld_cs(cs_ptr, csh_ptr, csl_ptr, o_uc + o_n, CS64)
        u_j = tl.load(u_ptr + o_uc + o_n)
        if FTZ:
            kd = k * _seg_decay_x(cs_i, csl_i, cs_j, csl_j, False, True)
        else:
            kd = k * _seg_decay(cs_i, csl_i, cs_j, csl_j, CS64)
        acc = _dcb_acc(acc, kd, u_j, cbt, rowt_ptr, colt_ptr, o_m, o_n, i_b, i_h, i_c, i_m, i_n, H, nc, nb, Q, TSUM,
                       CB_RL)
    return acc


@triton.jit
def _scan_bwd_dcb_kernel(x_ptr, dy_ptr, u_ptr, cs_ptr, csh_ptr, csl_ptr, dcb_ptr, cb_ptr, rowt_ptr, colt_ptr,
                         T, H, G, nc, P,
                         s_x_b, s_x_t, s_x_h, s_dy_b, s_dy_t, s_dy_h,
                         Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, DOT_PREC: tl.constexpr,
                         CS64: tl.constexpr, MFIRST: tl.constexpr, TSUM: tl.constexpr, MIXED_T: tl.constexpr,
                         CB_RL: tl.constexpr = False, FTZ: tl.constexpr = False):
    """dCB_ij = sum_{h in group} (dy_i . x_j) e^{cs_i - cs_j} u_j (i >= j): the gradient of C B^T,
    summed over the heads of a group so dB / dC need one Q x Q x N product per group, not per head.

    TSUM: the same per-head product also gives the decay-gradient sums of T_ij = K_ij CB_ij u_j
    (K_ij = (dy_i . x_j) e^{cs_i - cs_j}), strictly below the diagonal, per head: this tile's share of
    the row sums, rowt[h, j-block, i] = sum_j T_ij, and of the column sums without u,
    colt[h, i-block, j] = sum_i K_ij CB_ij. The dx kernel then needs no (x . dy) product of its own.
    Tiles above the diagonal write zeros there. CB_RL (dcb_rl): the CB tile is re-read for every head instead
    of being held in registers through the head loop. FTZ (bwd_ftz; CUDA only, not with CS64): the decay tiles'
    exp as ex2.approx.ftz (_exp_ftz)."""
    if MFIRST:  # grid (tiles, G, b * nc): the tiles of a chunk share its x / dy rows in L2
        i_bc = tl.program_id(2).to(tl.int64)
        i_mn = tl.program_id(0)
    else:
        i_bc = tl.program_id(0).to(tl.int64)
        i_mn = tl.program_id(2)
    i_g = tl.program_id(1).to(tl.int64)
    nb = Q // BM
    i_m = i_mn // nb
    i_n = i_mn % nb
    i_b = i_bc // nc
    i_c = i_bc % nc
    hpg = H // G
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = i_n * BM + tl.arange(0, BM)
    if i_n > i_m:
        if TSUM:
            for hh in range(hpg):
                i_h = i_g * hpg + hh
                o_hc = ((i_b * H + i_h) * nc + i_c) * nb
                tl.store(rowt_ptr + (o_hc + i_n) * Q + o_m, tl.zeros([BM], dtype=tl.float32))
                tl.store(colt_ptr + (o_hc + i_m) * Q + o_n, tl.zeros([BM], dtype=tl.float32))
        return
    o_p = tl.arange(0, BP)
    t0 = i_c * Q
    nv = tl.minimum(T - t0, Q).to(tl.int32)
    m_p = o_p < P
    dt_in = x_ptr.dtype.element_ty
    p_dy = dy_ptr + i_b * s_dy_b + t0 * s_dy_t
    p_x = x_ptr + i_b * s_x_b + t0 * s_x_t
    o_dy = o_m[:, None] * s_dy_t + o_p[None, :]
    o_xT = o_n[None, :] * s_x_t + o_p[:, None]
    m_dy = (o_m < nv)[:, None] & m_p[None, :]
    m_xT = (o_n < nv)[None, :] & m_p[:, None]
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    if TSUM and CB_RL:
        cbt = cb_ptr + (i_bc * G + i_g) * Q * Q
    elif TSUM:
        strict = o_m[:, None] > o_n[None, :]
        cbt = tl.load(cb_ptr + (i_bc * G + i_g) * Q * Q + o_m[:, None] * Q + o_n[None, :]).to(tl.float32)
        cbt = tl.where(strict, cbt, 0.0)
    else:
        cbt = acc  # (unused)
    acc = _dcb_heads(p_dy, p_x, o_dy, o_xT, m_dy, m_xT, s_dy_h, s_x_h, u_ptr, cs_ptr, csh_ptr, csl_ptr,
                     rowt_ptr, colt_ptr, cbt, o_m, o_n, i_g, hpg, i_b, i_c, i_m, i_n, H, nc, nb,
                     Q=Q, BM=BM, DOT_PREC=DOT_PREC, CS64=CS64, TSUM=TSUM, MIXED_T=MIXED_T, CB_RL=CB_RL, FTZ=FTZ)
    acc = tl.where(o_m[:, None] >= o_n[None, :], acc, 0.0)
    tl.store(dcb_ptr + (i_bc * G + i_g) * Q * Q + o_m[:, None] * Q + o_n[None, :], acc.to(dcb_ptr.dtype.element_ty))


@triton.jit
def _scan_bwd_dbc_kernel(x_ptr, dy_ptr, B_ptr, C_ptr, u_ptr, cs_ptr, hin_ptr, ds_ptr, dcb_ptr, dB_ptr, dC_ptr,
                         r_ptr, T, H, G, nc, P, N,
                         s_x_b, s_x_t, s_x_h, s_dy_b, s_dy_t, s_dy_h, s_B_b, s_B_t, s_B_g, s_d_b, s_d_t, s_d_g,
                         Q: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                         IS_DB: tl.constexpr, MFIRST: tl.constexpr, R_TF32: tl.constexpr, DOT_PREC: tl.constexpr,
                         DS_SPLIT: tl.constexpr = False):
    """Rows m of one chunk and group:
      dC (IS_DB false): dC_m = sum_{j<=m} dCB_mj B_j + sum_h e^{cs_m} dy_m hin_h
      dB (IS_DB true):  dB_m = sum_{i>=m} dCB_im C_i + sum_h e^{cs_last - cs_m} u_m x_m dS_h
    The dC pass also writes, per head, R_m = e^{cs_m} dy_m . (hin C_m), the decay gradient of the
    output-from-state term. DS_SPLIT: dS as bf16 hi / lo planes per slab (ds_split); dB reads the hi one,
    which is the 16-bit dS its product used anyway."""
    if MFIRST:  # grid (row blocks, G, b * nc): the row blocks of a chunk share its per-head state tiles in L2
        i_bc = tl.program_id(2).to(tl.int64)
        i_m = tl.program_id(0)
    else:
        i_bc = tl.program_id(0).to(tl.int64)
        i_m = tl.program_id(2)
    i_g = tl.program_id(1).to(tl.int64)
    i_b = i_bc // nc
    i_c = i_bc % nc
    hpg = H // G
    o_m = i_m * BM + tl.arange(0, BM)
    o_p = tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    t0 = i_c * Q
    nv = tl.minimum(T - t0, Q).to(tl.int32)
    m_m = o_m < nv
    m_p = o_p < P
    m_n = o_n < N
    dt_in = x_ptr.dtype.element_ty
    if IS_DB:
        p_own = x_ptr + i_b * s_x_b + t0 * s_x_t
        s_own_t = s_x_t
        s_own_h = s_x_h
        p_st = ds_ptr
        p_mat = C_ptr + i_b * s_B_b + i_g * s_B_g + t0 * s_B_t
    else:
        p_own = dy_ptr + i_b * s_dy_b + t0 * s_dy_t
        s_own_t = s_dy_t
        s_own_h = s_dy_h
        p_st = hin_ptr
        p_mat = B_ptr + i_b * s_B_b + i_g * s_B_g + t0 * s_B_t
        c_m = tl.load(C_ptr + i_b * s_B_b + i_g * s_B_g + t0 * s_B_t + (o_m[:, None] * s_B_t + o_n[None, :]),
                      mask=m_m[:, None] & m_n[None, :], other=0.0).to(tl.float32)
    o_own = o_m[:, None] * s_own_t + o_p[None, :]
    o_st = o_p[:, None] * N + o_n[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for hh in range(hpg):
        i_h = i_g * hpg + hh
        o_uc = ((i_b * H + i_h) * nc + i_c) * Q
        cs_m = tl.load(cs_ptr + o_uc + o_m)
        own = tl.load(p_own + i_h * s_own_h + o_own, mask=m_m[:, None] & m_p[None, :], other=0.0).to(tl.float32)
        if IS_DB and DS_SPLIT:
            st = tl.load(p_st + (i_bc * H + i_h) * 2 * P * N + o_st, mask=m_p[:, None] & m_n[None, :], other=0.0)
        else:
            st = tl.load(p_st + (i_bc * H + i_h) * P * N + o_st, mask=m_p[:, None] & m_n[None, :], other=0.0)
        if IS_DB:
            cs_last = tl.load(cs_ptr + o_uc + Q - 1)
            u_m = tl.load(u_ptr + o_uc + o_m)
            own *= (tl.exp(tl.minimum(cs_last - cs_m, 0.0).to(tl.float32)) * u_m)[:, None]
            acc += tl.dot(own.to(dt_in), st.to(dt_in), input_precision=DOT_PREC)
        else:
            own *= tl.exp(tl.minimum(cs_m, 0.0).to(tl.float32))[:, None]
            if R_TF32:
                acc_h = tl.dot(own, st.to(tl.float32), input_precision="tf32")
            else:
                acc_h = tl.dot(own.to(dt_in), st.to(dt_in), input_precision=DOT_PREC)
            tl.store(r_ptr + o_uc + o_m, tl.sum(acc_h * c_m, axis=1))
            acc += acc_h
    p_dcb = dcb_ptr + (i_bc * G + i_g) * Q * Q
    if IS_DB:
        k_lo = i_m * BM
        k_hi = Q
    else:
        k_lo = 0
        k_hi = (i_m + 1) * BM
    for k in range(k_lo, k_hi, BK):
        o_k = k + tl.arange(0, BK)
        m_k = o_k < nv
        # dCB is written only on and below the diagonal, in blocks of its own size: mask the rest
        if IS_DB:  # dCB^T (rows m = j, columns k = i)
            w = tl.load(p_dcb + o_k[None, :] * Q + o_m[:, None], mask=o_k[None, :] >= o_m[:, None], other=0.0)
        else:
            w = tl.load(p_dcb + o_m[:, None] * Q + o_k[None, :], mask=o_m[:, None] >= o_k[None, :], other=0.0)
        mat = tl.load(p_mat + (o_k[:, None] * s_B_t + o_n[None, :]), mask=m_k[:, None] & m_n[None, :], other=0.0)
        acc += tl.dot(w.to(dt_in), mat.to(dt_in), input_precision=DOT_PREC)
    p_o = (dB_ptr if IS_DB else dC_ptr) + i_b * s_d_b + i_g * s_d_g + t0 * s_d_t + (o_m[:, None] * s_d_t + o_n[None, :])
    tl.store(p_o, acc.to(p_o.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _cumsum_bwd_kernel(dt_ptr, bias_ptr, A_ptr, clen_ptr, u_ptr, du_ptr, dcs_ptr, rowt_ptr, r_ptr, ddal_ptr,
                       ddt_ptr, dA_ptr, dbias_ptr,
                       T, H, nc, s_dt_b, s_dt_t, s_dt_h, s_ddt_b, s_ddt_t, s_ddt_h, lo, hi,
                       Q: tl.constexpr, BH: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                       HAS_HI: tl.constexpr, IS_VARLEN: tl.constexpr, NB: tl.constexpr):
    """da_j = sum_{i>=j} dcs_i (+ d cs_last at the end); du = du_direct + A da; then back through
    clamp / softplus / bias to ddt. Partials of dA and d dt_bias per chunk."""
    i_b, i_c, o_t, o_h, m_h, m = _dt_tile(clen_ptr, T, H, Q, BH, IS_VARLEN)
    o_uc = ((i_b * H + o_h[None, :]) * nc + i_c) * Q + o_t[:, None]
    dcs = tl.load(dcs_ptr + o_uc, mask=m_h[None, :], other=0.0)
    o_rt = (((i_b * H + o_h[None, :]) * nc + i_c) * NB) * Q + o_t[:, None]
    for jb in range(NB):
        dcs += tl.load(rowt_ptr + o_rt + jb * Q, mask=m_h[None, :], other=0.0)
    dcs += tl.load(r_ptr + o_uc, mask=m_h[None, :], other=0.0)
    ddal = tl.load(ddal_ptr + (i_b * H + o_h) * nc + i_c, mask=m_h, other=0.0)
    dcs += tl.where(o_t[:, None] == Q - 1, ddal[None, :], 0.0)
    tot = tl.sum(dcs, axis=0)
    da = tot[None, :] - tl.cumsum(dcs, axis=0) + dcs
    u = tl.load(u_ptr + o_uc, mask=m_h[None, :], other=0.0)
    A = tl.load(A_ptr + o_h, mask=m_h, other=0.0).to(tl.float32)
    du = tl.load(du_ptr + o_uc, mask=m_h[None, :], other=0.0) + A[None, :] * da
    tl.store(dA_ptr + (i_b * nc + i_c) * H + o_h, tl.sum(tl.where(m, u * da, 0.0), axis=0), mask=m_h)

    d = _dt_load(dt_ptr, bias_ptr, i_b, i_c, o_t, o_h, m_h, m, s_dt_b, s_dt_t, s_dt_h, Q, HAS_BIAS)
    if SOFTPLUS:
        sp = _softplus(d)
        gsp = tl.where(d <= 20.0, tl.sigmoid(d), 1.0)
    else:
        sp = d
        gsp = tl.full(d.shape, 1.0, tl.float32)
    keep = sp >= lo
    if HAS_HI:
        keep = keep & (sp <= hi)
    ddt = tl.where(m & keep, du * gsp, 0.0)
    if HAS_BIAS:
        tl.store(dbias_ptr + (i_b * nc + i_c) * H + o_h, tl.sum(ddt, axis=0), mask=m_h)
    m_out = (i_c * Q + o_t < T)[:, None] & m_h[None, :]
    p_ddt = ddt_ptr + i_b * s_ddt_b + (i_c * Q + o_t)[:, None] * s_ddt_t + o_h[None, :] * s_ddt_h
    tl.store(p_ddt, ddt.to(ddt_ptr.dtype.element_ty), mask=m_out)


# ------------------------------------------------------------------------------------------------
# launchers


# Benchmarks may set entries here to try other block shapes (bench/bench_ssd.py --sweep); every
# entry is a plain launch parameter, so correctness does not depend on it (tests cover the defaults).
CFG_OVERRIDE: dict = {}

_LAUNCH3 = {"BK_SCAN": 32, "stages": 3, "BM_DBC": 128}
_BWD6 = {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "maxnreg_dx": 168, "stages_dx": 2, "maxnreg_dcb": 168}

# The variants bench_ssd.py --sweep times; tests/test_ssd.py checks every one of them for correctness.
SWEEP_CONFIGS = {
    "default": {},
    "sb2": {"state_bf16": 2},
    "rtf32": {"r_prec": "tf32"},
    "stages3": {"stages": 3},
    "hin16": {"hin16": True},
    "cbb16": {"cbb16": True},
    "cs64": {"cs64": True},
    "scan BK32": {"BK_SCAN": 32},
    "scan BM128 w8": {"BM_SCAN": 128, "warps_scan": 8},
    "state BN64 w4": {"BN_STATE": 64, "warps_state": 4},
    "dbc BM32 w4": {"BM_DBC": 32, "warps_dbc": 4},
    "dbc BM128 w8": {"BM_DBC": 128},
    "tsum": {"tsum_dcb": True},
    "xw0": {"xw_split": 0},
    "xwb1": {"xw_split_bwd": 1},
    "tsum dcbw8": {"tsum_dcb": True, "warps_dcb": 8},
    # session 3: session 2's "combo" launch choices (scan BK 32, 3 stages, dB / dC rows 128) on the unfused
    # default, then the rank-1 off-diagonal decay (scan), bf16 hin without grad
    "launch3": _LAUNCH3,
    # session 2's defaults spelled out (for the benchmark's shape, P64 N128 Q256), to time them once the
    # defaults move
    "launch3 only": {"hin_split": False, "tsum_dcb": False, "hin16_nograd": False, "xw_split_nograd": None},
    "s2 default": {"BK_SCAN": 64, "stages": 2, "BM_DBC": 64, "scan_r1": False,
                   "xw_split": 1, "xw_split_nograd": None,
                   "hin16_nograd": False, "hin_split": False, "tsum_dcb": False, "warps": 4, "warps_dcb": None,
                   "maxnreg_state": None, "warps_scan": 4, "BM_SCAN": 64},
    "hin16nog": {**_LAUNCH3, "hin16_nograd": True},
    # round 2 (on the launch3 defaults)
    "hin16nog2": {"hin16_nograd": True},
    "xw0nog": {"xw_split_nograd": 0},
    "nograd16": {"xw_split_nograd": 0, "hin16_nograd": True},
    "split": {"hin_split": True},
    "mr": {"maxnreg_state": 128},
    # session 6, helper ssd7f (forward): the chained chunk-state + state-pass kernel (see _cfg)
    "chain": {"state_chain": True},
    "chain lean": {"state_chain": True, "chain_lean": True},  # the chain at every shape, LEAN (tests)
    "chain mr128": {"state_chain": True, "maxnreg_chain": 128},
    # the chain without grad too at batch x heads >= 128, with session 6's no-grad blocks (see _cfg's chain_nograd)
    "s7 chain nograd": {"chain_nograd": (128, None, None, 128)},
    # session 8 (untimed): the no-grad chain with the with-grad chain's blocks (N 64, 4 warps), capped or not, and at
    # batch x heads >= 64 (B2 T32768: session 6's blocks lost there)
    "s8 chain nograd n64 w4": {"chain_nograd": (128, 64, 4, None)},
    "s8 chain nograd n64 w4 mr128": {"chain_nograd": (128, 64, 4, 128)},
    "s8 chain nograd64 n64 w4": {"chain_nograd": (64, 64, 4, None)},
    "chain n64 w4": {"state_chain": True, "BN_CHAIN": 64, "warps_chain": 4},
    # session 6 helper scan7 (the forward scan kernel's instruction count; see _cfg and bench/RESULTS.md)
    "scan7 ftz": {"scan_ftz": True},
    "scan7 split": {"scan_split": True},
    "scan7 split ftz": {"scan_split": True, "scan_ftz": True},
    "scan7 bm128 w8": {"BM_SCAN": 128, "warps_scan": 8},
    "scan7 bm128 w8 split ftz": {"BM_SCAN": 128, "warps_scan": 8, "scan_split": True, "scan_ftz": True},
    # the same under a register cap of 128 (4 programs per SM at 4 warps, 2 at 8, as the default's 121; none spill
    # offline), and scan_r1 (session 3's rank-1 decay: 161 registers, 3 programs per SM) capped the same way
    "scan7 ftz mr128": {"scan_ftz": True, "maxnreg_scan": 128},
    "scan7 split mr128": {"scan_split": True, "maxnreg_scan": 128},
    "scan7 split ftz mr128": {"scan_split": True, "scan_ftz": True, "maxnreg_scan": 128},
    "scan7 r1 mr128": {"scan_r1": True, "maxnreg_scan": 128},
    "scan7 e2 split ftz mr128": {"scan_e2": True, "scan_split": True, "scan_ftz": True, "maxnreg_scan": 128},
    "scan7 e2 split ftz": {"scan_e2": True, "scan_split": True, "scan_ftz": True},
    "scan7 e2 ftz mr128": {"scan_e2": True, "scan_ftz": True, "maxnreg_scan": 128},
    "scan7 r1 ftz mr128": {"scan_r1": True, "scan_ftz": True, "maxnreg_scan": 128},
    "scan7 bm128 w8 split ftz mr128": {"BM_SCAN": 128, "warps_scan": 8, "scan_split": True, "scan_ftz": True,
                                       "maxnreg_scan": 128},
    # session 5, helper ssd6 (backward occupancy: dx_lean, state_bf16, register caps; see _cfg)
    "lean": {"tsum_dcb": True, "dx_lean": True},
    "lean sb2": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2},
    "lean sb2 mr168 bi32": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "maxnreg_dx": 168, "stages_dx": 2,
                            "BI_DX": 32},
    "lean sb3 mr168": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 3, "maxnreg_dx": 168, "stages_dx": 2},
    "lean mr168": {"tsum_dcb": True, "dx_lean": True, "maxnreg_dx": 168, "stages_dx": 2},
    "sb2 mr168": {"tsum_dcb": True, "state_bf16": 2, "maxnreg_dx": 168, "stages_dx": 2},
    "bwd6": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "maxnreg_dx": 168, "stages_dx": 2,
             "maxnreg_dcb": 168},
    "bwd6 sb3": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 3, "maxnreg_dx": 168, "stages_dx": 2,
                 "maxnreg_dcb": 168},
    "bwd6 w8": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "maxnreg_dx": 168, "stages_dx": 2,
                "warps_dcb": 8},
    "bwd6 w8x": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "warps_dx": 8, "stages_dx": 2,
                 "warps_dcb": 8},
    "lean bj128 w8": {"tsum_dcb": True, "dx_lean": True, "state_bf16": 2, "BJ_DX": 128, "warps_dx": 8,
                      "stages_dx": 2},
    # session 6, helper ssd7b: opt-in backward variants on top of bwd6 (see _cfg). Keys that need bf16 (ds_split)
    # fall back to the plain path elsewhere, so every entry also runs (and is tested) in fp32 / fp16
    # (offline sm_90 registers / spilled bytes: dx with ds_split 168 / 0 at BN_DX 32, 168 / 24 at 64; dCB at 8 warps
    # and a cap of 128: 128 / 0, with dcb_rl 124 / 0; bwd_ftz: dCB's head loop 882 -> 789
    # instructions, 168 / 0 at 4 warps, 128 / 0 at 8 warps capped)
    "bwd7 ds": {**_BWD6, "ds_split": True, "BN_DX": 32},
    "bwd7 dcb16": {**_BWD6, "dcb16": True},
    "bwd7 ds dcb16": {**_BWD6, "ds_split": True, "BN_DX": 32, "dcb16": True},
    "bwd7 cbb16": {**_BWD6, "cbb16": True},
    "bwd7 ftz": {**_BWD6, "bwd_ftz": True},
    "bwd7 ds dcb16 ftz": {**_BWD6, "ds_split": True, "BN_DX": 32, "dcb16": True, "bwd_ftz": True},
    "bwd7 ds dcb16 ftz w8": {**_BWD6, "ds_split": True, "BN_DX": 32, "dcb16": True, "bwd_ftz": True, "warps_dcb": 8,
                             "maxnreg_dcb": 128},
    "bwd7 ds64": {**_BWD6, "ds_split": True},
    # session 6's candidate: the state chain with grad where batch x heads >= 64 (see _cfg's chain_min_bh)
    "s6 chain": {"state_chain": "grad", "BN_CHAIN": 64, "warps_chain": 4},
    # session 6's default (the two-kernel forward state with grad too), to time against session 7's
    "s6 default": {"state_chain": False, "BN_CHAIN": None, "warps_chain": None, "scan_split": False, "scan_ftz": False,
                   "maxnreg_scan": None},
    # session 7's default (no chain in a forward without grad), to time against session 8's
    "s7 default": {"chain_nograd": None},
    "s9 chain lean": {"chain_lean": True},
    # offline sm_90 (Triton 3.6): the default no-grad chain (N 128, 8 warps, cap 128) spills (322 local loads, 258
    # stores in its SASS, LEAN or not); with N 64, 4 warps and no cap, LEAN: 3560 instructions, one spill
    "s9 chain lean nograd n64 w4": {"chain_lean": True, "chain_nograd": (128, 64, 4, None)},
    # session 5's default (bwd6, two-kernel forward state), to time against the session 6 default
    "s5 default": {**_BWD6, "ds_split": False, "BN_DX": None, "dcb16": False, "bwd_ftz": False, "state_chain": False,
                   "scan_split": False, "scan_ftz": False, "maxnreg_scan": None,
                   "BN_CHAIN": None, "warps_chain": None},
    "bwd7 dcb w8": {**_BWD6, "warps_dcb": 8, "maxnreg_dcb": 128},
    "bwd7 rl w8": {**_BWD6, "dcb_rl": True, "warps_dcb": 8, "maxnreg_dcb": 128},
    "bwd7 ds w8": {**_BWD6, "ds_split": True, "BN_DX": 32, "warps_dcb": 8, "maxnreg_dcb": 128},
}


def config_from_env(text: str) -> dict:
    """HYBRIDNA_SSD_CONFIG: comma-separated SWEEP_CONFIGS names, applied in order on top of the defaults (e.g.
    "s6 chain" for the opt-in chained forward state), so a whole program (the model benchmark, training) can
    run an opt-in variant without code changes."""
    out = {}
    for name in filter(None, (t.strip() for t in text.split(","))):
        if name not in SWEEP_CONFIGS:
            raise ValueError(f"HYBRIDNA_SSD_CONFIG: unknown config {name!r}; known: {sorted(SWEEP_CONFIGS)}")
        out.update(SWEEP_CONFIGS[name])
    return out


CFG_OVERRIDE.update(config_from_env(os.environ.get("HYBRIDNA_SSD_CONFIG", "")))


def _cfg(Q, P, N, dtype):
    """One block configuration per kernel, chosen from the shapes (no autotuning, so gradients never
    depend on a timing race)."""
    BP = _p2(P)
    BN = _p2(N)
    blk = min(64, Q)
    # launch3 (below) where it was measured: 16-bit inputs, headdim <= 64, dstate <= 128. Elsewhere session
    # 2's settings: fp32 tiles at 3 stages overflow shared memory in dB / dC (256 KiB at P64 N128, sm_90
    # offline compile) and make dx spill heavily
    l3 = dtype != torch.float32 and BP <= 64 and BN <= 128
    b6 = l3 and dtype == torch.bfloat16   # session 5's backward settings ("bwd6", below)
    cfg = {
        "BP": BP, "BN": BN, "BM": blk, "BK": blk,
        # Measured on an H100 (bf16, B8 T8192 H32 P64 N128 Q256, 2026-11-25 12:07 UTC; fwd / fwd+bwd ms):
        # old defaults 2.390 / 9.551 with fp64 decay tiles, 1.999 / 8.873 with the fp32 hi/lo ones;
        # + unmasked CB loads 1.753 / 8.273; + heads-fastest grid order 1.420 / 7.587; + bf16 forward CB
        # 1.304 / 7.445; + 4 warps for dx / dCB 1.303 / 6.084 (those four are the defaults below).
        # Scan: 4 warps (8 warps measured slower at a0a5de0 / adb4283 despite no spills).
        # BK_SCAN 32, 3 stages, dB / dC rows 128 ("launch3"): H100 session 3 round 1, B8 T8192 fwd / fwd+bwd
        # 1.684 / 6.095 -> 1.550 / 5.533 ms, B1 T131072 3.298 / 12.017 -> 3.054 / 10.932 ms
        "BM_SCAN": blk, "BK_SCAN": min(32, blk) if l3 else blk, "BP_SCAN": min(BP, 64), "warps_scan": 4,
        "BN_SCAN": min(BN, 64),  # N-slab of the C @ hin^T term
        # Session 6 helper ssd7f (issue 4, forward); measured on an H100 in session 6 (bench/RESULTS.md): the chain
        # n64 w4 with grad -0.3 ms fwd+bwd at B8 T8192 / B2 T32768:
        # - state_chain: _state_chain_fwd_kernel instead of _chunk_state_kernel + _state_pass_fwd_kernel (the
        #   fp32 local states, 268 MB written and read back at B8 T8192, never reach memory; parallel over
        #   chunks, the programs chained through a flag per (batch, head, block)); its warps (None: warps_state),
        #   register cap and N block (None: BN_STATE). Offline sm_90 (Triton 3.6, bf16 P64 N128 Q256, 8 warps):
        #   140 registers without grad (one program per SM; _chunk_state_kernel 112, two), 24 B spilled at a
        #   cap of 128 (two per SM); 229 with grad (split operand; the unfused kernel 167: one per SM either way)
        #   On for bf16 with grad (session 7, see chain_min_bh below): "chain n64 w4"
        "state_chain": "grad" if b6 else False, "warps_chain": 4 if b6 else None, "maxnreg_chain": None,
        "BN_CHAIN": 64 if b6 else None,
        # - chain_max_nc: state_chain only up to this many chunks per sequence (None: always). The chain's
        #   critical path is one flag hand-off per chunk (~3 L2 round trips, ~2 us?), hidden while a chunk's
        #   programs (b * H * blocks) outnumber the resident ones (~132-264): B8 T8192 (256 a chunk),
        #   not B1 T131072 (32 a chunk, 512 chunks: ~1 ms of hand-offs), where the two-kernel path may be faster
        "chain_max_nc": None,
        # the scan's register cap (the bf16 default: 128, session 7's "scan7 split ftz mr128" below)
        "maxnreg_scan": 128 if b6 else None,
        # Session 6 helper scan7 (issue 4, the scan kernel; bf16 default since session 7): scan_split runs the blocks
        # strictly below the diagonal block in a loop of their own, without the causal select and the exponent clamp
        # (not scan_r1 / cs64); scan_ftz takes the decay tiles' exp as ex2.approx.ftz (CUDA only, as
        # bwd_ftz). Offline sm_90 (Triton 3.6, bf16 P64 N128 Q256, 4 warps, 3 stages): see SWEEP_CONFIGS "scan7 ..."
        # Session 7 (H100, bf16, .gpu/scan7.sh, interleaved against the default in the same run; y, final states and
        # every gradient bitwise equal to it): "scan7 split ftz mr128" (with maxnreg_scan 128 above) no-grad forward
        # B8 T8192 1.030 against 1.079 ms, fwd+bwd 3.950 / 3.979; B2 T32768 1.042 / 1.052, 3.977 / 4.032; B1 T131072
        # 2.022 / 2.073, 8.276 / 8.315 (scan kernel 0.583 against 0.612 ms at B8): on for bf16 where bwd6 is
        "scan_split": b6, "scan_ftz": b6,
        # scan_e2 (16-bit inputs, not scan_r1 / cs64): the decay tile as exp2(e_i - e_j) from one fp32
        # log2(e) cs per row / column (3-4 instead of 7-10 instructions per element; exponent error ~|cs| 2^-23)
        "scan_e2": False,
        # the scan's pipeline stages (None: "stages"); offline, scan7 e2 ftz mr128 at 2 stages: 1288 instructions
        # (3 stages 1384), 116 registers, 32 KiB of shared memory (48); timed in session 7 (H100): 1.110 ms no-grad
        # at B8 T8192 against 1.042 at 3 stages (its sweep entry removed in session 9)
        "stages_scan": None,
        "BP_STATE": min(BP, 64),
        "BN_STATE": min(BN, 128),
        "warps_state": 8 if BN >= 128 else 4,
        "BS": 256,
        # headdim 128 / dstate 256 rows: smaller row blocks, or ptxas spills (sm_90, checked offline)
        "BM_DBC": min(Q, 16 if (BN > 128 and BP >= 128) else 32 if (BN > 128 or BP >= 128) else 128 if l3 else 64),
        "warps_dbc": 8 if BN >= 128 else 4,
        # dx / dCB: 4 warps at headdim <= 64 (fwd+bwd 7.445 -> 6.084 ms against 8 warps, although the
        # offline sm_90 compile shows dx spilling ~350 B at 4 warps and none at 8); 8 at headdim 128.
        "warps": 4 if BP <= 64 else 8,
        "stages": 3 if l3 else 2,
        "prec": "ieee" if dtype == torch.float32 else "tf32",
        # decay tiles exp(cs_i - cs_j): fp32 hi/lo planes of the fp64 cumsum (False) or fp64 tile math
        "cs64": False,
        # forward CB buffer in bf16 for bf16 inputs (bf16 has fp32's range; fp16 keeps fp32 CB)
        "cb16": True,
        # hin (states entering each chunk, also saved for the backward) in bf16 for bf16 inputs
        "hin16": False,
        # grid order: heads / row blocks fastest, chunk slowest (L2 reuse of a chunk's CB, B, C, states
        # across heads and row blocks): chunk_state, scan, dx, dCB, dB / dC
        "hfirst": True,
        # the backward's recomputed CB (read by dx) in bf16 for bf16 inputs
        "cbb16": False,
        # dx's state term with bf16 B: dS split into this many bf16 pieces (0: two tf32 products); 2 with bwd6
        "state_bf16": 2 if b6 else 0,
        # precision of the dC pass's per-head product e^{cs} dy hin^T, whose row sums with C give the
        # decay-gradient term R: 16-bit operands ("16") or tf32 ("tf32")
        "r_prec": "16",
        # the decay-gradient sums of T formed in the dCB kernel (which has the per-head dy . x product
        # anyway) instead of a second product in dx; warps of the dCB kernel (None: as dx). Session 2
        # (old launch settings): fwd+bwd 6.280 ms against 6.114. Session 3 round 2, on launch3: 5.369
        # against 5.493 ms (B8 T8192): on where launch3 is.
        "tsum_dcb": l3, "warps_dcb": None,
        # chunk-state products with 16-bit inputs: the fp32 operand x_k e^{..} u_k (forward) / dy_k e^{cs_k}
        # (backward) rounded to 16 bits (0) or kept to ~16 bits as two pieces (1). The forward one
        # decides dA: fp16, B1 T150 Q64 cu_seqlens, dA relative error 3.6e-2 rounded, 4e-4 split.
        "xw_split": 1, "xw_split_bwd": 0,
        # Session 3 (H100, B8 T8192 bf16, ms fwd / fwd+bwd against launch3's 1.562 / 5.493 in the same run):
        # - hin_split (bf16 hin as hi + lo planes: the scan and dC read the hi plane): 1.416 / 5.346, and
        #   B1 T131072 2.864 / 10.660 against 3.059 / 10.933, B2 T32768 1.413 / 5.322 against 1.543 / 5.503;
        #   the scan kernel 0.761 -> 0.605 ms. On (where launch3 is; bf16 only).
        # - hin16_nograd (hin in bf16 when no backward reads it; y bit-identical): no-grad fwd 1.378. On.
        # - xw_split_nograd 0 (the chunk-state operand rounded to bf16 without grad: the split only buys
        #   gradient accuracy, dA through hin; y's error stays 2.8e-3): with hin16_nograd, no-grad fwd 1.059.
        #   On where launch3 is, bf16 only (fp16 keeps its split: range).
        # - the rank-1 decay in the scan (scan_r1): forward 1.571 vs 1.550 (round 1): no gain, off (its dx / dCB
        #   versions lost too and were removed in session 9). Off too: the single tf32 chunk-state product
        #   (xw_split 2: 1.822 / 5.791, dA 3.8e-3; removed in session 9), maxnreg_state 128 (1.474 / 5.543), 8-warp
        #   scan (1.812 / 5.787).
        "scan_r1": False, "hin16_nograd": True, "hin_split": l3,
        "xw_split_nograd": 0 if (l3 and dtype == torch.bfloat16) else None,
        # register cap of the chunk-state kernels (ptxas takes ~170-230 at 8 warps: one program per SM;
        # 128 leaves room for two, with no spill in the reverse pass and 56 B in the forward one)
        "maxnreg_state": None,
        # Session 5 helper ssd6 (issue 4, backward). Measured on an H100 (2026-12-07, bf16 B8 T8192 H32 P64 N128
        # Q256, interleaved eager medians, fwd+bwd / bwd ms): the old default 5.217 / 3.803; "bwd6" (dx_lean,
        # state_bf16 2, register caps 168 and 2 stages for dx, cap 168 for dCB) 4.612 / 3.198 (1.13x / 1.19x),
        # every output and gradient within 5.6e-5 of the old default, fp64-reference errors equal to its own (B1
        # T4096, with and without z and initial_states). On for bf16 where launch3 is (fp16 keeps the tf32
        # split of dS: without bf16 B it takes 228 registers at 8 warps). The other ssd6 rows: 4.71-5.58.
        # - dx_lean (needs tsum_dcb): _scan_bwd_dx_lean_kernel, the same sums with fewer live registers; its
        #   row block BJ_DX (None: BM), column block BI_DX, warps / stages (None: "warps" / "stages")
        "dx_lean": b6, "BJ_DX": None, "BI_DX": 64, "warps_dx": None,
        # - register caps of dx (either kernel) and dCB, and their stages (None: "stages"). Offline sm_90
        #   compile (Triton 3.6, launch specialisation, bf16 P64 N128 Q256): dx takes 255 registers at 4 warps
        #   (one program per SM by registers, or two), most of them for the state term's tf32 hi / lo split of
        #   dS; dx_lean with state_bf16 2 takes 221, none spilled at a cap of 168 with 2 stages (3 programs
        #   per SM), and 128 at 8 warps with 2 stages (2 programs of 8 warps); dCB takes 188 at 4 warps
        #   (none spilled at a cap of 168) and 128 at 8 warps
        "maxnreg_dx": 168 if b6 else None, "maxnreg_dcb": 168 if b6 else None, "stages_dx": 2 if b6 else None,
        "stages_dcb": None,
        # Session 6 helper ssd7b (SWEEP_CONFIGS "bwd7 ..."; measured on an H100 in session 6, see below and
        # bench/RESULTS.md):
        # - ds_split: the reverse state pass stores dS as the two bf16 pieces (hi, lo = bf16(dS - hi)) that dx's
        #   state term (state_bf16 2) cuts from the fp32 dS in registers anyway, and dB's product the hi one:
        #   the same bytes written, no split in dx, half the dS bytes read by dB; bit-identical products.
        #   bf16 with dx_lean and state_bf16 2 only (ignored otherwise)
        # - dcb_rl: the dCB kernel re-reads its CB tile for each head (L1 / L2) instead of holding it in registers
        #   through the head loop
        # - BN_DX: N-slab of dx's state term (None: BN_SCAN); 32 with ds_split keeps dx_lean under the 168 cap
        #   without spilling (offline sm_90: 24 B spilled at 64)
        # - dcb16: the dCB buffer in the 16-bit input dtype (fp32 otherwise): dB / dC cast its tiles to that dtype
        #   for their products anyway (the same values), so half its bytes written and read twice; any 16-bit input
        # - bwd_ftz: the decay tiles of dCB and dx_lean take exp as ex2.approx.ftz (inline PTX, CUDA only): 6 instead
        #   of 9 instructions per element (tl.exp's ex2 adds a compare and two predicated multiplies for denormal
        #   results); the same values except results below 2^-126, which become 0
        # Measured on an H100 (session 6, 2026-12-07, bf16 B8 T8192 H32 P64 N128 Q256, fwd+bwd eager against bwd6
        # in the same run, .gpu/ssd7b.py): "bwd7 ds dcb16 ftz" 4.232 against 4.611 ms (graph 4.222 / 4.622; B2
        # T32768 4.217 / 4.595; B1 T131072 8.412 / 9.161), fp64-reference errors equal to bwd6's: on for bf16
        # where bwd6 is
        "ds_split": b6, "dcb_rl": False, "BN_DX": 32 if b6 else None,
        "dcb16": b6, "bwd_ftz": b6,
        # state_chain "grad": the chain only in a forward that saves for a backward (with grad), and only where
        # batch x heads >= chain_min_bh (programs per chunk: the chain's hand-offs stay hidden). Session 6, H100,
        # bf16 (.gpu/ssd7f.py, against the two-kernel path in the same run): "chain n64 w4" fwd+bwd B8 T8192
        # 4.394 against 4.694 ms, B2 T32768 4.370 / 4.669; without grad it is no faster (1.094 / 1.078 at B8,
        # 1.080 / 1.075 at B2) and the plain chain loses at B1 T131072 (batch x heads 32: forward 2.91 / 2.11).
        # Session 7 (H200, same run, fwd+bwd B8 T8192, with the bwd7 defaults above): 3.881 ms against 4.069 without
        # the chain (graph 3.845 / 4.027), fp64 errors equal, y / dB / dC / dx bitwise equal, final 1.5e-10, ddt 1e-6;
        # its GPU tests (fwd7) and the SSD GPU tests passed there: on for bf16 ("s6 chain" keys; "s6 default" is
        # session 6's two-kernel forward). The chain is the one kernel whose programs wait on each other (a flag per
        # (batch, head, block); the wait is bounded at 2^16 polls).
        "chain_min_bh": 64,
        # chain_nograd: with state_chain "grad", the chain also in a forward without grad where batch x heads >= its
        # first number, with its own (BN_CHAIN, warps_chain, maxnreg_chain). Session 6, H100: "chain mr128" (N 128,
        # 8 warps, cap 128) no-grad 1.032 against 1.077 ms at B8 T8192 (batch x heads 256), 1.118 against 1.075 at
        # B2 T32768 (64). Session 8 (H100, same run, on top of session 7's scan): B8 T8192 no-grad 1.021 against
        # 1.036 ms (graph 0.997 / 1.035; the chain 0.363 ms replaces chunk state 0.246 + state pass 0.147), y and
        # final states bitwise equal there: on for bf16 at batch x heads >= 128 (sweep config "s7 default": off)
        "chain_nograd": (128, None, None, 128) if b6 else None,
        # chain_lean (session 9, opt-in, untimed): the chain kernel without the always-zero head-row offset (LEAN)
        "chain_lean": False,
    }
    for k, v in CFG_OVERRIDE.items():
        if k in ("BM_SCAN", "BK_SCAN", "BM_DBC"):
            v = min(v, Q)
        cfg[k] = v
    return cfg


def _xw_split(dtype, split):
    """XW_SPLIT of the chunk-state products: -1 for fp32 inputs, else the config's split (0 or 1)."""
    return -1 if dtype == torch.float32 else split


def _hin_layout(dtype, cfg, keep=True):
    """How the forward stores hin: "32" (fp32), "16" (bf16: hin16, or hin16_nograd without grad) or
    "split" (hin_split: bf16 hi and lo planes)."""
    if dtype != torch.bfloat16:
        return "32"
    if cfg["hin16"] or (cfg["hin16_nograd"] and not keep):
        return "16"
    if cfg["hin_split"]:
        return "split"
    return "32"


def _maxnreg(n):
    """Launch keyword of a register cap (none when n is None)."""
    return {"maxnreg": n} if n else {}


def _strides3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _chunk_states(a, M, u, cs, b, nc, T, H, G, P, N, Q, cfg, *, reverse, xw_split):
    """The unfused chunk-state pass, (b, nc, H, P, N) fp32: forward with (x, B) local states, backward
    (reverse=True) with (dy, C) the per-chunk dy-side states. xw_split is the 16-bit operand split
    (-1 for fp32 inputs)."""
    out = new_empty((b, nc, H, P, N), dtype=torch.float32, device=a.device)
    BPs, BNs = cfg["BP_STATE"], cfg["BN_STATE"]
    _chunk_state_kernel[_grid(b * nc, H, triton.cdiv(P, BPs) * triton.cdiv(N, BNs), cfg["hfirst"])](
        a, M, u, cs, out, T, H, G, nc, P, N, *_strides3(a), *_strides3(M),
        Q=Q, BP=BPs, BN=BNs, BK=cfg["BK"], REVERSE=reverse, DOT_PREC=cfg["prec"],
        XW_SPLIT=xw_split, HFIRST=_hfirst(b * nc, cfg["hfirst"]), num_warps=cfg["warps_state"],
        num_stages=cfg["stages"],
        **({"maxnreg": cfg["maxnreg_state"]} if cfg["maxnreg_state"] else {}))
    return out


_BH = 8   # heads per program of the cumsum kernels


def _dt_cumsum(dt, dt_bias, A, tables, b, H, nc, Q, softplus, lo, hi):
    """The cumsum kernel: u (processed dt) and the within-chunk cumsum cs of u A, each (b, H, nc, Q): cs in fp64
    and as fp32 hi / lo planes (csh, csl)."""
    u = new_empty((b, H, nc, Q), dtype=torch.float32, device=dt.device)
    cs = new_empty((b, H, nc, Q), dtype=torch.float64, device=dt.device)
    csh = new_empty((b, H, nc, Q), dtype=torch.float32, device=dt.device)
    csl = new_empty((b, H, nc, Q), dtype=torch.float32, device=dt.device)
    varlen = tables is not None
    _cumsum_fwd_kernel[(b, nc, triton.cdiv(H, _BH))](
        dt, dt_bias if dt_bias is not None else u, A, tables.clen if varlen else u, u, cs, csh, csl,
        dt.shape[1], H, nc, *_strides3(dt), float(lo), float(hi) if hi != float("inf") else 0.0,
        Q=Q, BH=_BH, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(softplus), HAS_HI=hi != float("inf"),
        IS_VARLEN=varlen, num_warps=4)
    return u, cs, csh, csl


def _cb(C, B, dtype, b, nc, Q, cfg):
    """CB = C B^T per chunk and group, (b, nc, G, Q, Q) in `dtype` (the lower block triangle written)."""
    T, G, N = B.shape[1], B.shape[2], B.shape[3]
    cb = new_empty((b, nc, G, Q, Q), dtype=dtype, device=B.device)
    BMb = min(64, Q)
    _bmm_fwd_kernel[(b * nc, G, (Q // BMb) ** 2)](
        C, B, cb, T, G, N, nc, B.stride(0), B.stride(1), B.stride(2),
        Q=Q, BM=BMb, BK=min(64, cfg["BN"]), DOT_PREC=cfg["prec"], num_warps=4, num_stages=cfg["stages"])
    return cb


class _Tables:
    """Per-chunk tables of the packed layout (int32 tensors on the device)."""

    def __init__(self, clen, cinit, cfin, nfinal):
        self.clen, self.cinit, self.cfin, self.nfinal = clen, cinit, cfin, nfinal


def _chain_params(cfg, bh, nc, grad):
    """(BN_CHAIN, warps_chain, maxnreg_chain) when the forward takes the chained state kernel, else None: state_chain
    True always; "grad" in a forward with grad where batch x heads >= chain_min_bh, and without grad only where
    chain_nograd = (min batch x heads, BN_CHAIN, warps_chain, maxnreg_chain) is set and met (its own blocks)."""
    if not cfg["state_chain"] or (cfg["chain_max_nc"] is not None and nc > cfg["chain_max_nc"]):
        return None
    if cfg["state_chain"] is True or (grad and bh >= cfg["chain_min_bh"]):
        return cfg["BN_CHAIN"], cfg["warps_chain"], cfg["maxnreg_chain"]
    if not grad and cfg["chain_nograd"] is not None and bh >= cfg["chain_nograd"][0]:
        return tuple(cfg["chain_nograd"][1:])
    return None


def _fwd(x, dt, A, B, C, Q, D, z, dt_bias, softplus, lo, hi, init, tables, store_ypre):
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    nc = triton.cdiv(T, Q)
    dev = x.device
    cfg = _cfg(Q, P, N, x.dtype)
    varlen = tables is not None
    f32 = torch.float32
    u, cs, csh, csl = _dt_cumsum(dt, dt_bias, A, tables, b, H, nc, Q, softplus, lo, hi)
    dummy = u
    # CB in fp32 (the backward recomputes it in fp32 too): a 16-bit copy overflows to inf once
    # |C . B| > 65504 in fp16, and inf times a decay of 0 is NaN where the true term is 0 (measured:
    # y non-finite with |CB| up to 1e5 and small dt, true |y| <= 1.6e3). The 16-bit operand of the
    # product is CB e^{..} u, formed in fp32 first.
    cb = _cb(C, B, x.dtype if (cfg["cb16"] and x.dtype == torch.bfloat16) else f32, b, nc, Q, cfg)  # bf16: fp32's range
    # fp32 for every input dtype: besides the forward's C @ hin^T (cast to 16 bits there) the backward
    # uses hin as h_out in d cs_last = <dS, h_out>, and a 16-bit h_out made that decay-gradient term
    # lose 3-9x in dA (fp16 on CPU: 1.9e-3 vs 5.2e-4 at B2 T400 Q16; bf16 rounds 8x coarser)
    # (hin16_nograd: a forward whose hin no backward reads (no grad) writes it in bf16 for bf16 inputs:
    # the scan reads it rounded to 16 bits anyway, so y is unchanged and hin's traffic halves)
    # (hin_split: for bf16 inputs hin as a bf16 hi plane, which the scan and the dC pass read, and a bf16
    # lo plane, which only the reverse state pass adds back: (2, b, nc, H, P, N), hin to ~16 bits)
    layout = _hin_layout(x.dtype, cfg, store_ypre)
    if layout == "split":
        hin = new_empty((2, b, nc, H, P, N), dtype=x.dtype, device=dev)
    else:
        hin = new_empty((b, nc, H, P, N), dtype=x.dtype if layout == "16" else f32, device=dev)
    hin_hi, hin_lo = (hin[0], hin[1]) if layout == "split" else (hin, hin)
    nfin = tables.nfinal if varlen else b
    final = new_empty((nfin, H, P, N), dtype=f32, device=dev)
    # the chunk-state operand split (xw_split_nograd without grad) of the chain and the two-kernel path
    xws = cfg["xw_split_nograd"] if (cfg["xw_split_nograd"] is not None and not store_ypre) else cfg["xw_split"]
    if (chain := _chain_params(cfg, b * H, nc, store_ypre)) is not None:
        bn_chain, warps_chain, maxnreg_chain = chain
        BPs, BNs = cfg["BP_STATE"], cfg["BN_STATE"] if bn_chain is None else min(bn_chain, cfg["BN"])
        nblk = triton.cdiv(P, BPs) * triton.cdiv(N, BNs)
        ring = new_empty((2, b, H, P, N), dtype=f32, device=dev)
        sync = torch.zeros(1 + b * H * nblk, dtype=torch.int32, device=dev)
        _state_chain_fwd_kernel[(b * nc * H * nblk,)](
            x, B, u, cs, init if init is not None else dummy, tables.cinit if varlen else dummy,
            tables.cfin if varlen else dummy, hin_hi, hin_lo, final, ring, sync, T, H, G, nc, P, N, nblk, b,
            b * H * P * N, *_strides3(x), B.stride(0), B.stride(1), B.stride(2),
            Q=Q, BP=BPs, BN=BNs, BK=cfg["BK"], HAS_INIT=init is not None, IS_VARLEN=varlen,
            HIN_SPLIT=layout == "split", DOT_PREC=cfg["prec"], XW_SPLIT=_xw_split(x.dtype, xws),
            LEAN=cfg["chain_lean"], num_warps=cfg["warps_state"] if warps_chain is None else warps_chain,
            num_stages=cfg["stages"], **_maxnreg(maxnreg_chain))
    else:
        states = _chunk_states(x, B, u, cs, b, nc, T, H, G, P, N, Q, cfg, reverse=False,
                               xw_split=_xw_split(x.dtype, xws))
        PN = P * N
        BS = min(cfg["BS"], next_pow2(PN))
        _state_pass_fwd_kernel[(b, H, triton.cdiv(PN, BS))](
            states, cs, init if init is not None else dummy, tables.cinit if varlen else dummy,
            tables.cfin if varlen else dummy, hin_hi, hin_lo, final, H, nc, PN,
            Q=Q, BS=BS, HAS_INIT=init is not None, IS_VARLEN=varlen, HIN_SPLIT=layout == "split", num_warps=4)
        del states
    y = new_empty((b, T, H, P), dtype=x.dtype, device=dev)
    ypre = new_empty((b, T, H, P), dtype=x.dtype, device=dev) if (z is not None and store_ypre) else y
    BPc = cfg["BP_SCAN"]
    zz = z if z is not None else x
    r1 = cfg["scan_r1"] and not cfg["cs64"]
    BMs = min(cfg["BM_SCAN"], Q)  # a row block of 128 (sweep configs) at smaller chunks
    sc_split = bool(cfg["scan_split"]) and not r1 and not cfg["cs64"]
    sc_ftz = bool(cfg["scan_ftz"]) and not cfg["cs64"] and not interpret_mode()  # inline PTX: not in the interpreter
    sc_e2 = bool(cfg["scan_e2"]) and not r1 and not cfg["cs64"] and x.dtype != f32
    _chunk_scan_fwd_kernel[_grid(b * nc, H, (Q // BMs) * triton.cdiv(P, BPc), cfg["hfirst"])](
        x, zz, C, cb, u, cs, csh, csl, hin_hi, D if D is not None else dummy, y, ypre,
        T, H, G, nc, P, N, *_strides3(x), *_strides3(zz), C.stride(0), C.stride(1), C.stride(2), *_strides3(y),
        Q=Q, BM=BMs, BP=BPc, BK=cfg["BK_SCAN"], BN=cfg["BN_SCAN"],
        HAS_D=D is not None, D_PER_CHAN=D is not None and D.dim() == 2, HAS_Z=z is not None,
        STORE_YPRE=z is not None and store_ypre, DOT_PREC=cfg["prec"], HFIRST=_hfirst(b * nc, cfg["hfirst"]),
        CS64=cfg["cs64"],
        R1=r1,
        **({"SPLIT": True} if sc_split else {}), **({"FTZ": True} if sc_ftz else {}), **({"E2": True} if sc_e2 else {}),
        num_warps=cfg["warps_scan"],
        num_stages=cfg["stages"] if cfg["stages_scan"] is None else cfg["stages_scan"], **_maxnreg(cfg["maxnreg_scan"]))
    return y, final, hin, ypre


def _bwd(dy, dfinal, x, dt, A, B, C, Q, D, z, dt_bias, softplus, lo, hi, init, tables, hin, final, ypre, outs=None):
    """outs: optional dict of preallocated gradients (any strides, unit stride along the last dim):
    'dx', 'ddt', 'dB', 'dC' (utils.GradSlab: slices of one buffer, so the caller needs no cat)."""
    outs = outs or {}
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    nc = triton.cdiv(T, Q)
    dev = x.device
    cfg = _cfg(Q, P, N, x.dtype)
    varlen = tables is not None
    f32 = torch.float32
    hin_split = hin.dim() == 6  # (2, b, nc, H, P, N): hi and lo planes (_hin_layout "split")
    hin_hi, hin_lo = (hin[0], hin[1]) if hin_split else (hin, hin)
    hin = hin_hi
    dummy = hin
    # recompute the cheap forward pieces: u, cs and CB
    u, cs, csh, csl = _dt_cumsum(dt, dt_bias, A, tables, b, H, nc, Q, softplus, lo, hi)
    cb = _cb(C, B, x.dtype if (cfg["cbb16"] and x.dtype == torch.bfloat16) else f32, b, nc, Q, cfg)

    dy = dy.contiguous()
    dz = None
    if z is not None:
        zc = z.contiguous()
        dz = new_empty(zc.shape, dtype=z.dtype, device=dev)
        dyp = new_empty(dy.shape, dtype=f32, device=dev)  # kept in fp32: it feeds the decay gradient
        n = dy.numel()
        BLOCK = 1024
        _gate_bwd_kernel[(triton.cdiv(n, BLOCK),)](dy, zc, ypre, dyp, dz, n, BLOCK=BLOCK, num_warps=4)
        dy = dyp
    elif dy.dtype != x.dtype:
        dy = dy.to(x.dtype)

    # dy-side local states, then the reverse state pass (in place: ldh becomes dS, the gradient of
    # each chunk's end state)
    dinit = None
    if init is not None:
        dinit = (torch.zeros if varlen else new_empty)(init.shape, dtype=f32, device=dev)
    lean = cfg["dx_lean"] and cfg["tsum_dcb"] and not cfg["cs64"]
    # ds_split: dS stored as the two bf16 pieces that dx (state_bf16 2) and dB cut from it anyway
    ds_split = bool(cfg["ds_split"]) and lean and cfg["state_bf16"] == 2 and x.dtype == torch.bfloat16
    ds_sp = new_empty((b, nc, H, 2, P, N), dtype=torch.bfloat16, device=dev) if ds_split else None
    ldh = _chunk_states(dy, C, u, cs, b, nc, T, H, G, P, N, Q, cfg, reverse=True,
                        xw_split=_xw_split(x.dtype, cfg["xw_split_bwd"]))
    PN = P * N
    BS = min(cfg["BS"], next_pow2(PN))
    nbs = triton.cdiv(PN, BS)
    ddal = new_empty((b, H, nc, nbs), dtype=f32, device=dev)
    _state_pass_bwd_kernel[(b, H, nbs)](
        ldh, cs, hin_hi, hin_lo, final, dfinal if dfinal is not None else dummy, tables.cinit if varlen else u,
        tables.cfin if varlen else u, dinit if dinit is not None else u, ddal, H, nc, PN,
        Q=Q, BS=BS, HAS_DFIN=dfinal is not None, HAS_INIT=init is not None, IS_VARLEN=varlen,
        HIN_SPLIT=hin_split, num_warps=4, **({"dsp_ptr": ds_sp, "DS_SPLIT": True} if ds_split else {}))
    ds = ldh if ds_sp is None else ds_sp
    ddal = ddal.sum(-1)

    dx = outs.get("dx")
    if dx is None:
        dx = new_empty((b, T, H, P), dtype=x.dtype, device=dev)
    du = new_empty((b, H, nc, Q), dtype=f32, device=dev)
    dcs = new_empty((b, H, nc, Q), dtype=f32, device=dev)
    BJ = cfg["BM"]
    NB = Q // BJ
    rowt = new_empty((b, H, nc, NB, Q), dtype=f32, device=dev)
    rterm = new_empty((b, H, nc, Q), dtype=f32, device=dev)
    tsum = cfg["tsum_dcb"]
    ftz = bool(cfg["bwd_ftz"]) and not interpret_mode()  # inline PTX: not in the interpreter
    BJx = min(cfg["BJ_DX"] or BJ, Q) if lean else BJ
    dD_part = new_empty((b * nc * (Q // BJx), H, P), dtype=f32, device=dev) if D is not None else u
    colt = new_empty((b, H, nc, NB, Q), dtype=f32, device=dev) if tsum else rowt
    mixed_t = dy.dtype == f32 and x.dtype != f32
    hfirst = _hfirst(b * nc, cfg["hfirst"])  # heads / blocks fastest in the grids below (HFIRST, MFIRST)

    def launch_dcb():
        _scan_bwd_dcb_kernel[(NB * NB, G, b * nc) if hfirst else (b * nc, G, NB * NB)](
            x, dy, u, cs, csh, csl, dcb, cb, rowt, colt, T, H, G, nc, P, *_strides3(x), *_strides3(dy),
            Q=Q, BM=BJ, BP=cfg["BP"], DOT_PREC=cfg["prec"], CS64=cfg["cs64"], MFIRST=hfirst, TSUM=tsum,
            MIXED_T=mixed_t, **({"CB_RL": True} if (cfg["dcb_rl"] and tsum) else {}),
            **({"FTZ": True} if (ftz and not cfg["cs64"]) else {}),
            num_warps=cfg["warps_dcb"] or cfg["warps"],
            num_stages=cfg["stages_dcb"] or cfg["stages"], **_maxnreg(cfg["maxnreg_dcb"]))

    # dcb16: dCB stored in the 16-bit input dtype, to which the dB / dC products round it anyway
    dcb = new_empty((b, nc, G, Q, Q), dtype=x.dtype if (cfg["dcb16"] and x.dtype != f32) else f32, device=dev)
    if tsum:  # the dCB kernel writes the T sums that dx reads
        launch_dcb()
    if lean:
        _scan_bwd_dx_lean_kernel[_grid(b * nc, H, Q // BJx, cfg["hfirst"])](
            x, dy, B, cb, u, cs, csh, csl, ds, D if D is not None else u, dx, du, dcs, colt, dD_part,
            T, H, G, nc, P, N, *_strides3(x), *_strides3(dy), B.stride(0), B.stride(1), B.stride(2),
            *_strides3(dx),
            Q=Q, BJ=BJx, BI=min(cfg["BI_DX"], Q), BP=cfg["BP"], BN=min(cfg["BN_DX"] or cfg["BN_SCAN"], cfg["BN"]),
            NBT=NB, HAS_D=D is not None,
            D_PER_CHAN=D is not None and D.dim() == 2, HFIRST=hfirst, DOT_PREC=cfg["prec"],
            SPLIT_F32=x.dtype != f32, STATE_BF16=cfg["state_bf16"] if B.dtype == torch.bfloat16 else 0,
            num_warps=cfg["warps_dx"] or cfg["warps"], num_stages=cfg["stages_dx"] or cfg["stages"],
            **_maxnreg(cfg["maxnreg_dx"]), **({"DS_SPLIT": True} if ds_split else {}), **({"FTZ": True} if ftz else {}))
    else:
        _scan_bwd_dx_kernel[_grid(b * nc, H, NB, cfg["hfirst"])](
            x, dy, B, cb, u, cs, csh, csl, ds, D if D is not None else u, dx, du, dcs, rowt, colt, dD_part,
            T, H, G, nc, P, N, *_strides3(x), *_strides3(dy), B.stride(0), B.stride(1), B.stride(2), *_strides3(dx),
            Q=Q, BJ=BJ, BP=cfg["BP"], BN=cfg["BN_SCAN"], HAS_D=D is not None,
            D_PER_CHAN=D is not None and D.dim() == 2, DOT_PREC=cfg["prec"], HFIRST=hfirst,
            CS64=cfg["cs64"],
            MIXED_T=mixed_t, SPLIT_F32=x.dtype != f32,
            STATE_BF16=cfg["state_bf16"] if B.dtype == torch.bfloat16 else 0, TSUM=tsum,
            num_warps=cfg["warps"], num_stages=cfg["stages_dx"] or cfg["stages"], **_maxnreg(cfg["maxnreg_dx"]))
    if not tsum:
        launch_dcb()
    dB, dC = outs.get("dB"), outs.get("dC")
    dB = new_empty(B.shape, dtype=B.dtype, device=dev) if dB is None else dB
    dC = new_empty(C.shape, dtype=C.dtype, device=dev) if dC is None else dC
    BMd = cfg["BM_DBC"]
    for is_db, out in ((True, dB), (False, dC)):
        _scan_bwd_dbc_kernel[(Q // BMd, G, b * nc) if hfirst else (b * nc, G, Q // BMd)](
            x, dy, B, C, u, cs, hin_hi, ds, dcb, dB, dC, rterm, T, H, G, nc, P, N,
            *_strides3(x), *_strides3(dy), B.stride(0), B.stride(1), B.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            Q=Q, BM=BMd, BK=BMd, BP=cfg["BP"], BN=cfg["BN"], IS_DB=is_db, MFIRST=hfirst,
            R_TF32=cfg["r_prec"] == "tf32" and x.dtype != f32, DOT_PREC=cfg["prec"],
            num_warps=cfg["warps_dbc"], num_stages=cfg["stages"], **({"DS_SPLIT": True} if ds_split else {}))

    ddt = outs.get("ddt")
    if ddt is None:
        ddt = new_empty(dt.shape, dtype=dt.dtype, device=dev)
    dA_part = new_empty((b, nc, H), dtype=f32, device=dev)
    dbias_part = new_empty((b, nc, H), dtype=f32, device=dev) if dt_bias is not None else u
    _cumsum_bwd_kernel[(b, nc, triton.cdiv(H, _BH))](
        dt, dt_bias if dt_bias is not None else u, A, tables.clen if varlen else u, u, du, dcs, rowt, rterm, ddal,
        ddt, dA_part, dbias_part, T, H, nc, *_strides3(dt), *_strides3(ddt), float(lo),
        float(hi) if hi != float("inf") else 0.0,
        Q=Q, BH=_BH, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(softplus), HAS_HI=hi != float("inf"),
        IS_VARLEN=varlen, NB=NB, num_warps=4)
    dA = dA_part.sum((0, 1)).to(A.dtype)
    dbias = dbias_part.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dD = None
    if D is not None:
        dD = dD_part.sum(0)
        dD = (dD if D.dim() == 2 else dD.sum(-1)).to(D.dtype)
    if dinit is not None:
        dinit = dinit.to(init.dtype)
    return dx, ddt, dA, dB, dC, dD, dz, dbias, dinit


def _segments(seq_idx, cu_seqlens, b, L):
    """List of (row, start, end, init_row or -1, final_row) for every non-empty segment, and the
    number of final-state rows."""
    segs = []
    if cu_seqlens is not None:
        cu = cu_seqlens.tolist()
        for s in range(len(cu) - 1):
            if cu[s + 1] > cu[s]:
                segs.append((0, cu[s], cu[s + 1], s, s))
        return segs, len(cu) - 1
    si = seq_idx.cpu()
    for r in range(b):
        row = si[r]
        cuts = (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
        bounds = [0] + cuts + [L]
        n = len(bounds) - 1
        for k in range(n):
            segs.append((r, bounds[k], bounds[k + 1], r if k == 0 else -1, r if k == n - 1 else DISCARD))
    return segs, b


def _layout(seq_idx, cu_seqlens, b, L, Q, has_init, device):
    """Chunk-aligned packed layout: each segment starts on a chunk boundary."""
    segs, nfinal = _segments(seq_idx, cu_seqlens, b, L)
    dest, clen, cinit, cfin = [], [], [], []
    nonempty = torch.zeros(nfinal, dtype=torch.bool)
    pos = 0
    for r, s, e, ir, fr in segs:  # segments come in (row, time) order, like the flattened tokens
        n = e - s
        nch = -(-n // Q)
        dest.append(torch.arange(pos, pos + n))
        for k in range(nch):
            clen.append(min(Q, n - k * Q))
            cinit.append((ir if has_init else -1) if k == 0 else CONTINUE)
            cfin.append(fr if k == nch - 1 else NOT_END)
        if fr >= 0:
            nonempty[fr] = True
        pos += nch * Q
    dest = torch.cat(dest)  # dest[token] = its position in the aligned layout
    i32 = dict(dtype=torch.int32, device=device)
    tables = _Tables(torch.tensor(clen, **i32), torch.tensor(cinit, **i32), torch.tensor(cfin, **i32), nfinal)
    return dest.to(device), pos, tables, nonempty.to(device)


def _align(t, dest, total):
    """(b, L, ...) -> (1, total, ...) with token k at position dest[k], zeros elsewhere."""
    flat = t.reshape(-1, *t.shape[2:])
    out = flat.new_zeros((total, *t.shape[2:])).index_copy(0, dest, flat)
    return out[None]


def _unalign(t, dest, shape):
    """Inverse of _align: (1, total, ...) -> shape, reading the token positions dest."""
    return t[0].index_select(0, dest).reshape(shape)


def scan_forward(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, Q, softplus, lo, hi, keep):
    """Forward in the caller's layout (no autograd). Returns y, final_states and what the backward
    needs: hin, ypre (None without z) and the packed layout (None when not packed)."""
    if seq_idx is None and cu_seqlens is None:
        y, final, hin, ypre = _fwd(x, dt, A, B, C, Q, D, z, dt_bias, softplus, lo, hi, init, None, keep)
        return y, final, hin, (ypre if z is not None else None), None
    b, L = x.shape[:2]
    layout = _layout(seq_idx, cu_seqlens, b, L, Q, init is not None, x.device)
    dest, total, tables, nonempty = layout
    xa, dta, Ba, Ca = (_align(t, dest, total) for t in (x, dt, B, C))
    za = _align(z, dest, total) if z is not None else None
    ya, final, hin, ypre = _fwd(xa, dta, A, Ba, Ca, Q, D, za, dt_bias, softplus, lo, hi, init, tables, keep)
    y = _unalign(ya, dest, x.shape)
    if not bool(nonempty.all()):  # an empty sequence's final state is its initial state
        fill = init.float() if init is not None else torch.zeros_like(final)
        final = torch.where(nonempty[:, None, None, None], final, fill)
    return y, final, hin, (ypre if z is not None else None), layout


def scan_backward(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, Q, softplus, lo, hi,
                  hin, ypre, final, layout, outs=None):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit) in the caller's layout, None where an
    input is None. hin / ypre / layout may be None: they are recomputed. outs: see _bwd (used only
    without seq_idx / cu_seqlens; the packed path gathers its gradients anyway)."""
    if dy is None:
        dy = torch.zeros_like(x)
    if seq_idx is None and cu_seqlens is None:
        if hin is None or (z is not None and ypre is None):
            _, final, hin, ypre = _fwd(x, dt, A, B, C, Q, D, z, dt_bias, softplus, lo, hi, init, None, True)
        return _bwd(dy, dfinal, x, dt, A, B, C, Q, D, z, dt_bias, softplus, lo, hi, init, None, hin, final, ypre,
                    outs)
    b, L = x.shape[:2]
    recompute = layout is None or hin is None or (z is not None and ypre is None)
    if layout is None:
        layout = _layout(seq_idx, cu_seqlens, b, L, Q, init is not None, x.device)
    dest, total, tables, nonempty = layout
    xa, dta, Ba, Ca = (_align(t, dest, total) for t in (x, dt, B, C))
    za = _align(z, dest, total) if z is not None else None
    if recompute:
        _, final, hin, ypre = _fwd(xa, dta, A, Ba, Ca, Q, D, za, dt_bias, softplus, lo, hi, init, tables, True)
    dfin_k = dfinal
    if dfinal is not None and not bool(nonempty.all()):
        dfin_k = torch.where(nonempty[:, None, None, None], dfinal, torch.zeros_like(dfinal))
    grads = _bwd(_align(dy, dest, total), dfin_k, xa, dta, A, Ba, Ca, Q, D, za, dt_bias, softplus, lo, hi, init,
                 tables, hin, final, ypre)
    dxa, ddta, dA, dBa, dCa, dD, dza, dbias, dinit = grads
    dx = _unalign(dxa, dest, x.shape)
    ddt = _unalign(ddta, dest, dt.shape)
    dB = _unalign(dBa, dest, B.shape)
    dC = _unalign(dCa, dest, C.shape)
    dz = _unalign(dza, dest, z.shape) if dza is not None else None
    if dinit is not None and dfinal is not None and not bool(nonempty.all()):
        dinit = dinit + torch.where(nonempty[:, None, None, None], torch.zeros_like(dfinal), dfinal).to(dinit.dtype)
    return dx, ddt, dA, dB, dC, dD, dz, dbias, dinit


def _prep(x, A, B, C, z):
    """tl.dot wants one operand dtype: B, C and z follow x; A is fp32."""
    return A.float(), B.to(x.dtype), C.to(x.dtype), (z.to(x.dtype) if z is not None else None)


def _cast_grads(grads, B, C, z):
    dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = grads
    return (dx, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz.to(z.dtype) if dz is not None else None,
            dbias, dinit)


_GRAD_IDX = {"dx": 0, "ddt": 1, "dB": 3, "dC": 4}


class SSDScanFunction(torch.autograd.Function):
    """The eager path (torch.compile goes through the registered ops below, same launchers)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, Q, softplus, lo, hi):
        keep = any(ctx.needs_input_grad)
        A32, Bx, Cx, zx = _prep(x, A, B, C, z)
        y, final, hin, ypre, layout = scan_forward(x, dt, A32, Bx, Cx, D, zx, dt_bias, init, seq_idx, cu_seqlens,
                                                   Q, softplus, lo, hi, keep)
        if keep:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, hin, ypre, final)
            ctx.layout = layout
            # gradients into a caller's slab (utils.GradSlab), where B and C need no cast
            ctx.dests = {k: grad_dest(t) for k, t in (("dx", x), ("ddt", dt), ("dB", B), ("dC", C))} \
                if seq_idx is None and cu_seqlens is None and B.dtype == C.dtype == x.dtype else {}
        ctx.cfg = (Q, softplus, lo, hi)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, hin, ypre, final = ctx.saved_tensors
        Q, softplus, lo, hi = ctx.cfg
        A32, Bx, Cx, zx = _prep(x, A, B, C, z)
        outs = {k: take_dest(d) for k, d in ctx.dests.items() if d is not None and ctx.needs_input_grad[_GRAD_IDX[k]]}
        grads = scan_backward(dy, dfinal, x, dt, A32, Bx, Cx, D, zx, dt_bias, init, seq_idx, cu_seqlens, Q, softplus,
                              lo, hi, hin, ypre, final, ctx.layout, outs)
        grads = _cast_grads(grads, B, C, z)
        dA = grads[2].to(A.dtype)
        return (grads[0], grads[1], dA, *grads[3:], None, None, None, None, None, None)


# Registered ops: torch.compile sees opaque calls with shape-only fake implementations, no graph break.
# The forward op hands hin / ypre to the backward op when their shapes are static; packed input
# (seq_idx / cu_seqlens, data-dependent layout) gets empty placeholders and the backward recomputes.
_EMPTY = (0,)


@torch.library.custom_op("hybridna::ssd_scan_fwd", mutates_args=())
def ssd_scan_fwd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                    initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                    cu_seqlens: Optional[torch.Tensor], chunk_size: int, dt_softplus: bool, lo: float,
                    hi: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    A32, Bx, Cx, zx = _prep(x, A, B, C, z)
    y, final, hin, ypre, layout = scan_forward(x, dt, A32, Bx, Cx, D, zx, dt_bias, initial_states, seq_idx,
                                               cu_seqlens, chunk_size, dt_softplus, lo, hi, True)
    if layout is not None:
        hin = ypre = None
    hin = hin if hin is not None else x.new_empty(_EMPTY)
    ypre = ypre if ypre is not None else x.new_empty(_EMPTY)
    return y, final, hin, ypre


@ssd_scan_fwd_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, chunk_size, dt_softplus, lo, hi):
    b, L, H, P = x.shape
    N = B.shape[-1]
    nfin = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
    packed = seq_idx is not None or cu_seqlens is not None
    nc = -(-L // chunk_size)
    lay = _hin_layout(x.dtype, _cfg(chunk_size, P, N, x.dtype))
    hin = (x.new_empty(_EMPTY) if packed else x.new_empty((2, b, nc, H, P, N)) if lay == "split"
           else x.new_empty((b, nc, H, P, N), dtype=x.dtype if lay == "16" else torch.float32))
    ypre = x.new_empty((b, L, H, P)) if (z is not None and not packed) else x.new_empty(_EMPTY)
    return x.new_empty(x.shape), x.new_empty((nfin, H, P, N), dtype=torch.float32), hin, ypre


@torch.library.custom_op("hybridna::ssd_scan_bwd", mutates_args=())
def ssd_scan_bwd_op(dy: torch.Tensor, dfinal: Optional[torch.Tensor], x: torch.Tensor, dt: torch.Tensor,
                    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                    z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                    initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                    cu_seqlens: Optional[torch.Tensor], hin: torch.Tensor, ypre: torch.Tensor,
                    final: torch.Tensor, chunk_size: int, dt_softplus: bool, lo: float,
                    hi: float) -> list[torch.Tensor]:
    A32, Bx, Cx, zx = _prep(x, A, B, C, z)
    grads = scan_backward(dy, dfinal, x, dt, A32, Bx, Cx, D, zx, dt_bias, initial_states, seq_idx, cu_seqlens,
                          chunk_size, dt_softplus, lo, hi, hin if hin.numel() else None,
                          ypre if ypre.numel() else None, final, None)
    grads = _cast_grads(grads, B, C, z)
    out = [grads[0], grads[1], grads[2].to(A.dtype), grads[3], grads[4]]
    # absent inputs get empty placeholders (an op cannot return None)
    out += [g if g is not None else x.new_empty(_EMPTY) for g in grads[5:]]
    return out


@ssd_scan_bwd_op.register_fake
def _(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, hin, ypre, final, chunk_size,
      dt_softplus, lo, hi):
    def like(t):
        return t.new_empty(t.shape) if t is not None else x.new_empty(_EMPTY)

    return [like(x), like(dt), like(A), like(B), like(C), like(D), like(z), like(dt_bias), like(initial_states)]


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, Q, softplus, lo, hi = inputs
    y, final, hin, ypre = output
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, hin, ypre, final)
    ctx.cfg = (Q, softplus, lo, hi)
    ctx.present = [t is not None for t in (D, z, dt_bias, init)]


def _backward(ctx, dy, dfinal, _dhin, _dypre):
    x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, hin, ypre, final = ctx.saved_tensors
    Q, softplus, lo, hi = ctx.cfg
    if dy is None:
        dy = torch.zeros_like(x)
    g = ssd_scan_bwd_op(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, hin, ypre, final, Q,
                        softplus, lo, hi)
    opt = [gi if present else None for gi, present in zip(g[5:], ctx.present)]
    return (g[0], g[1], g[2], g[3], g[4], *opt, None, None, None, None, None, None)


ssd_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def ssd_scan_fn(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
                cu_seqlens, return_final_states):
    """Kernel path of ssd_scan (arguments already validated by the public function)."""
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    args = (x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, int(chunk_size), bool(dt_softplus),
            lo, hi)
    if torch.compiler.is_compiling():
        y, final = ssd_scan_fwd_op(*args)[:2]
    else:
        y, final = SSDScanFunction.apply(*args)
    return (y, final) if return_final_states else y
