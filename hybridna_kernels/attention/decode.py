"""Split-K attention for decoding: a few queries (seqlen_q <= 16) over a long KV cache.

One program handles one slice of the keys for one kv head and ALL query heads of its group (rows =
group x seqlen_q, padded to 16 for tl.dot), so each cached key is read once per kv head. Every slice
writes a normalised partial output and its log-sum-exp; a second kernel merges the slices.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..utils import autotune, cdiv, interpret_mode, new_empty, next_pow2, num_sms
from . import flash
from .flash import LOG2E

DECODE_MAX_Q = 16          # seqlen_q up to this uses split-K ...
DECODE_MIN_K = 1024        # ... when there are at least this many keys
DECODE_MAX_ROWS = 128      # group * seqlen_q rows per program
MAX_SPLITS = 128


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "key_lo", "keys_per_split", "n_splits", "window"])
def _attn_decode_split_kernel(
    Q, K, V, OP, LSEP,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
    seqlen_q, seqlen_k, nheads_kv, key_lo, keys_per_split, n_splits, qk_scale, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
    SEQ=None, SEQ_FROM_PTR: tl.constexpr = False, PDL: tl.constexpr = False,
):
    # SEQ_FROM_PTR (hybridna_kernels.decode.attention_step, a CUDA-graph decode step): row b's keys are
    # 0 .. SEQ[b] (seqlen_k = SEQ[b] + 1, read on the device), the grid fixed by the cache capacity;
    # key_lo is then recomputed here for a window. PDL: launched with programmatic dependent launch.
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    i_b = (pid_bh // nheads_kv).to(tl.int64)
    i_hk = (pid_bh % nheads_kv).to(tl.int64)
    if SEQ_FROM_PTR:
        seqlen_k = tl.load(SEQ + i_b).to(tl.int32) + 1
        if HAS_WINDOW:
            key_lo = tl.maximum(seqlen_k - seqlen_q - window + 1, 0)
    o_r = tl.arange(0, BM)                   # row r = g * seqlen_q + i: query head hk * GROUP + g, query i
    m_r = o_r < GROUP * seqlen_q
    o_g = o_r // seqlen_q
    o_i = o_r % seqlen_q
    o_d = tl.arange(0, BD)
    m_d = o_d < HEAD_DIM
    o_n = tl.arange(0, BN)
    pos = o_i + (seqlen_k - seqlen_q)
    p_q = Q + i_b * sqb + (i_hk * GROUP + o_g).to(tl.int64)[:, None] * sqh + o_i.to(tl.int64)[:, None] * sqt \
        + o_d[None, :]
    b_q = tl.load(p_q, mask=m_r[:, None] & m_d[None, :], other=0.0)
    start = key_lo + pid_s * keys_per_split
    end = tl.minimum(start + keys_per_split, seqlen_k)
    p_k = K + i_b * skb + i_hk * skh + (tl.zeros([], dtype=tl.int64) + start) * skt + o_n[:, None] * skt + o_d[None, :]
    p_v = V + i_b * svb + i_hk * svh + (tl.zeros([], dtype=tl.int64) + start) * svt + o_n[:, None] * svt + o_d[None, :]
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    for start_n in range(start, end, BN):
        o_k = start_n + o_n
        m_kv = (o_k < end)[:, None] & m_d[None, :]
        b_k = tl.load(p_k, mask=m_kv, other=0.0)
        b_v = tl.load(p_v, mask=m_kv, other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
        vis = m_r[:, None] & (o_k < end)[None, :]
        if IS_CAUSAL:
            vis = vis & (o_k[None, :] <= pos[:, None])
        if HAS_WINDOW:
            vis = vis & (o_k[None, :] > pos[:, None] - window)
        b_s = tl.where(vis, b_s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(b_s, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        b_p = tl.math.exp2(b_s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(b_p, 1)
        acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_new
        p_k += BN * skt
        p_v += BN * svt
    row = (pid_bh.to(tl.int64) * n_splits + pid_s) * BM + o_r
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(OP + row[:, None] * BD + o_d[None, :], acc / l_safe[:, None])
    tl.store(LSEP + row, tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe)))


@triton.jit(do_not_specialize=["seqlen_q", "n_splits"])
def _attn_decode_merge_kernel(
    OP, LSEP, O, LSE, sob, sot, soh, seqlen_q, nheads_kv, n_splits,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, NS: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1)
    i_b = pid_bh // nheads_kv
    i_hk = pid_bh % nheads_kv
    g = r // seqlen_q
    i = r % seqlen_q
    o_s = tl.arange(0, NS)
    m_s = o_s < n_splits
    o_d = tl.arange(0, BD)
    rows = (pid_bh * n_splits + o_s) * BM + r
    b_lse = tl.load(LSEP + rows, mask=m_s, other=float("-inf"))
    m = tl.max(b_lse, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(b_lse - m_use)
    denom = tl.sum(w, 0)
    b_o = tl.load(OP + rows[:, None] * BD + o_d[None, :], mask=m_s[:, None], other=0.0)
    b_o = tl.sum(b_o * w[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
    h = i_hk * GROUP + g
    tl.store(O + i_b * sob + i.to(tl.int64) * sot + h * soh + o_d, b_o.to(O.dtype.element_ty), mask=o_d < HEAD_DIM)
    lse = flash._lse_ln(m_use, denom)
    tl.store(LSE + (i_b * nheads_kv * GROUP + h) * seqlen_q + i, lse)


# BN is tuned too: key slices are multiples of SPLIT_ALIGN keys, a multiple of every BN below.
SPLIT_ALIGN = 128
_decode_tuned = autotune(
    [triton.Config({"BN": 64}, num_warps=4, num_stages=3), triton.Config({"BN": 64}, num_warps=4, num_stages=4),
     triton.Config({"BN": 128}, num_warps=4, num_stages=3), triton.Config({"BN": 128}, num_warps=8, num_stages=3),
     triton.Config({"BN": 64}, num_warps=8, num_stages=4)],
    key=["BD", "BM", "IS_CAUSAL", "HAS_WINDOW"],
)(_attn_decode_split_kernel)


def use_decode(q, k, cu_seqlens) -> bool:
    """Split-K pays off when few query blocks would leave most of the GPU idle over long keys."""
    Lq, Hq, Lk, Hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    return (cu_seqlens is None and q.shape[0] > 0 and 1 <= Lq <= DECODE_MAX_Q and Lk >= DECODE_MIN_K
            and (Hq // Hkv) * Lq <= DECODE_MAX_ROWS)


def attention_decode(q, k, v, *, causal, window, softmax_scale, n_splits=None, BN=None):
    """Split-K forward for small seqlen_q. Returns o (like q, contiguous) and lse (batch, nheads_q,
    seqlen_q) fp32, the same as the general forward. n_splits / BN: overrides (tests)."""
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    o = new_empty((B, Lq, Hq, D), dtype=q.dtype, device=q.device)
    lse = new_empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    BD = flash._head_block(D)
    BM = max(16, next_pow2(group * Lq))
    # keys any query can see: the window of the first query starts at (seqlen_k - seqlen_q) - W + 1
    key_lo = max(0, Lk - Lq - window + 1) if window is not None else 0
    align = BN if BN is not None else SPLIT_ALIGN
    n_blocks = max(cdiv(Lk - key_lo, align), 1)
    if n_splits is None:
        sms = num_sms(q.device) if q.is_cuda else 4
        n_splits = cdiv(2 * sms, B * Hkv)
    n_splits = max(1, min(n_splits, n_blocks, MAX_SPLITS))
    keys_per_split = cdiv(n_blocks, n_splits) * align
    n_splits = max(1, cdiv(Lk - key_lo, keys_per_split))
    op = torch.empty((B * Hkv, n_splits, BM, BD), dtype=torch.float32, device=q.device)
    lsep = torch.empty((B * Hkv, n_splits, BM), dtype=torch.float32, device=q.device)
    args = (q, k, v, op, lsep, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            Lq, Lk, Hkv, key_lo, keys_per_split, n_splits, softmax_scale * LOG2E,
            window if window is not None else 0)
    meta = dict(GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, IS_CAUSAL=bool(causal),
                HAS_WINDOW=window is not None, DOT_PREC=flash._dot_prec(q.dtype))
    grid = (n_splits, B * Hkv)
    if BN is None and (interpret_mode() or not flash.TUNE or BD > 128):
        BN = 64 if BD <= 128 else 32
    fixed = flash.VARIANT.get("decode")
    if BN is None and fixed is not None and not interpret_mode():
        BN, w, st = fixed
        flash._launch(_attn_decode_split_kernel, grid, args, dict(meta, BN=BN, num_warps=w, num_stages=st))
    elif BN is not None:
        flash._launch(_attn_decode_split_kernel, grid, args,
                      dict(meta, BN=BN, num_warps=4, num_stages=3 if BD <= 128 else 2))
    else:
        flash._tuned_launch(_decode_tuned, _attn_decode_split_kernel, "decode", lambda c: grid, args, meta,
                            lambda c: {"BN": c.kwargs["BN"]})
    flash._launch(_attn_decode_merge_kernel, (B * Hkv, group * Lq),
                  (op, lsep, o, lse, *o.stride()[:3], Lq, Hkv, n_splits),
                  dict(GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, NS=max(2, next_pow2(n_splits))))
    return o, lse
