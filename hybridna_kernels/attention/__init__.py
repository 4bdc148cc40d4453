"""Flash attention: causal / sliding-window / grouped-query / varlen, forward and backward (issue 5)."""
from __future__ import annotations

import torch

from ..utils import check_same_device, check_tensor, use_kernel
from .naive import attention_ref

__all__ = ["flash_attention", "attention_ref"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEADDIM = 256


def _validate(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen):
    check_tensor("q", q, ndim=4, dtypes=_DTYPES, contiguous_dims=(3,))
    check_tensor("k", k, ndim=4, dtypes=(q.dtype,), contiguous_dims=(3,))
    check_tensor("v", v, ndim=4, dtypes=(q.dtype,), contiguous_dims=(3,))
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    B, Lq, Hq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"k, v: expected batch {B} like q, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"k: expected headdim {D} like q, got shape {tuple(k.shape)}")
    if not 1 <= D <= MAX_HEADDIM:
        raise ValueError(f"q: headdim must be in [1, {MAX_HEADDIM}], got {D}")
    Hkv = k.shape[2]
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"k: nheads_q ({Hq}) must be a multiple of nheads_kv ({Hkv})")
    if window is not None:
        if not causal:
            raise ValueError("window: a sliding window needs causal=True")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an int >= 1 or None, got {window!r}")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
                                      or not softmax_scale > 0):
        raise ValueError(f"softmax_scale: expected a float > 0 or None, got {softmax_scale!r}")
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,), min_len={0: 1})
        if B != 1:
            raise ValueError(f"cu_seqlens: packed sequences need batch == 1, got q of shape {tuple(q.shape)}")
        if Lq != k.shape[1]:
            raise ValueError(f"cu_seqlens: packed q and k must have the same total length, got {Lq} and {k.shape[1]}")
        if max_seqlen is None or isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
            raise ValueError(f"max_seqlen: expected an int >= 0 with cu_seqlens, got {max_seqlen!r}")
        if not cu_seqlens.is_cuda:  # the checks below would synchronise a GPU; cheap on CPU
            c = cu_seqlens.tolist()
            if c[0] != 0 or c[-1] != Lq or any(b < a for a, b in zip(c[:-1], c[1:])):
                raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to {Lq}, got {c}")
            if max(b - a for a, b in zip(c[:-1], c[1:]) or [0]) > max_seqlen:
                raise ValueError(f"max_seqlen: {max_seqlen} is smaller than the longest sequence in cu_seqlens")
    elif max_seqlen is not None:
        raise ValueError("max_seqlen: only meaningful together with cu_seqlens")


def flash_attention(q, k, v, *, causal=True, window=None, softmax_scale=None, cu_seqlens=None,
                    max_seqlen=None, return_lse=False):
    """Scaled dot-product attention with causal / sliding-window masks, GQA/MQA and packed sequences.

    Args:
        q: (batch, seqlen_q, nheads_q, headdim).
        k, v: (batch, seqlen_k, nheads_kv, headdim); nheads_q % nheads_kv == 0, query head h uses kv
            head h // (nheads_q // nheads_kv) (grouped-query, multi-query). The last dimension of
            q, k, v must be contiguous; other strides are free. fp16, bf16 or fp32 (fp64 runs the
            reference). headdim up to 256 (32, 64, 128 are the fast cases).
        causal: when seqlen_q != seqlen_k the queries are the last seqlen_q positions: query i sits
            at key position p = i + seqlen_k - seqlen_q and sees keys j <= p.
        window: W >= 1, needs causal: query at position p sees keys p - W < j <= p (W keys including
            itself). Cost grows with W, not with seqlen.
        softmax_scale: > 0, defaults to headdim ** -0.5.
        cu_seqlens: int32 (nseq + 1,) offsets of packed sequences, with batch == 1 and q, k, v of
            shape (1, total, heads, headdim); sequences never see each other. Needs max_seqlen.
        max_seqlen: the longest sequence in cu_seqlens (sizes the launch grid).
        return_lse: also return the log-sum-exp of the scaled scores.

    Returns:
        o: like q. With return_lse, (o, lse) where lse is (batch, nheads_q, seqlen_q) fp32, natural
        log. A query that sees no key (possible when seqlen_q > seqlen_k) gets o = 0, lse = -inf.
        Differentiable in q, k, v, through o and lse.

    Under torch.compile it calls the registered ops hybridna::flash_attn_fwd / _bwd (no graph break);
    eagerly, an autograd.Function over the same launchers (less dispatch overhead).
    Dispatch: Triton kernels on CUDA tensors (fp16 / bf16 / fp32), through the Triton interpreter on
    CPU when TRITON_INTERPRET=1, else the pure-PyTorch reference (`naive.attention_ref`, also used
    for fp64). Few queries (seqlen_q <= 16) over >= 1024 keys take the split-K decode kernel.
    """
    _validate(q, k, v, causal, window, softmax_scale, cu_seqlens, max_seqlen)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if q.dtype != torch.float64 and use_kernel(q):
        from .flash import FlashAttnFunction, flash_attn_fwd_op

        args = (q, k, v, bool(causal), window, float(softmax_scale), cu_seqlens, max_seqlen)
        if torch.compiler.is_compiling():
            o, lse = flash_attn_fwd_op(*args)
        elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            o, lse = FlashAttnFunction.apply(*args)
        else:  # nothing to differentiate (decoding, no_grad): skip the autograd.Function's bookkeeping
            from .flash import _fwd_impl

            o, lse = _fwd_impl(*args)
        return (o, lse) if return_lse else o
    return attention_ref(q, k, v, causal=causal, window=window, softmax_scale=float(softmax_scale),
                         cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, return_lse=return_lse)
