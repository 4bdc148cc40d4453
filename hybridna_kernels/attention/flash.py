"""Triton flash attention, forward and backward: online softmax in the exp2 domain, fp32 accumulation,
causal / sliding-window masks with fully masked blocks skipped, GQA by indexing the kv head, packed
varlen through cu_seqlens, any sequence length, headdim up to 256 (padded to a power of two).

Kernels:
    _attn_fwd_kernel        o, lse for one (query block, query head)
    _attn_bwd_delta_kernel  delta = rowsum(dO * O)
    _attn_bwd_dkdv_kernel   dk, dv for one (key block, kv head), looping over the group's query heads
    _attn_bwd_dq_kernel     dq for one (query block, query head): a separate pass, no atomics
Maths and the block ranges: README.md in this folder.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils import autotune, cdiv, grad_dest, interpret_mode, new_empty, next_pow2, take_dest

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# Block ranges shared by the kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _key_range(start_m, seqlen_q, seqlen_k, window,
               IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Key blocks seen by queries [start_m, start_m + BM): [lo, hi), of which [lo_full, hi_full)
    need no mask. lo, lo_full, hi_full are multiples of BN (or equal hi)."""
    off = seqlen_k - seqlen_q                      # query i sits at key position i + off
    p_min = start_m + off
    p_max = start_m + BM - 1 + off
    lo = 0
    hi = seqlen_k
    lo_full = 0
    hi_full = (seqlen_k // BN) * BN
    if IS_CAUSAL:
        hi = tl.minimum(hi, tl.maximum(p_max + 1, 0))
        hi_full = tl.minimum(hi_full, (tl.maximum(p_min + 1, 0) // BN) * BN)
    if HAS_WINDOW:
        lo = (tl.maximum(p_min - window + 1, 0) // BN) * BN
        lo_full = tl.cdiv(tl.maximum(p_max - window + 1, 0), BN) * BN
    lo = tl.minimum(lo, hi)
    lo_full = tl.minimum(tl.maximum(lo_full, lo), hi)
    hi_full = tl.minimum(tl.maximum(hi_full, lo_full), hi)
    return lo, lo_full, hi_full, hi


@triton.jit
def _query_range(start_n, seqlen_q, seqlen_k, window,
                 IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Query blocks that see keys [start_n, start_n + BN): [lo, hi), of which [lo_full, hi_full)
    need no mask. lo, lo_full, hi_full are multiples of BM (or equal hi)."""
    off = seqlen_k - seqlen_q
    lo = 0
    hi = seqlen_q
    lo_full = 0
    hi_full = (seqlen_q // BM) * BM
    if start_n + BN > seqlen_k:                    # partial key block: mask every query block
        hi_full = 0
    if IS_CAUSAL:
        # query i sees key j when j <= i + off
        lo = (tl.maximum(start_n - off, 0) // BM) * BM
        lo_full = tl.cdiv(tl.maximum(start_n + BN - 1 - off, 0), BM) * BM
    if HAS_WINDOW:
        # ... and j > i + off - window: last query seeing the block is start_n + BN - 2 + window - off
        hi = tl.minimum(hi, tl.maximum(start_n + BN - 1 + window - off, 0))
        hi_full = tl.minimum(hi_full, (tl.maximum(start_n + window - off, 0) // BM) * BM)
    lo = tl.minimum(lo, hi)
    lo_full = tl.minimum(tl.maximum(lo_full, lo), hi)
    hi_full = tl.minimum(tl.maximum(hi_full, lo_full), hi)
    return lo, lo_full, hi_full, hi


@triton.jit
def _visible(o_m, o_n, seqlen_q, seqlen_k, window, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(BM, BN) mask: query rows o_m (query indices) may see keys o_n."""
    pos = o_m + (seqlen_k - seqlen_q)
    vis = (o_m[:, None] < seqlen_q) & (o_n[None, :] < seqlen_k)
    if IS_CAUSAL:
        vis = vis & (o_n[None, :] <= pos[:, None])
    if HAS_WINDOW:
        vis = vis & (o_n[None, :] > pos[:, None] - window)
    return vis


@triton.jit
def _visible_T(o_n, o_m, seqlen_q, seqlen_k, window, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(BN, BM) mask, the transpose of _visible built in place: key rows o_n seen by query columns o_m."""
    pos = o_m + (seqlen_k - seqlen_q)
    vis = (o_n[:, None] < seqlen_k) & (o_m[None, :] < seqlen_q)
    if IS_CAUSAL:
        vis = vis & (o_n[:, None] <= pos[None, :])
    if HAS_WINDOW:
        vis = vis & (o_n[:, None] > pos[None, :] - window)
    return vis


@triton.jit
def _sequence(CU, i_b, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr):
    """Sequence i_b: its first row in the packed rows (varlen; else 0), the batch index to stride by (int64;
    0 when packed) and its query / key lengths (varlen: both from cu_seqlens)."""
    if IS_VARLEN:
        bos = tl.load(CU + i_b).to(tl.int64)
        seqlen_q = (tl.load(CU + i_b + 1) - tl.load(CU + i_b)).to(tl.int32)
        seqlen_k = seqlen_q
        i_b64 = tl.zeros([], dtype=tl.int64)
    else:
        bos = tl.zeros([], dtype=tl.int64)
        i_b64 = i_b.to(tl.int64)
    return bos, i_b64, seqlen_q, seqlen_k


@triton.jit
def _tile(X, i_b64, bos, i_h, sb, st, sh, o_r, o_d):
    """Pointers to rows o_r (of the sequence starting at packed row bos; batch i_b64) x head dims o_d of head i_h of
    a (batch, rows, heads, headdim) tensor X with strides sb, st, sh."""
    return X + i_b64 * sb + bos * st + i_h.to(tl.int64) * sh + o_r[:, None] * st + o_d[None, :]


@triton.jit
def _query_block_program(CU, max_len, nheads_q, seqlen_q, seqlen_k, GROUP: tl.constexpr, IS_VARLEN: tl.constexpr,
                         REVERSE_M: tl.constexpr, M_MAJOR: tl.constexpr, BM: tl.constexpr):
    """This program's (query block, query head) in the forward and dq grids: its first query row, query
    head, kv head, sequence start in the packed rows, batch index (int64; 0 when packed) and lengths.
    M_MAJOR: the dq kernel's variant mmajor=dq (the forward is head-major)."""
    pid = tl.program_id(0)
    n_mblocks = tl.cdiv(max_len, BM)
    if M_MAJOR:  # every head's block m before any head's block m + 1 (heaviest first across heads)
        n_bh = tl.num_programs(0) // n_mblocks
        pid_m = pid // n_bh
        pid_bh = pid % n_bh
    else:        # one head's blocks together (its K/V stays in L2)
        pid_m = pid % n_mblocks
        pid_bh = pid // n_mblocks
    if REVERSE_M:  # causal: the longest query blocks first, so the tail of the grid is short
        pid_m = n_mblocks - 1 - pid_m
    i_b = pid_bh // nheads_q
    i_h = pid_bh % nheads_q
    i_hk = i_h // GROUP
    bos, i_b64, seqlen_q, seqlen_k = _sequence(CU, i_b, seqlen_q, seqlen_k, IS_VARLEN)
    return pid_m * BM, i_h, i_hk, bos, i_b64, seqlen_q, seqlen_k


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_kv(p_k, p_v, skt, svt, start_n, n64, o_k, m_d, seqlen_k, MASK: tl.constexpr, EVEN_D: tl.constexpr,
             TMA: tl.constexpr, KD, VD, row0, col):
    """The K, V tiles of the key block at start_n (keys o_k = start_n + o_n, n64 = start_n as int64): through the
    descriptors KD, VD with TMA (unmasked blocks only), else from the pointer tiles p_k, p_v (row 0 of the
    sequence) masked by the sequence end with MASK, else by the head dim unless EVEN_D."""
    if TMA and not MASK:
        b_k = KD.load([row0 + start_n, col])
        b_v = VD.load([row0 + start_n, col])
    elif MASK:
        m_kv = (o_k < seqlen_k)[:, None] & m_d[None, :]
        b_k = tl.load(p_k + n64 * skt, mask=m_kv, other=0.0)
        b_v = tl.load(p_v + n64 * svt, mask=m_kv, other=0.0)
    elif EVEN_D:
        b_k = tl.load(p_k + n64 * skt)
        b_v = tl.load(p_v + n64 * svt)
    else:
        b_k = tl.load(p_k + n64 * skt, mask=m_d[None, :], other=0.0)
        b_v = tl.load(p_v + n64 * svt, mask=m_d[None, :], other=0.0)
    return b_k, b_v


@triton.jit
def _fwd_inner(acc, l_i, m_i, b_q, p_k, p_v, skt, svt, start, end, o_m, o_n, m_d,
               seqlen_q, seqlen_k, qk_scale, window,
               MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               EVEN_D: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr,
               TMA: tl.constexpr = False, KD=None, VD=None, row0=0, col=0):
    """Key blocks [start, end) into (acc, l_i, m_i). TMA (unmasked blocks only): K, V through the
    2-D descriptors KD, VD (rows of all sequences x heads * headdim) at rows row0 + n, column col."""
    for start_n in range(start, end, BN):
        n64 = tl.zeros([], dtype=tl.int64) + start_n
        o_k = start_n + o_n
        b_k, b_v = _load_kv(p_k, p_v, skt, svt, start_n, n64, o_k, m_d, seqlen_k, MASK, EVEN_D, TMA, KD, VD, row0, col)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)                  # (BM, BN), unscaled
        # the max of the raw scores times qk_scale (> 0) is the max of the scaled ones, and
        # s * qk_scale - m is one FMA per element
        if MASK:
            b_s = tl.where(_visible(o_m, o_k, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW), b_s,
                           float("-inf"))
            m_new = tl.maximum(m_i, tl.max(b_s, 1) * qk_scale)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing visible yet
        else:
            m_new = tl.maximum(m_i, tl.max(b_s, 1) * qk_scale)
            m_use = m_new
        b_p = tl.math.exp2(b_s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(b_p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(b_p.to(b_v.dtype), b_v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _lse_ln(m, l):
    """The natural log-sum-exp of a row from its running max m (log2 domain) and sum l: -inf where l = 0."""
    return tl.where(l == 0.0, float("-inf"), (m + tl.math.log2(tl.where(l == 0.0, 1.0, l))) * 0.6931471805599453)


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "window", "lse_len", "max_len", "L_BUCKET"])
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
    seqlen_q, seqlen_k, nheads_q, lse_len, max_len, qk_scale, window, L_BUCKET,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE_M: tl.constexpr,
    DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TMA: tl.constexpr = False, KD=None, VD=None,
):
    start_m, i_h, i_hk, bos, i_b64, seqlen_q, seqlen_k = _query_block_program(
        CU, max_len, nheads_q, seqlen_q, seqlen_k, GROUP, IS_VARLEN, REVERSE_M, False, BM)
    if start_m >= seqlen_q:
        return
    o_m = start_m + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_d = o_d < HEAD_DIM
    m_m = o_m < seqlen_q
    EVEN_D: tl.constexpr = HEAD_DIM == BD

    q_base = Q + i_b64 * sqb + bos * sqt + i_h.to(tl.int64) * sqh
    k_base = K + i_b64 * skb + bos * skt + i_hk.to(tl.int64) * skh
    v_base = V + i_b64 * svb + bos * svt + i_hk.to(tl.int64) * svh
    b_q = tl.load(q_base + o_m[:, None].to(tl.int64) * sqt + o_d[None, :], mask=m_m[:, None] & m_d[None, :],
                  other=0.0)
    p_k = k_base + o_n[:, None] * skt + o_d[None, :]
    p_v = v_base + o_n[:, None] * svt + o_d[None, :]

    acc = tl.zeros([BM, BD], dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    lo, lo_full, hi_full, hi = _key_range(start_m, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW, BM, BN)
    # window's left edge (masked), the fully visible middle (no mask), the diagonal / ragged end (masked)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, b_q, p_k, p_v, skt, svt, lo, lo_full, o_m, o_n, m_d,
                               seqlen_q, seqlen_k, qk_scale, window, True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN,
                               DOT_PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, b_q, p_k, p_v, skt, svt, lo_full, hi_full, o_m, o_n, m_d,
                               seqlen_q, seqlen_k, qk_scale, window, False, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN,
                               DOT_PREC, TMA, KD, VD, (i_b64 * seqlen_k + bos).to(tl.int32), i_hk * HEAD_DIM)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, b_q, p_k, p_v, skt, svt, hi_full, hi, o_m, o_n, m_d,
                               seqlen_q, seqlen_k, qk_scale, window, True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN,
                               DOT_PREC)
    # rows without a visible key: l = 0, m = -inf -> o = 0, lse = -inf
    b_o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    b_lse = _lse_ln(m_i, l_i)
    o_base = O + i_b64 * sob + bos * sot + i_h.to(tl.int64) * soh
    tl.store(o_base + o_m[:, None].to(tl.int64) * sot + o_d[None, :], b_o.to(O.dtype.element_ty),
             mask=m_m[:, None] & m_d[None, :])
    lse_base = LSE + (i_b64 * nheads_q + i_h) * lse_len + bos
    tl.store(lse_base + o_m, b_lse, mask=m_m)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, sob, sot, soh, sdob, sdot, sdoh, seqlen, nheads,
                           HEAD_DIM: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    i_b = pid_bh // nheads
    i_h = pid_bh % nheads
    o_m = pid_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    mask = (o_m < seqlen)[:, None] & (o_d < HEAD_DIM)[None, :]
    o_m64 = o_m.to(tl.int64)
    b_o = tl.load(O + i_b * sob + i_h * soh + o_m64[:, None] * sot + o_d[None, :], mask=mask, other=0.0)
    b_do = tl.load(DO + i_b * sdob + i_h * sdoh + o_m64[:, None] * sdot + o_d[None, :], mask=mask, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * seqlen + o_m64, b_delta, mask=o_m < seqlen)


@triton.jit
def _kv_probs(b_k, b_v, b_qT, b_do, b_lse, qk_scale, DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr):
    """The first half of a dk/dv block step (keys as rows): p^T = 2^(s^T - lse log2 e), unmasked; with EARLY_DP
    also dP^T = V dO^T, issued right after S^T's dot (without it the second result is p^T again, unused)."""
    # lse = -inf marks a query that sees nothing; +inf makes its p exactly 0
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
    b_sT = tl.dot(b_k, b_qT, input_precision=DOT_PREC) * qk_scale                              # (BN, BM)
    if EARLY_DP:
        b_dpT = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PREC)                           # (BN, BM)
    b_pT = tl.math.exp2(b_sT - b_lse2[None, :])
    if not EARLY_DP:
        b_dpT = b_pT
    return b_pT, b_dpT


@triton.jit
def _kv_grads(b_dk, b_dv, b_v, b_qT, b_do, b_pT, b_dpT, b_delta, DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr):
    """The second half of a dk/dv block step, after the caller's mask on p^T: dv += p^T dO, dS^T = p^T (dP^T -
    delta), dk += dS^T q (unscaled). Returns dk, dv."""
    b_dv = tl.dot(b_pT.to(b_do.dtype), b_do, b_dv, input_precision=DOT_PREC)
    if not EARLY_DP:
        b_dpT = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PREC)                           # (BN, BM)
    b_dsT = b_pT * (b_dpT - b_delta[None, :])
    b_dk = tl.dot(b_dsT.to(b_qT.dtype), tl.trans(b_qT), b_dk, input_precision=DOT_PREC)
    return b_dk, b_dv


@triton.jit
def _bwd_kv_inner(b_dk, b_dv, b_k, b_v, p_qT, p_do, p_lse, p_delta, sqt, sdot, start, end, o_n, o_mb,
                  m_d, seqlen_q, seqlen_k, qk_scale, window,
                  MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr,
                  BM: tl.constexpr, DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr = False):
    """Accumulate dk, dv of one key block over query blocks [start, end) of one query head. Works in
    the transposed orientation (keys as rows) so p^T and ds^T feed the dots without a transpose.
    EARLY_DP: dP^T's dot is issued right after S^T's, before the exponentials."""
    for start_m in range(start, end, BM):
        m64 = tl.zeros([], dtype=tl.int64) + start_m
        o_m = start_m + o_mb
        if MASK:
            m_m = o_m < seqlen_q
            b_qT = tl.load(p_qT + m64 * sqt, mask=m_d[:, None] & m_m[None, :], other=0.0)     # (BD, BM)
            b_do = tl.load(p_do + m64 * sdot, mask=m_m[:, None] & m_d[None, :], other=0.0)   # (BM, BD)
            b_lse = tl.load(p_lse + start_m, mask=m_m, other=float("inf"))
            b_delta = tl.load(p_delta + start_m, mask=m_m, other=0.0)
        elif EVEN_D:
            b_qT = tl.load(p_qT + m64 * sqt)
            b_do = tl.load(p_do + m64 * sdot)
            b_lse = tl.load(p_lse + start_m)
            b_delta = tl.load(p_delta + start_m)
        else:
            b_qT = tl.load(p_qT + m64 * sqt, mask=m_d[:, None], other=0.0)
            b_do = tl.load(p_do + m64 * sdot, mask=m_d[None, :], other=0.0)
            b_lse = tl.load(p_lse + start_m)
            b_delta = tl.load(p_delta + start_m)
        b_pT, b_dpT = _kv_probs(b_k, b_v, b_qT, b_do, b_lse, qk_scale, DOT_PREC, EARLY_DP)
        if MASK:
            vis = tl.trans(_visible(o_m, o_n, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW))
            b_pT = tl.where(vis, b_pT, 0.0)
        b_dk, b_dv = _kv_grads(b_dk, b_dv, b_v, b_qT, b_do, b_pT, b_dpT, b_delta, DOT_PREC, EARLY_DP)
    return b_dk, b_dv


@triton.jit
def _bwd_kv_inner1(b_dk, b_dv, b_k, b_v, q_row, do_row, lse_row, delta_row, off_qT, off_do, sqt, sdot,
                   lo, lo_full, hi_full, hi, o_n, o_mb, m_d, seqlen_q, seqlen_k, qk_scale, window,
                   IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr, BM: tl.constexpr,
                   DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr, ROWSHIFT: tl.constexpr = False):
    """_bwd_kv_inner over all query blocks [lo, hi) of one head in ONE loop (variant oneloop): the mask is
    applied only where a scalar test says the block needs it ([lo, lo_full) and [hi_full, hi)). Three loops
    in a row make ptxas serialize every wgmma of the kernel (C7515: "non wgmma instructions defining
    accumulator registers ... between start and end of the pipeline stage": the dk/dv accumulators passed
    from one loop to the next); one loop keeps them asynchronous. Scalar row-0 pointers plus int32 offset
    tensors (no loop-invariant tensor of 64-bit pointers stays live); rows are masked by the sequence end (a few predicates per step). ROWSHIFT (only when
    seqlen_q >= BM and no cu_seqlens: the launcher checks): no row masks at all; a block that runs past the
    sequence end is moved back to end at its last row, and the mask drops the rows before the block's own
    start (those the previous block took), so every load is unmasked and vectorised."""
    for start_m in range(lo, hi, BM):
        if ROWSHIFT:
            s_m = tl.minimum(start_m, seqlen_q - BM)
        else:
            s_m = start_m
        m64 = tl.zeros([], dtype=tl.int64) + s_m
        o_m = s_m + o_mb
        if ROWSHIFT:     # every row of the block exists
            if EVEN_D:
                b_qT = tl.load(q_row + m64 * sqt + off_qT)
                b_do = tl.load(do_row + m64 * sdot + off_do)
            else:
                b_qT = tl.load(q_row + m64 * sqt + off_qT, mask=m_d[:, None], other=0.0)
                b_do = tl.load(do_row + m64 * sdot + off_do, mask=m_d[None, :], other=0.0)
            b_lse = tl.load(lse_row + s_m + o_mb)
            b_delta = tl.load(delta_row + s_m + o_mb)
        else:
            m_m = o_m < seqlen_q
            if EVEN_D:
                b_qT = tl.load(q_row + m64 * sqt + off_qT, mask=m_m[None, :], other=0.0)        # (BD, BM)
                b_do = tl.load(do_row + m64 * sdot + off_do, mask=m_m[:, None], other=0.0)      # (BM, BD)
            else:
                b_qT = tl.load(q_row + m64 * sqt + off_qT, mask=m_d[:, None] & m_m[None, :], other=0.0)
                b_do = tl.load(do_row + m64 * sdot + off_do, mask=m_m[:, None] & m_d[None, :], other=0.0)
            b_lse = tl.load(lse_row + start_m + o_mb, mask=m_m, other=float("inf"))
            b_delta = tl.load(delta_row + start_m + o_mb, mask=m_m, other=0.0)
        b_pT, b_dpT = _kv_probs(b_k, b_v, b_qT, b_do, b_lse, qk_scale, DOT_PREC, EARLY_DP)
        if (start_m < lo_full) | (start_m >= hi_full):
            vis = _visible_T(o_n, o_m, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW)
            if ROWSHIFT:
                vis = vis & (o_m >= start_m)[None, :]
            b_pT = tl.where(vis, b_pT, 0.0)
        b_dk, b_dv = _kv_grads(b_dk, b_dv, b_v, b_qT, b_do, b_pT, b_dpT, b_delta, DOT_PREC, EARLY_DP)
    return b_dk, b_dv


@triton.jit
def _bwd_kv_head(b_dk, b_dv, b_k, b_v, Q, DO, LSE, DELTA, i_h, i_b64, bos,
                 sqb, sqt, sqh, sdob, sdot, sdoh, nheads_q, lse_len,
                 lo, lo_full, hi_full, hi, o_n, o_mb, o_d, m_d, off_qT, off_do,
                 seqlen_q, seqlen_k, qk_scale, window, IS_CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr, BM: tl.constexpr,
                 DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr,
                 ONELOOP: tl.constexpr, ROWSHIFT: tl.constexpr):
    """dk, dv of one key block from query head i_h: [lo, lo_full) and [hi_full, hi) masked, the middle not."""
    if ONELOOP:
        i_h = i_h.to(tl.int64)
        q_row = Q + i_b64 * sqb + bos * sqt + i_h * sqh
        do_row = DO + i_b64 * sdob + bos * sdot + i_h * sdoh
        lse_row = LSE + (i_b64 * nheads_q + i_h) * lse_len + bos
        delta_row = DELTA + (i_b64 * nheads_q + i_h) * lse_len + bos
        return _bwd_kv_inner1(b_dk, b_dv, b_k, b_v, q_row, do_row, lse_row, delta_row, off_qT, off_do, sqt, sdot,
                              lo, lo_full, hi_full, hi, o_n, o_mb, m_d, seqlen_q, seqlen_k, qk_scale, window,
                              IS_CAUSAL, HAS_WINDOW, EVEN_D, BM, DOT_PREC, EARLY_DP, ROWSHIFT)
    i_h = i_h.to(tl.int64)
    p_qT = Q + i_b64 * sqb + bos * sqt + i_h * sqh + o_mb[None, :] * sqt + o_d[:, None]
    p_do = DO + i_b64 * sdob + bos * sdot + i_h * sdoh + o_mb[:, None] * sdot + o_d[None, :]
    p_lse = LSE + (i_b64 * nheads_q + i_h) * lse_len + bos + o_mb
    p_delta = DELTA + (i_b64 * nheads_q + i_h) * lse_len + bos + o_mb
    # diagonal blocks (masked), fully visible blocks, the window's far edge (masked)
    b_dk, b_dv = _bwd_kv_inner(b_dk, b_dv, b_k, b_v, p_qT, p_do, p_lse, p_delta, sqt, sdot,
                               lo, lo_full, o_n, o_mb, m_d, seqlen_q, seqlen_k, qk_scale, window,
                               True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BM, DOT_PREC, EARLY_DP)
    b_dk, b_dv = _bwd_kv_inner(b_dk, b_dv, b_k, b_v, p_qT, p_do, p_lse, p_delta, sqt, sdot,
                               lo_full, hi_full, o_n, o_mb, m_d, seqlen_q, seqlen_k, qk_scale, window,
                               False, IS_CAUSAL, HAS_WINDOW, EVEN_D, BM, DOT_PREC, EARLY_DP)
    b_dk, b_dv = _bwd_kv_inner(b_dk, b_dv, b_k, b_v, p_qT, p_do, p_lse, p_delta, sqt, sdot,
                               hi_full, hi, o_n, o_mb, m_d, seqlen_q, seqlen_k, qk_scale, window,
                               True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BM, DOT_PREC, EARLY_DP)
    return b_dk, b_dv


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "window", "lse_len", "max_len", "L_BUCKET"])
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQA, CU,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh,
    sdkb, sdkt, sdkh, sdvb, sdvt, sdvh, sdqb, sdqt, sdqh,
    seqlen_q, seqlen_k, nheads_q, lse_len, max_len, sm_scale, qk_scale, window, L_BUCKET,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    KREG: tl.constexpr = False, EARLY_DP: tl.constexpr = False,
    GUNROLL: tl.constexpr = False, ONELOOP: tl.constexpr = False, ROWSHIFT: tl.constexpr = False,
):
    # DQA, sdqb, sdqt, sdqh: unused (the removed atomic-dq variant's dq buffer; kept so that the kernel's parameter
    # layout, and with it its SASS, stays as it was)
    pid = tl.program_id(0)
    n_nblocks = tl.cdiv(max_len, BN)
    pid_n = pid % n_nblocks
    pid_bh = pid // n_nblocks
    nheads_kv = nheads_q // GROUP
    i_b = pid_bh // nheads_kv
    i_hk = pid_bh % nheads_kv
    bos, i_b64, seqlen_q, seqlen_k = _sequence(CU, i_b, seqlen_q, seqlen_k, IS_VARLEN)
    start_n = pid_n * BN
    if start_n >= seqlen_k:
        return
    o_n = start_n + tl.arange(0, BN)
    o_mb = tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_d = o_d < HEAD_DIM
    m_n = o_n < seqlen_k
    EVEN_D: tl.constexpr = HEAD_DIM == BD
    o_n64 = o_n.to(tl.int64)
    m_kv = m_n[:, None] & m_d[None, :]
    b_k = tl.load(K + i_b64 * skb + bos * skt + i_hk.to(tl.int64) * skh + o_n64[:, None] * skt + o_d[None, :],
                  mask=m_kv, other=0.0)
    b_v = tl.load(V + i_b64 * svb + bos * svt + i_hk.to(tl.int64) * svh + o_n64[:, None] * svt + o_d[None, :],
                  mask=m_kv, other=0.0)
    if KREG:
        # K, V through an exact identity product: the result has the MMA layout, which Triton then keeps in
        # registers as the A operand of S^T = K q^T and dP^T = V dO^T, instead of re-reading both (BN, BD)
        # tiles from shared memory in every step (their N is only BM)
        eye = (o_d[:, None] == o_d[None, :]).to(K.dtype.element_ty)
        b_k = tl.dot(b_k, eye, input_precision=DOT_PREC).to(K.dtype.element_ty)
        b_v = tl.dot(b_v, eye, input_precision=DOT_PREC).to(V.dtype.element_ty)
    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    lo, lo_full, hi_full, hi = _query_range(start_n, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW, BM, BN)
    off_qT = o_mb[None, :] * sqt + o_d[:, None]         # oneloop: int32 offsets from a block's first row
    off_do = o_mb[:, None] * sdot + o_d[None, :]
    if GUNROLL:   # the group's heads unrolled: no loop around the three pipelined loops (fewer spills)
        for g in tl.static_range(GROUP):
            b_dk, b_dv = _bwd_kv_head(b_dk, b_dv, b_k, b_v, Q, DO, LSE, DELTA, i_hk * GROUP + g, i_b64, bos,
                                      sqb, sqt, sqh, sdob, sdot, sdoh, nheads_q, lse_len,
                                      lo, lo_full, hi_full, hi, o_n, o_mb, o_d, m_d, off_qT, off_do,
                                      seqlen_q, seqlen_k, qk_scale, window, IS_CAUSAL, HAS_WINDOW, EVEN_D,
                                      BM, DOT_PREC, EARLY_DP, ONELOOP, ROWSHIFT)
    else:
        for g in range(GROUP):
            b_dk, b_dv = _bwd_kv_head(b_dk, b_dv, b_k, b_v, Q, DO, LSE, DELTA, i_hk * GROUP + g, i_b64, bos,
                                      sqb, sqt, sqh, sdob, sdot, sdoh, nheads_q, lse_len,
                                      lo, lo_full, hi_full, hi, o_n, o_mb, o_d, m_d, off_qT, off_do,
                                      seqlen_q, seqlen_k, qk_scale, window, IS_CAUSAL, HAS_WINDOW, EVEN_D,
                                      BM, DOT_PREC, EARLY_DP, ONELOOP, ROWSHIFT)
    b_dk = b_dk * sm_scale
    tl.store(_tile(DK, i_b64, bos, i_hk, sdkb, sdkt, sdkh, o_n64, o_d), b_dk.to(DK.dtype.element_ty), mask=m_kv)
    tl.store(_tile(DV, i_b64, bos, i_hk, sdvb, sdvt, sdvh, o_n64, o_d), b_dv.to(DV.dtype.element_ty), mask=m_kv)


@triton.jit
def _q_probs(b_q, b_k, b_v, b_do, b_lse2, qk_scale, DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr):
    """The first half of a dq block step (queries as rows): p = 2^(s - lse log2 e), unmasked; with EARLY_DP also
    dP = dO V^T, issued right after S's dot (without it the second result is p again, unused)."""
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * qk_scale
    if EARLY_DP:
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
    b_p = tl.math.exp2(b_s - b_lse2[:, None])
    if not EARLY_DP:
        b_dp = b_p
    return b_p, b_dp


@triton.jit
def _q_grad(b_dq, b_k, b_v, b_do, b_p, b_dp, b_delta, DOT_PREC: tl.constexpr, EARLY_DP: tl.constexpr):
    """The second half of a dq block step, after the caller's mask on p: dS = p (dP - delta), dq += dS k
    (unscaled)."""
    if not EARLY_DP:
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
    b_ds = b_p * (b_dp - b_delta[:, None])
    return tl.dot(b_ds.to(b_k.dtype), b_k, b_dq, input_precision=DOT_PREC)


@triton.jit
def _bwd_q_inner(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, start, end, o_m, o_n, m_d,
                 seqlen_q, seqlen_k, qk_scale, window,
                 MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr,
                 BN: tl.constexpr, DOT_PREC: tl.constexpr,
                 TMA: tl.constexpr = False, KD=None, VD=None, row0=0, col=0, EARLY_DP: tl.constexpr = False):
    """dq of one query block over key blocks [start, end). EARLY_DP (dq option early_dp; the unmasked middle
    only): dP's dot is issued right after S's, before the exponentials."""
    for start_n in range(start, end, BN):
        n64 = tl.zeros([], dtype=tl.int64) + start_n
        o_k = start_n + o_n
        # _load_kv written out: through the helper, ptxas allocates registers differently (line info) in the
        # window, varlen-window, short-bucket and D128 dq launches
        if TMA and not MASK:
            b_k = KD.load([row0 + start_n, col])
            b_v = VD.load([row0 + start_n, col])
        elif MASK:
            m_kv = (o_k < seqlen_k)[:, None] & m_d[None, :]
            b_k = tl.load(p_k + n64 * skt, mask=m_kv, other=0.0)
            b_v = tl.load(p_v + n64 * svt, mask=m_kv, other=0.0)
        elif EVEN_D:
            b_k = tl.load(p_k + n64 * skt)
            b_v = tl.load(p_v + n64 * svt)
        else:
            b_k = tl.load(p_k + n64 * skt, mask=m_d[None, :], other=0.0)
            b_v = tl.load(p_v + n64 * svt, mask=m_d[None, :], other=0.0)
        b_p, b_dp = _q_probs(b_q, b_k, b_v, b_do, b_lse2, qk_scale, DOT_PREC, EARLY_DP)
        if MASK:
            b_p = tl.where(_visible(o_m, o_k, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW), b_p, 0.0)
        b_dq = _q_grad(b_dq, b_k, b_v, b_do, b_p, b_dp, b_delta, DOT_PREC, EARLY_DP)
    return b_dq


@triton.jit
def _bwd_q_inner1(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, lo, lo_full, hi_full, hi, o_m, o_n, m_d,
                  seqlen_q, seqlen_k, qk_scale, window,
                  IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr, BN: tl.constexpr,
                  DOT_PREC: tl.constexpr, ROWSHIFT: tl.constexpr, EARLY_DP: tl.constexpr,
                  TMA: tl.constexpr = False, KD=None, VD=None, row0=0, col=0):
    """_bwd_q_inner over all key blocks [lo, hi) in ONE loop (dq option oneloop): the mask only where a scalar
    test says the block needs it ([lo, lo_full) and [hi_full, hi)), so the loop is pipelined once, with no
    drain and refill between the unmasked middle and the diagonal. ROWSHIFT (only when seqlen_k >= BN and no
    cu_seqlens: the launcher checks): a key block that runs past the sequence end is moved back to end at its
    last key, and the mask drops the keys before the block's own start, so no load needs a row mask and with
    TMA every block (the diagonal included) comes through the descriptors. EARLY_DP: dP's dot is issued right
    after S's, before the exponentials."""
    for start_n in range(lo, hi, BN):
        if ROWSHIFT:
            s_n = tl.minimum(start_n, seqlen_k - BN)
        else:
            s_n = start_n
        n64 = tl.zeros([], dtype=tl.int64) + s_n
        o_k = s_n + o_n
        # ROWSHIFT: every key of the block exists (no row mask)
        b_k, b_v = _load_kv(p_k, p_v, skt, svt, s_n, n64, o_k, m_d, seqlen_k, not ROWSHIFT, EVEN_D, TMA, KD, VD,
                            row0, col)
        b_p, b_dp = _q_probs(b_q, b_k, b_v, b_do, b_lse2, qk_scale, DOT_PREC, EARLY_DP)
        if (start_n < lo_full) | (start_n >= hi_full):
            vis = _visible(o_m, o_k, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW)
            if ROWSHIFT:
                vis = vis & (o_k >= start_n)[None, :]
            b_p = tl.where(vis, b_p, 0.0)
        b_dq = _q_grad(b_dq, b_k, b_v, b_do, b_p, b_dp, b_delta, DOT_PREC, EARLY_DP)
    return b_dq


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "window", "lse_len", "max_len", "L_BUCKET"])
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh, sdqb, sdqt, sdqh,
    seqlen_q, seqlen_k, nheads_q, lse_len, max_len, sm_scale, qk_scale, window, L_BUCKET,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE_M: tl.constexpr,
    M_MAJOR: tl.constexpr, DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TMA: tl.constexpr = False, KD=None, VD=None, DELTA_HERE: tl.constexpr = False, O=None, sob=0, sot=0, soh=0,
    ONELOOP: tl.constexpr = False, ROWSHIFT: tl.constexpr = False, EARLY_DP: tl.constexpr = False,
):
    start_m, i_h, i_hk, bos, i_b64, seqlen_q, seqlen_k = _query_block_program(
        CU, max_len, nheads_q, seqlen_q, seqlen_k, GROUP, IS_VARLEN, REVERSE_M, M_MAJOR, BM)
    if start_m >= seqlen_q:
        return
    o_m = start_m + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_d = o_d < HEAD_DIM
    m_m = o_m < seqlen_q
    EVEN_D: tl.constexpr = HEAD_DIM == BD
    o_m64 = o_m.to(tl.int64)
    m_qd = m_m[:, None] & m_d[None, :]
    b_q = tl.load(Q + i_b64 * sqb + bos * sqt + i_h.to(tl.int64) * sqh + o_m64[:, None] * sqt + o_d[None, :],
                  mask=m_qd, other=0.0)
    b_do = tl.load(DO + i_b64 * sdob + bos * sdot + i_h.to(tl.int64) * sdoh + o_m64[:, None] * sdot + o_d[None, :],
                   mask=m_qd, other=0.0)
    row = (i_b64 * nheads_q + i_h) * lse_len + bos
    b_lse = tl.load(LSE + row + o_m, mask=m_m, other=float("inf"))
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
    if DELTA_HERE:   # delta = rowsum(dO * O) computed here and stored for the dk/dv kernel that runs next
        b_o = tl.load(O + i_b64 * sob + bos * sot + i_h.to(tl.int64) * soh + o_m64[:, None] * sot + o_d[None, :],
                      mask=m_qd, other=0.0)
        b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
        tl.store(DELTA + row + o_m, b_delta, mask=m_m)
    else:
        b_delta = tl.load(DELTA + row + o_m, mask=m_m, other=0.0)
    p_k = K + i_b64 * skb + bos * skt + i_hk.to(tl.int64) * skh + o_n[:, None] * skt + o_d[None, :]
    p_v = V + i_b64 * svb + bos * svt + i_hk.to(tl.int64) * svh + o_n[:, None] * svt + o_d[None, :]
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    lo, lo_full, hi_full, hi = _key_range(start_m, seqlen_q, seqlen_k, window, IS_CAUSAL, HAS_WINDOW, BM, BN)
    if ONELOOP:
        b_dq = _bwd_q_inner1(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, lo, lo_full, hi_full, hi, o_m,
                             o_n, m_d, seqlen_q, seqlen_k, qk_scale, window, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN,
                             DOT_PREC, ROWSHIFT, EARLY_DP, TMA and ROWSHIFT, KD, VD,
                             (i_b64 * seqlen_k + bos).to(tl.int32), i_hk * HEAD_DIM)
    else:
        b_dq = _bwd_q_inner(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, lo, lo_full, o_m, o_n, m_d,
                            seqlen_q, seqlen_k, qk_scale, window, True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN, DOT_PREC)
        b_dq = _bwd_q_inner(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, lo_full, hi_full, o_m, o_n, m_d,
                            seqlen_q, seqlen_k, qk_scale, window, False, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN, DOT_PREC,
                            TMA, KD, VD, (i_b64 * seqlen_k + bos).to(tl.int32), i_hk * HEAD_DIM, EARLY_DP)
        b_dq = _bwd_q_inner(b_dq, b_q, b_do, b_lse2, b_delta, p_k, p_v, skt, svt, hi_full, hi, o_m, o_n, m_d,
                            seqlen_q, seqlen_k, qk_scale, window, True, IS_CAUSAL, HAS_WINDOW, EVEN_D, BN, DOT_PREC)
    b_dq = b_dq * sm_scale
    tl.store(_tile(DQ, i_b64, bos, i_h, sdqb, sdqt, sdqh, o_m64, o_d), b_dq.to(DQ.dtype.element_ty), mask=m_qd)


# ---------------------------------------------------------------------------------------------
# Configs and launchers
# ---------------------------------------------------------------------------------------------

# Under the interpreter the raw kernels run with these blocks (BM != BN on purpose: the diagonal
# then spans several key blocks, which the tests must cover). Tests may pass other blocks.
INTERPRET_BLOCKS = {"fwd": (64, 32), "dkdv": (32, 64), "dq": (64, 32)}


def _keep(conf, BD):
    bm, bn = conf.kwargs["BM"], conf.kwargs["BN"]
    if BD >= 256 and (bm * bn > 64 * 32 or conf.num_stages > 2):  # 64x64 x 3 stages: 256 KiB smem on H100
        return False
    if BD >= 128 and bm * bn > 128 * 64 and conf.num_stages > 2:
        return False
    return True


def _configs(kind):
    # (BM, BN, num_warps, num_stages); the first kept config is the fixed one where FIXED has none.
    # Picked on H100 bf16 (2026-11-25): fwd 128x64 w4 s3 at D64, 128x64 w8 s3 at D128; dkdv 32x128 w4 s3
    # at D64, 64x128 w8 s3 at D128; dq 64x64 w4 s3 at D64, 128x64 w8 s3 at D128; 64x64 for L2048.
    if kind == "fwd":
        grid = [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 4, 4), (64, 32, 4, 2)]
    elif kind == "dkdv":
        grid = [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 4, 4), (64, 128, 8, 2), (32, 64, 4, 2)]
    else:
        grid = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2)]
    return [triton.Config({"BM": m, "BN": n}, num_warps=w, num_stages=s) for m, n, w, s in grid]


def _prune(kind):
    def prune(configs, named_args, **kwargs):
        BD = named_args.get("BD", kwargs.get("BD"))
        kept = [c for c in configs if _keep(c, BD)]
        return kept or configs[-1:]
    return prune


_KEY = ["BD", "IS_CAUSAL", "HAS_WINDOW", "IS_VARLEN", "GROUP", "L_BUCKET"]
_attn_fwd_tuned = autotune(_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _prune("fwd")})(
    _attn_fwd_kernel)
_attn_bwd_dkdv_tuned = autotune(_configs("dkdv"), key=_KEY,
                                prune_configs_by={"early_config_prune": _prune("dkdv")})(_attn_bwd_dkdv_kernel)
_attn_bwd_dq_tuned = autotune(_configs("dq"), key=_KEY, prune_configs_by={"early_config_prune": _prune("dq")})(
    _attn_bwd_dq_kernel)


def _head_block(D: int) -> int:
    return max(16, next_pow2(D))


def _dot_prec(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"   # the dots' input precision: fp32 inputs exact


def _l_bucket(L: int) -> int:
    """Autotune key: sequence length rounded to a power of two (capped), so a tiny first call does
    not pick the blocks for 32k-token calls."""
    return min(max(next_pow2(max(L, 1)), 64), 16384)


# Default: fixed configs (FIXED below, else the first kept one of _configs), no autotuner. It cost
# ~40 us per eager call on the H100 host (decode 234 -> 193 us) and seconds of timing on the first
# call of every new shape bucket. HYBRIDNA_AUTOTUNE=1 times the _configs grid instead.
TUNE = os.environ.get("HYBRIDNA_AUTOTUNE", "0") == "1"

# (kind, head block, long) -> (BM, BN, num_warps, num_stages); long = sequence bucket > 2048.
# H100 bf16 (2026-11-25): the autotuner's earlier picks, except at D64 in the long bucket: forward
# 128x64 w8 s4 (with TMA, DEFAULT_FEATURES: 450 TFLOP/s at B8 H16 L8192 causal against 404 for session 2's
# 128x64 w4 s4 in the same run) and dq 128x64 w8 s3 (with TMA: backward 8.874 ms against 9.166).
FIXED = {
    ("fwd", 64, True): (128, 64, 8, 4), ("dkdv", 64, True): (32, 128, 4, 3), ("dq", 64, True): (128, 64, 8, 3),
    ("fwd", 128, True): (128, 64, 8, 3), ("dkdv", 128, True): (64, 128, 8, 3), ("dq", 128, True): (128, 64, 8, 3),
    ("fwd", 64, False): (64, 64, 4, 3), ("dkdv", 64, False): (64, 64, 4, 3), ("dq", 64, False): (64, 64, 4, 3),
    ("fwd", 128, False): (64, 64, 4, 3), ("dkdv", 128, False): (64, 64, 4, 3), ("dq", 128, False): (64, 64, 4, 3),
}


# dk/dv at D64 for the model's training shapes (GQA, causal, no window, no varlen, seqlen_q == seqlen_k a
# multiple of 64 in the long bucket): the one-loop kernel (no serialized wgmma, no spills), K / V kept in
# registers, 64x64 w4 s3. Session 5, H100 bf16, B1 Hq16:Hkv4 L32768 D64 causal, interleaved medians: backward
# 15.64 ms against 18.85 ms for the default above (1.205x), dq/dk/dv bitwise equal to it at L4096 and L32768;
# the 300m training step at 1 x 32768 115.0k -> 119.3k tok/s. Since session 7 also the short bucket, ragged ends
# and chunked prefill, and D128 (DKDV_FAST_D128, MHA included): DKDV_FAST_EXT below. Windows, varlen and D64 MHA keep
# FIXED's config.
DKDV_FAST = dict(conf=(64, 64, 4, 3), flags=("ONELOOP", "ROWSHIFT", "GUNROLL", "KREG"))
# D128 (extension d128 below, on by default since session 7): the same kernel without KREG (K, V as 64x128
# register tiles next to the 64x128 fp32 dk / dv accumulators would not fit 255 registers), session 5's best D128
# row: rowshift 64x128 w8 s2,
# H100 B1 H8 L32768 backward 14.08 ms against 14.68 for the default (1.043x).
DKDV_FAST_D128 = dict(conf=(64, 128, 8, 2), flags=("ONELOOP", "ROWSHIFT", "GUNROLL"))

# Extensions of DKDV_FAST's domain (variant key dkdv_fast=..., or DEFAULT_FEATURES["dkdv_fast"]):
# mha: Hq == Hkv at head dim 128 (DKDV_FAST_D128). Not at D64: DKDV_FAST there (KREG, GROUP 1) gave wrong dk / dv
#   on the GPU (session 7, H200 bf16, B2 H4 L8192 and B1 H16 L2000: relative error 0.3-0.5), though exact under
#   the interpreter, so D64 MHA keeps FIXED's config;
# d128: head dim 128 with DKDV_FAST_D128's config;
# short: the short bucket (<= 2048), seqlen_q >= 256 (rowshift moves the last block back by up to BM rows);
# ragged: seqlen_q not a multiple of 64 and seqlen_q != seqlen_k (chunked prefill), seqlen_q >= 256.
# All four are on by default since session 7 (H200, bf16, causal, .gpu/attn7.py, interleaved medians against the
# old configs in the same run, dq / dk / dv bitwise equal to them): B1 H8 L32768 D128 (mha + d128) backward 13.79
# against 14.75 ms (fwd+bwd 18.68 / 19.03); ragged B1 Hq16:Hkv4 L30000 D64 13.40 / 16.00; short B16 Hq16:Hkv4
# L2048 D64 1.251 / 1.707. Their GPU tests (test_gpu_dkdv_fast_extensions, but the D64 MHA cases) passed.
DKDV_FAST_EXT = ("mha", "d128", "short", "ragged")
# mha64 (opt-in, not in the defaults): D64 MHA with DKDV_FAST less KREG. Session 8 (H100 bf16, .gpu/attn7.py, MHA B8
# H16 L8192 D64 causal, interleaved medians against the default in the same run): with KREG, dk / dv wrong again (0.54 /
# 0.36 against fp32), without it dq / dk / dv bitwise equal to the default at L4096 and backward 8.194 against 8.976 ms
# (fwd+bwd 10.925 / 11.464, 352 / 336 TFLOP/s; graph 8.456 / 8.899). Its GPU tests (test_gpu_dkdv_fast_mha64) have
# not run yet: the default once they pass.
DKDV_FAST_MHA64 = dict(DKDV_FAST, flags=tuple(f for f in DKDV_FAST["flags"] if f != "KREG"))
DKDV_FAST_EXT_OPT = ("mha64",)


def _dkdv_fast_ok(q, k, causal, window, cu_seqlens, meta):
    """DKDV_FAST (or DKDV_FAST_D128) when the launch is in its domain (see their comments), else None. By default
    only without VARIANT / autotuning / interpreter; a VARIANT with the key dkdv_fast (its extensions, or none)
    takes it too, under the interpreter as well."""
    if VARIANT:
        if "dkdv_fast" not in VARIANT:
            return None
        ext = VARIANT["dkdv_fast"]
    else:
        if interpret_mode():
            return None
        ext = DEFAULT_FEATURES.get("dkdv_fast", frozenset())
    Lq, Lk, Hq, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    if TUNE or not causal or window is not None or cu_seqlens is not None:
        return None
    mha = Hq == k.shape[2]
    if mha and ("mha64" not in ext if D == 64 else "mha" not in ext):   # MHA: see DKDV_FAST_EXT
        return None
    if meta["L_BUCKET"] <= 2048 and "short" not in ext:
        return None
    if (Lq != Lk or Lq % 64) and "ragged" not in ext:
        return None
    if Lq < 256:    # rowshift needs a whole query block of rows
        return None
    if D == 64:
        return DKDV_FAST_MHA64 if mha else DKDV_FAST
    return DKDV_FAST_D128 if D == 128 and "d128" in ext else None


# dq at D64 for the model's layout (GQA, causal, no window / varlen, seqlen_q == seqlen_k a multiple of 64 in the long
# bucket): the one-loop kernel with rowshift (DQ_OPTS) at 128x64 w8 s3 under a 128-register cap (two programs per SM;
# 148 registers uncapped, one). Session 7, H200 bf16, B1 Hq16:Hkv4 L32768 D64 causal, three interleaved rounds
# (.gpu/attn7.py, "dq ol+rs r128"): dq 5.39 ms against 5.99 (1.11x), backward 15.77 against 16.19; dq bitwise equal
# to the default's. MHA (B8 H16 L8192) was neutral (2.88 / 2.90 ms) and D128 without the cap slower: not there.
DQ_FAST = dict(conf=(128, 64, 8, 3, 128), flags=("ONELOOP", "ROWSHIFT"))


def _dq_fast_ok(q, k, causal, window, cu_seqlens, meta):
    """DQ_FAST where the launch is in its domain (above) and no VARIANT / autotuning / interpreter, else None."""
    if VARIANT or TUNE or interpret_mode() or not causal or window is not None or cu_seqlens is not None:
        return None
    Lq, Lk, Hq, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    if meta["L_BUCKET"] <= 2048 or Lq != Lk or Lq % 64 or Hq == k.shape[2] or D != 64:
        return None
    return DQ_FAST


# Sliding-window forward at D64 in the long bucket: session 2's config with pointer loads. The final call of
# session 3 (H100, B1 H16 L131072 D64, window 4096, interleaved) measured it at 5.947 / 6.435 ms against
# 6.963 / 7.031 for the causal winner (128x64 w8 s4 with TMA); `_feature` keeps TMA off for it.
FIXED_WINDOW = {("fwd", 64, True): (128, 64, 4, 4)}


def fixed_config(kind, BD, L_BUCKET, window=False):
    """(BM, BN, num_warps, num_stages) launched when not autotuning."""
    conf = FIXED_WINDOW.get((kind, BD, L_BUCKET > 2048)) if window else None
    conf = conf or FIXED.get((kind, BD, L_BUCKET > 2048))
    if conf is not None:
        return conf
    c = next(c for c in _configs(kind) if _keep(c, BD))
    return c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages


# dk/dv kernel options (variant key dkdv_opt, or DEFAULT_FEATURES) -> the kernel's constexpr flags. ptxas
# serializes every wgmma of the default dk/dv kernel (C7515; the accumulators handed from one query-block
# loop to the next) and it spills at 32x128 w4 with GQA; see README "dk/dv options" for each option.
DKDV_OPTS = {"oneloop": "ONELOOP", "rowshift": "ROWSHIFT", "gunroll": "GUNROLL", "kreg": "KREG",
             "early_dp": "EARLY_DP"}
# dq kernel options (variant key dq_opt, or DEFAULT_FEATURES["dq_opt"][head block]) -> its constexpr flags; README
# "dq options". rowshift only with oneloop, seqlen_k >= 128 and no cu_seqlens (else ignored).
# (A fourth, qreg: q and dO through an identity product into registers, exact under the interpreter, gave wrong dq
# on the GPU (session 7, H200, bf16: relative error 0.4-0.98 at L4096) and was removed.)
DQ_OPTS = {"oneloop": "ONELOOP", "rowshift": "ROWSHIFT", "early_dp": "EARLY_DP"}


def parse_variant(text: str) -> dict:
    """Run-time variants for sweeps, e.g. "fwd=128,64,4,3;dkdv=32,128,4,3;dq=64,64,4,3;mmajor=dq;dq_delta=1".
    fwd / dkdv / dq: fixed (BM, BN, num_warps, num_stages[, maxnreg]) instead of autotuning (maxnreg: ptxas's
    register cap per thread, e.g. 128 keeps two 8-warp programs per SM; ignored by the interpreter); mmajor=dq: the dq
    kernel's grid runs block-major (every head's block i before block i + 1) instead of head-major (the forward's
    and dk/dv's were removed: 10-18% slower / no faster, sessions 2 and 5);
    fastlaunch=1: compiled kernels cached per argument specialisation and run directly (host time);
    tma=fwd,dq: those kernels load the operands K, V of their unmasked blocks through TMA descriptors
    (contiguous (B, L, H, D) tensors only; dk/dv has none: 5% slower there, session 3); dq_delta=1: no delta
    kernel: the dq kernel computes delta = rowsum(dO * O) for its rows, stores it, and runs before dk/dv;
    dkdv_opt=...: dk/dv kernel options (DKDV_OPTS; README);
    dq_opt=...: dq kernel options (DQ_OPTS; README); dkdv_fast=...: DKDV_FAST where it is the default, plus the
    named extensions of its domain (DKDV_FAST_EXT; empty: the default domain, e.g. to time dq options against it)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, _, val = item.partition("=")
        key = key.strip()
        if key in ("fwd", "dkdv", "dq", "decode"):
            out[key] = tuple(int(x) for x in val.split(","))
            if len(out[key]) not in ((3,) if key == "decode" else (4, 5)):
                raise ValueError(f"HYBRIDNA_ATTN_VARIANT: {key} needs BM,BN,warps,stages[,maxnreg] (decode: BN,warps,stages), "
                                 f"got {val!r}")
        elif key in ("mmajor", "tma", "dkdv_opt", "dq_opt", "dkdv_fast"):
            out[key] = frozenset(filter(None, (x.strip() for x in val.split(","))))
        elif key in ("fastlaunch", "dq_delta"):
            out[key] = val.strip() not in ("", "0")
        else:
            raise ValueError(f"HYBRIDNA_ATTN_VARIANT: unknown key {key!r}")
    for key, known in (("dkdv_opt", DKDV_OPTS), ("dq_opt", DQ_OPTS), ("dkdv_fast", DKDV_FAST_EXT + DKDV_FAST_EXT_OPT),
                       ("tma", ("fwd", "dq")), ("mmajor", ("dq",))):
        bad = out.get(key, frozenset()) - set(known)
        if bad:
            raise ValueError(f"HYBRIDNA_ATTN_VARIANT: unknown {key} {sorted(bad)}, known: {sorted(known)}")
    return out


# Set by the benchmark's sweep (or the environment); empty means the defaults.
VARIANT = parse_variant(os.environ.get("HYBRIDNA_ATTN_VARIANT", ""))

# Kernel features on by default where they were measured (H100 bf16, session 3 round 1, B8 H16 L8192 D64:
# forward 128x64 w8 s4 with TMA 2.444 ms against 2.723 for 128x64 w4 s4 with pointers; dq 128x64 w8 s3 with
# TMA 8.874 ms of backward against 9.166 for 64x64 w4 s3; dq_delta 9.105 against 9.166): the long bucket
# (> 2048) at head blocks 64 and 128, fixed configs only (the autotuner's launches keep pointer loads and the
# delta kernel). Shorter sequences keep session 2's paths (TMA descriptors also cost host time per call).
# A non-empty VARIANT replaces these defaults (sweeps name every feature they time).
# dkdv_opt per head block: the dk/dv kernel's options (DKDV_OPTS) on by default, none yet (session 5 measures them).
# dq_opt per head block: the dq kernel's options (DQ_OPTS), none by default (DQ_FAST sets them in its domain);
# dkdv_fast: the DKDV_FAST_EXT names in use (all four since session 7).
DEFAULT_FEATURES = {"tma": frozenset({"fwd", "dq"}), "dq_delta": True, "dkdv_opt": {64: frozenset(), 128: frozenset()},
                    "dq_opt": {64: frozenset(), 128: frozenset()}, "dkdv_fast": frozenset(DKDV_FAST_EXT)}
_SET_FEATURES = ("tma", "dkdv_opt", "dq_opt", "dkdv_fast")


def _feature(name, meta):
    """A kernel feature for a launch with flags `meta`: from VARIANT when one is set (absent: off), else
    from DEFAULT_FEATURES where they apply (long bucket, head block 64 or 128, no autotuning)."""
    if VARIANT:
        return VARIANT.get(name, frozenset() if name in _SET_FEATURES else False)
    if meta["L_BUCKET"] > 2048 and meta["BD"] in (64, 128) and not TUNE:
        if name == "tma" and meta["HAS_WINDOW"] and ("fwd", meta["BD"], True) in FIXED_WINDOW:
            return DEFAULT_FEATURES[name] - {"fwd"}   # FIXED_WINDOW's forward keeps pointer loads
        if name in ("dkdv_opt", "dq_opt"):
            return DEFAULT_FEATURES.get(name, {}).get(meta["BD"], frozenset())
        return DEFAULT_FEATURES[name]
    return frozenset() if name in _SET_FEATURES else False


# ---------------------------------------------------------------------------------------------
# Launch without Triton's per-call binding (variant fastlaunch=1): the compiled kernel of each
# (kernel, argument specialisation, constexprs, launch options) is kept and run directly
# ---------------------------------------------------------------------------------------------

_LAUNCH_CACHE: dict = {}
_PARAMS: dict = {}


def _spec(a):
    """Everything Triton may specialise an argument on, or more (a finer key is safe)."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.device, a.data_ptr() % 16 == 0)
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return (a % 16 == 0, a == 1, -2 ** 31 <= a < 2 ** 31)
    if isinstance(a, float):
        return float
    return a


def _launch(fn, grid, args, kw):
    """fn[grid](*args, **kw), through a cache of compiled kernels when VARIANT has fastlaunch."""
    if not VARIANT.get("fastlaunch") or interpret_mode():
        fn[grid](*args, **kw)
        return
    params = _PARAMS.get(fn)
    if params is None:
        params = _PARAMS[fn] = [(p.name, p.is_constexpr, p.default) for p in fn.params]
    full = list(args)
    for name, _, default in params[len(args):]:
        full.append(kw[name] if name in kw else default)
    key = (fn, tuple(a if c else _spec(a) for a, (_, c, _) in zip(full, params)),
           kw.get("num_warps"), kw.get("num_stages"), kw.get("maxnreg"))
    kernel = _LAUNCH_CACHE.get(key)
    if kernel is None:
        _LAUNCH_CACHE[key] = fn[grid](*args, **kw)
        return
    from triton import knobs
    from triton.runtime import driver

    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = driver.active.get_current_stream(full[0].device.index)
    enter = knobs.runtime.launch_enter_hook
    meta = kernel.launch_metadata(g, stream, *full) if enter is not None else None
    kernel.run(g[0], g[1], g[2], stream, kernel.function, kernel.packed_metadata, meta, enter,
               knobs.runtime.launch_exit_hook, *full)


def _tma_ok(tensors, D):
    """Each tensor viewable as a 2-D (rows, heads * headdim) row-major matrix with 16-byte aligned rows,
    and a power-of-two headdim (the descriptor's block is the whole head)."""
    if D != _head_block(D) or tensors[0].shape[0] * tensors[0].shape[1] == 0:
        return False
    for t in tensors:
        B, L, H, _ = t.shape
        if t.stride(3) != 1 or t.stride(2) != D or t.stride(1) != H * D or (B > 1 and t.stride(0) != L * H * D):
            return False
        if t.data_ptr() % 16 or (H * D * t.element_size()) % 16:
            return False
    return True


def _desc(t, rows):
    """TMA descriptor of (B, L, H, D) t as a (B * L, H * D) matrix, blocks of (rows, D)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, L, H, D = t.shape
    return TensorDescriptor(t, [B * L, H * D], [H * D, 1], [rows, D])


def _run(kind, grid, blocks, args, meta):
    """Launch the autotuned kernel, or the raw one with fixed blocks (interpreter, tests, TUNE off)."""
    tma = meta.pop("_tma", None)
    conf = meta.pop("_conf", None)   # a launcher's fixed config (DKDV_FAST), else FIXED's when not tuning

    def fixed():
        return conf or fixed_config(kind, meta["BD"], meta["L_BUCKET"], meta["HAS_WINDOW"])

    if tma is not None:   # descriptors are built for the launched BN: fixed configs only, not the autotuner
        if blocks is not None:
            bmn = blocks
        elif interpret_mode():
            bmn = INTERPRET_BLOCKS[kind]
        elif kind in VARIANT:
            bmn = VARIANT[kind][:2]
        elif conf is not None or not TUNE:
            bmn = fixed()[:2]
        else:
            bmn = None
        meta = dict(meta, **tma(*bmn)) if bmn is not None else dict(meta, TMA=False)
    tuned, raw = {"fwd": (_attn_fwd_tuned, _attn_fwd_kernel), "dkdv": (_attn_bwd_dkdv_tuned, _attn_bwd_dkdv_kernel),
                  "dq": (_attn_bwd_dq_tuned, _attn_bwd_dq_kernel)}[kind]
    if blocks is None and interpret_mode():
        blocks = INTERPRET_BLOCKS[kind]
    if blocks is not None:
        BM, BN = blocks
        raw[grid({"BM": BM, "BN": BN})](*args, **meta, BM=BM, BN=BN, num_warps=4, num_stages=2)
    elif kind in VARIANT or conf is not None or not TUNE:
        # reg: an optional register cap per thread (ptxas maxnreg; a VARIANT's, DQ_FAST's)
        BM, BN, w, st, *reg = VARIANT[kind] if kind in VARIANT else fixed()
        _launch(raw, grid({"BM": BM, "BN": BN}), args, dict(meta, BM=BM, BN=BN, num_warps=w, num_stages=st,
                                                            **({"maxnreg": reg[0]} if reg else {})))
    else:
        _tuned_launch(tuned, raw, kind, grid, args, meta, lambda c: c.kwargs)


# fastlaunch: the autotuner's pick per key, so later calls skip the autotuner and launch the raw kernel
_PICKS: dict = {}


def _tuned_launch(tuned, raw, kind, grid, args, meta, blocks_of):
    fast = VARIANT.get("fastlaunch")
    key = (kind, args[0].dtype, tuple(sorted(meta.items()))) if fast else None
    pick = _PICKS.get(key) if fast else None
    if pick is None:
        tuned[grid](*args, **meta)
        if fast:
            c = tuned.best_config
            _PICKS[key] = dict(blocks_of(c), num_warps=c.num_warps, num_stages=c.num_stages)
    else:
        _launch(raw, grid(pick), args, dict(meta, **pick))


def _flags(q, k, causal, window, cu_seqlens, max_len):
    Hq, D, Hkv = q.shape[2], q.shape[3], k.shape[2]
    return dict(GROUP=Hq // Hkv, HEAD_DIM=D, BD=_head_block(D), IS_CAUSAL=bool(causal),
                HAS_WINDOW=window is not None, IS_VARLEN=cu_seqlens is not None,
                DOT_PREC=_dot_prec(q.dtype), L_BUCKET=_l_bucket(max_len),
                window=window if window is not None else 0)


def _query_block_flags(kind, q, k, v, causal, window, cu_seqlens, max_len):
    """_flags of the kernels whose programs are query blocks (fwd, dq): causal launches run the longest blocks
    first; K, V through TMA descriptors where _feature("tma") names the kernel and the tensors allow (built at
    launch, for the launched BN)."""
    meta = _flags(q, k, causal, window, cu_seqlens, max_len)
    meta["REVERSE_M"] = bool(causal)
    if kind in _feature("tma", meta) and _tma_ok((k, v), q.shape[3]):
        meta["TMA"] = True
        meta["_tma"] = lambda BM, BN: {"KD": _desc(k, BN), "VD": _desc(v, BN)}
    return meta


def _kernel_opts(meta, name, table, rowshift_ok, fast_ok, blocks):
    """Set in meta the constexpr flags (table) of the kernel options _feature(name) names, rowshift only where
    rowshift_ok; then, without fixed blocks, those and the config of the fast path fast_ok(meta) returns (a
    DKDV_FAST-like dict, or None)."""
    for opt in _feature(name, meta):
        if opt == "rowshift" and not rowshift_ok:
            continue
        meta[table[opt]] = True
    fast = fast_ok(meta) if blocks is None else None
    if fast is not None:
        meta.update({f: True for f in fast["flags"]}, _conf=fast["conf"])


def _nseq(q, cu_seqlens, max_seqlen):
    """(number of sequences, longest query sequence, longest key sequence) of the launch grid."""
    if cu_seqlens is not None:
        return cu_seqlens.numel() - 1, max_seqlen
    return q.shape[0], None


def attention_fwd(q, k, v, *, causal, window, softmax_scale, cu_seqlens=None, max_seqlen=None, blocks=None):
    """Launch the forward kernel. Returns o (like q, contiguous) and lse (batch, nheads_q, seqlen_q) fp32."""
    B, Lq, Hq, D = q.shape
    Lk = k.shape[1]
    o = new_empty((B, Lq, Hq, D), dtype=q.dtype, device=q.device)
    lse = new_empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    nb, max_len = _nseq(q, cu_seqlens, max_seqlen)
    max_len = Lq if max_len is None else max_len
    if max_len == 0 or nb == 0 or Hq == 0:
        return o, lse
    meta = _query_block_flags("fwd", q, k, v, causal, window, cu_seqlens, max_len)
    args = (q, k, v, o, lse, cu_seqlens if cu_seqlens is not None else q,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            Lq, Lk, Hq, Lq, max_len, softmax_scale * LOG2E)
    _run("fwd", lambda m: (cdiv(max_len, m["BM"]) * nb * Hq,), blocks, args, meta)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, *, causal, window, softmax_scale, cu_seqlens=None, max_seqlen=None,
                  blocks=None, dlse=None, outs=None):
    """Launch the backward kernels. Returns dq, dk, dv (contiguous, dtypes of q, k, v).
    dlse: gradient of the lse output, if any; since d lse / d s = p it folds into delta.
    outs: optional preallocated (dq, dk, dv), None entries allocated here (any strides with a unit
    stride along headdim; utils.GradSlab)."""
    if do.stride(-1) != 1:
        do = do.contiguous()
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    dq, dk, dv = outs if outs is not None else (None, None, None)
    dq = new_empty(q.shape, dtype=q.dtype, device=q.device) if dq is None or dq.stride(-1) != 1 else dq
    dk = new_empty(k.shape, dtype=k.dtype, device=k.device) if dk is None or dk.stride(-1) != 1 else dk
    dv = new_empty(v.shape, dtype=v.dtype, device=v.device) if dv is None or dv.stride(-1) != 1 else dv
    nb, max_len = _nseq(q, cu_seqlens, max_seqlen)
    if cu_seqlens is None:
        # keys that no query sees (seqlen_k > seqlen_q, or empty q) still need dk = dv = 0
        max_q, max_k = Lq, Lk
    else:
        max_q = max_k = max_len
    BD = _head_block(D)
    delta = new_empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    # variant dq_delta: the dq kernel computes delta itself and runs first (no delta kernel)
    dq_first = _feature("dq_delta", _flags(q, k, causal, window, cu_seqlens, max(max_q, max_k))) and dlse is None
    if Lq > 0 and Hq > 0 and not dq_first:
        BMD = 64
        _launch(_attn_bwd_delta_kernel, (cdiv(Lq, BMD), B * Hq),
                (o, do, delta, *o.stride()[:3], *do.stride()[:3], Lq, Hq), dict(HEAD_DIM=D, BD=BD, BM=BMD))
        if dlse is not None:
            delta = delta - torch.where(torch.isneginf(lse), 0.0, dlse.float())
    scale = softmax_scale
    common = (Lq, Lk, Hq, Lq)
    if dq_first:
        _bwd_dq(do, q, k, v, o, lse, delta, dq, causal, window, cu_seqlens, nb, max_q, max_k, common, scale, blocks,
                True)
    if max_k > 0 and nb > 0 and Hkv > 0:
        meta = _flags(q, k, causal, window, cu_seqlens, max(max_q, max_k))
        # variant dkdv_opt=oneloop,rowshift,gunroll,kreg,early_dp; rowshift: a block must fit in the rows
        _kernel_opts(meta, "dkdv_opt", DKDV_OPTS, cu_seqlens is None and Lq >= 256,
                     lambda m: _dkdv_fast_ok(q, k, causal, window, cu_seqlens, m), blocks)
        args = (q, k, v, do, lse, delta, dk, dv, q, cu_seqlens if cu_seqlens is not None else q,   # q: DQA (unused)
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3],
                *dv.stride()[:3], 0, 0, 0, *common, max_k, scale, scale * LOG2E)
        _run("dkdv", lambda m: (cdiv(max_k, m["BN"]) * nb * Hkv,), None if blocks is None else blocks[0], args, meta)
    if not dq_first:
        _bwd_dq(do, q, k, v, o, lse, delta, dq, causal, window, cu_seqlens, nb, max_q, max_k, common, scale, blocks,
                False)
    return dq, dk, dv


def _bwd_dq(do, q, k, v, o, lse, delta, dq, causal, window, cu_seqlens, nb, max_q, max_k, common, scale, blocks,
            delta_here):
    """Launch the dq kernel; delta_here: it computes delta = rowsum(dO * O) and stores it first."""
    Hq = q.shape[2]
    if max_q == 0 or nb == 0 or Hq == 0:
        return
    meta = _query_block_flags("dq", q, k, v, causal, window, cu_seqlens, max(max_q, max_k))
    meta["M_MAJOR"] = "dq" in VARIANT.get("mmajor", ())
    # variant dq_opt=oneloop,rowshift,early_dp; rowshift: a key block must fit
    _kernel_opts(meta, "dq_opt", DQ_OPTS, cu_seqlens is None and k.shape[1] >= 128,
                 lambda m: _dq_fast_ok(q, k, causal, window, cu_seqlens, m), blocks)
    if delta_here:
        meta.update(DELTA_HERE=True, O=o, sob=o.stride(0), sot=o.stride(1), soh=o.stride(2))
    args = (q, k, v, do, lse, delta, dq, cu_seqlens if cu_seqlens is not None else q,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
            *common, max_q, scale, scale * LOG2E)
    _run("dq", lambda m: (cdiv(max_q, m["BM"]) * nb * Hq,), None if blocks is None else blocks[1], args, meta)


def _fwd_impl(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen):
    from .decode import attention_decode, use_decode

    if use_decode(q, k, cu_seqlens):
        return attention_decode(q, k, v, causal=causal, window=window, softmax_scale=softmax_scale)
    return attention_fwd(q, k, v, causal=causal, window=window, softmax_scale=softmax_scale,
                         cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


# Registered ops: torch.compile sees opaque calls with fake (shape-only) implementations, no graph break.
@torch.library.custom_op("hybridna::flash_attn_fwd", mutates_args=())
def flash_attn_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: Optional[int],
                      softmax_scale: float, cu_seqlens: Optional[torch.Tensor],
                      max_seqlen: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen)


@flash_attn_fwd_op.register_fake
def _(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen):
    B, Lq, Hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, Hq, Lq), dtype=torch.float32)


@torch.library.custom_op("hybridna::flash_attn_bwd", mutates_args=())
def flash_attn_bwd_op(do: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, causal: bool, window: Optional[int],
                      softmax_scale: float, cu_seqlens: Optional[torch.Tensor],
                      max_seqlen: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(do, q, k, v, o, lse, causal=causal, window=window, softmax_scale=softmax_scale,
                         cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, dlse=dlse)


@flash_attn_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, causal, window, softmax_scale, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
    ctx.args = (causal, window, softmax_scale, max_seqlen)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    causal, window, softmax_scale, max_seqlen = ctx.args
    dq, dk, dv = flash_attn_bwd_op(do, dlse, q, k, v, o, lse, causal, window, softmax_scale, cu_seqlens,
                                   max_seqlen)
    return dq, dk, dv, None, None, None, None, None


flash_attn_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class FlashAttnFunction(torch.autograd.Function):
    """The eager path: the same launchers as the registered ops, with less dispatch overhead
    (decode calls are short enough for it to matter)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen):
        o, lse = _fwd_impl(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen)
        _setup_context(ctx, (q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen), (o, lse))   # as the op's
        ctx.set_materialize_grads(False)
        ctx.dests = [grad_dest(t) for t in (q, k, v)]  # dq, dk, dv into a caller's slab (utils.GradSlab)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        causal, window, softmax_scale, max_seqlen = ctx.args
        if do is None:
            do = torch.zeros_like(o)
        outs = [take_dest(d) if ctx.needs_input_grad[i] else None for i, d in enumerate(ctx.dests)]
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, causal=causal, window=window, softmax_scale=softmax_scale,
                                   cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, dlse=dlse, outs=outs)
        return dq, dk, dv, None, None, None, None, None
