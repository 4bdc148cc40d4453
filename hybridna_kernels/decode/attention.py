"""Attention of one new query per row over a KV cache whose length is read from a device tensor.

The number of key slices (the grid) depends only on the cache capacity, never on the current length,
so one launch can be captured in a CUDA graph and replayed at every position: slices past the
current length find no keys and contribute nothing to the merge. One program handles one slice for
one kv head and all query heads of its group (rows padded to 16 for tl.dot); the slices are merged
by the split-K decode's merge kernel (hybridna_kernels.attention.decode).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..attention.decode import _attn_decode_merge_kernel
from ..utils import cdiv, new_empty

__all__ = ["attention_step"]

LOG2E = 1.4426950408889634


@triton.jit
def _attn_step_split_kernel(
    Q, K, V, POS, OP, LSEP,
    sqb, sqh, skb, skt, skh, svb, svt, svh,
    nheads_kv, keys_per_split, n_splits, qk_scale, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    i_b = (pid_bh // nheads_kv).to(tl.int64)
    i_hk = (pid_bh % nheads_kv).to(tl.int64)
    n = tl.load(POS + i_b).to(tl.int32) + 1  # keys 0 .. pos, the new one included
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(n - window, 0)
    o_r = tl.arange(0, BM)  # row r: query head i_hk * GROUP + r
    m_r = o_r < GROUP
    o_d = tl.arange(0, BD)
    m_d = o_d < HEAD_DIM
    o_n = tl.arange(0, BN)
    b_q = tl.load(Q + i_b * sqb + (i_hk * GROUP + o_r).to(tl.int64)[:, None] * sqh + o_d[None, :],
                  mask=m_r[:, None] & m_d[None, :], other=0.0)
    start = lo + pid_s * keys_per_split
    end = tl.minimum(start + keys_per_split, n)
    p_k = K + i_b * skb + i_hk * skh + start.to(tl.int64) * skt + o_n[:, None] * skt + o_d[None, :]
    p_v = V + i_b * svb + i_hk * svh + start.to(tl.int64) * svt + o_n[:, None] * svt + o_d[None, :]
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    for start_n in range(start, end, BN):
        o_k = start_n + o_n
        m_kv = (o_k < end)[:, None] & m_d[None, :]
        b_k = tl.load(p_k, mask=m_kv, other=0.0)
        b_v = tl.load(p_v, mask=m_kv, other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
        b_s = tl.where(m_r[:, None] & (o_k < end)[None, :], b_s, float("-inf"))
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


@functools.lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def attention_step(q, k_cache, v_cache, pos, *, window=None, softmax_scale=None, n_splits=None, BN=64,
                   num_warps=4, num_stages=3):
    """q (B, Hq, D) (one query per row; any row stride, heads contiguous in D), k_cache / v_cache
    (B, T, Hkv, D), pos (B,) int: row b attends over keys 0 .. pos[b] (the last `window` of them with
    a window). Returns o (B, Hq, D) in q's dtype. The launch depends on T, never on pos."""
    B, Hq, D = q.shape
    T, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    BD = max(16, triton.next_power_of_2(D))
    BM = max(16, triton.next_power_of_2(group))
    span = T if window is None else min(window, T)
    n_blocks = max(cdiv(span, BN), 1)
    if n_splits is None:
        sms = _num_sms(q.device.index or 0) if q.is_cuda else 4
        n_splits = cdiv(2 * sms, B * Hkv)
    n_splits = max(1, min(n_splits, n_blocks, 128))
    keys_per_split = cdiv(n_blocks, n_splits) * BN
    n_splits = cdiv(span, keys_per_split)
    op = torch.empty((B * Hkv, n_splits, BM, BD), dtype=torch.float32, device=q.device)
    lsep = torch.empty((B * Hkv, n_splits, BM), dtype=torch.float32, device=q.device)
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    _attn_step_split_kernel[(n_splits, B * Hkv)](
        q, k_cache, v_cache, pos, op, lsep, q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        Hkv, keys_per_split, n_splits, scale * LOG2E, window if window is not None else 0,
        GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, BN=BN, HAS_WINDOW=window is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)
    o = new_empty((B, 1, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, 1), dtype=torch.float32, device=q.device)
    _attn_decode_merge_kernel[(B * Hkv, group)](
        op, lsep, o, lse, *o.stride()[:3], 1, Hkv, n_splits,
        GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, NS=max(2, triton.next_power_of_2(n_splits)))
    return o[:, 0]
