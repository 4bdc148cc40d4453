"""Attention of one new query per row over a KV cache whose length is read from a device tensor.

The split-K decode kernels of hybridna_kernels.attention.decode, with the key count read from `pos`
on the device (SEQ_FROM_PTR): the number of key slices (the grid) depends only on the cache capacity,
never on the current length, so one launch can be captured in a CUDA graph and replayed at every
position; slices past the current length find no keys and contribute nothing to the merge.
"""
from __future__ import annotations


import torch
import triton

from ..attention.decode import _attn_decode_merge_kernel, _attn_decode_split_kernel
from ..utils import cdiv, new_empty, next_pow2, num_sms
from .gemv import use_pdl

__all__ = ["attention_step"]

LOG2E = 1.4426950408889634


def attention_step(q, k_cache, v_cache, pos, *, window=None, softmax_scale=None, n_splits=None, BN=64,
                   num_warps=4, num_stages=3):
    """q (B, Hq, D) (one query per row; any row stride, heads contiguous in D), k_cache / v_cache
    (B, T, Hkv, D), pos (B,) int: row b attends over keys 0 .. pos[b] (the last `window` of them with
    a window). Returns o (B, Hq, D) in q's dtype. The launch depends on T, never on pos."""
    B, Hq, D = q.shape
    T, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    BD = max(16, next_pow2(D))
    BM = max(16, next_pow2(group))
    span = T if window is None else min(window, T)
    n_blocks = max(cdiv(span, BN), 1)
    if n_splits is None:
        sms = num_sms(q.device) if q.is_cuda else 4
        n_splits = cdiv(2 * sms, B * Hkv)
    n_splits = max(1, min(n_splits, n_blocks, 256))
    keys_per_split = cdiv(n_blocks, n_splits) * BN
    n_splits = cdiv(span, keys_per_split)
    op = torch.empty((B * Hkv, n_splits, BM, BD), dtype=torch.float32, device=q.device)
    lsep = torch.empty((B * Hkv, n_splits, BM), dtype=torch.float32, device=q.device)
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    pdl = use_pdl(q)
    # the split-K decode kernel with the cache length read from pos (one query: causal is a no-op)
    _attn_decode_split_kernel[(n_splits, B * Hkv)](
        q, k_cache, v_cache, op, lsep, q.stride(0), 0, q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        1, T, Hkv, 0, keys_per_split, n_splits, scale * LOG2E, window if window is not None else 0,
        GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, BN=BN, IS_CAUSAL=False, HAS_WINDOW=window is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", SEQ=pos, SEQ_FROM_PTR=True, PDL=pdl,
        num_warps=num_warps, num_stages=num_stages, **({"launch_pdl": True} if pdl else {}))
    o = new_empty((B, 1, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, 1), dtype=torch.float32, device=q.device)
    _attn_decode_merge_kernel[(B * Hkv, group)](
        op, lsep, o, lse, *o.stride()[:3], 1, Hkv, n_splits,
        GROUP=group, HEAD_DIM=D, BD=BD, BM=BM, NS=max(2, next_pow2(n_splits)))
    return o[:, 0]
