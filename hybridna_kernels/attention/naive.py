"""Plain PyTorch reference for flash_attention: a masked softmax, slow, float64-capable.

This is the definition the Triton kernels are tested against (see README.md in this folder for the
mask convention and the maths of the kernels).
"""
from __future__ import annotations

import torch


def attention_mask(seqlen_q: int, seqlen_k: int, *, causal: bool, window: int | None,
                   device=None) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask, True where query i may see key j.

    Query i sits at key position p = i + seqlen_k - seqlen_q (queries are the last positions).
    causal: j <= p. window W (with causal): p - W < j <= p, i.e. W keys including itself.
    """
    p = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if causal:
        mask &= j <= p
    if window is not None:
        mask &= j > p - window
    return mask


def _attention_dense(q, k, v, *, causal, window, softmax_scale):
    """q: (B, Lq, Hq, D); k, v: (B, Lk, Hkv, D). Returns o (B, Lq, Hq, D) and lse (B, Hq, Lq).

    Computes in fp32 for fp16/bf16 inputs and in the input dtype otherwise. Rows without a visible
    key give o = 0 and lse = -inf (no NaN, also in the gradients).
    """
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = Hq // Hkv
    qf = q.to(cdt).transpose(1, 2)                                          # (B, Hq, Lq, D)
    kf = k.to(cdt).repeat_interleave(group, dim=2).transpose(1, 2)          # (B, Hq, Lk, D)
    vf = v.to(cdt).repeat_interleave(group, dim=2).transpose(1, 2)          # (B, Hq, Lk, D)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * softmax_scale              # (B, Hq, Lq, Lk)
    mask = attention_mask(Lq, Lk, causal=causal, window=window, device=q.device)
    s = s.masked_fill(~mask, float("-inf"))
    # Max of each row, 0 where the row is fully masked, so exp(s - m) never sees -inf - -inf.
    m = s.amax(dim=-1, keepdim=True).detach() if Lk > 0 else s.new_zeros(B, Hq, Lq, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)                                                    # masked entries: 0
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    o = torch.matmul(p, vf).transpose(1, 2)                                 # (B, Lq, Hq, D)
    lse = (m + torch.log(denom)).squeeze(-1)                                # -inf on empty rows
    return o, lse


def attention_ref(q, k, v, causal=True, window=None, softmax_scale=None, cu_seqlens=None,
                  max_seqlen=None, return_lse=False):
    """Masked-softmax attention, the definition of flash_attention (DESIGN.md).

    Args:
        q: (batch, seqlen_q, nheads_q, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim),
            nheads_q % nheads_kv == 0 (query head h uses kv head h // (nheads_q // nheads_kv)).
        causal: query i (at key position i + seqlen_k - seqlen_q) sees keys j <= its position.
        window: W >= 1 (with causal): only keys j > position - W, i.e. W keys including itself.
        softmax_scale: defaults to headdim ** -0.5.
        cu_seqlens: int32 (nseq + 1,) offsets for packed sequences (batch must be 1); each packed
            sequence attends only to itself, with seqlen_q == seqlen_k per sequence.
        max_seqlen: accepted for API symmetry; unused here.
        return_lse: also return the natural-log log-sum-exp of the scaled scores.

    Returns:
        o like q (its dtype), and lse (batch, nheads_q, seqlen_q) fp32 (fp64 for fp64 inputs) when
        return_lse. Rows with no visible key give o = 0 and lse = -inf.
    Differentiable in q, k, v through autograd.
    """
    del max_seqlen
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if cu_seqlens is None:
        o, lse = _attention_dense(q, k, v, causal=causal, window=window, softmax_scale=softmax_scale)
    else:
        bounds = [int(x) for x in cu_seqlens.tolist()]
        os_, lses = [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue
            o_i, lse_i = _attention_dense(q[:, start:end], k[:, start:end], v[:, start:end], causal=causal,
                                          window=window, softmax_scale=softmax_scale)
            os_.append(o_i)
            lses.append(lse_i)
        total = q.shape[1]
        # Tokens outside [cu_seqlens[0], cu_seqlens[-1]) (if any) belong to no sequence: o = 0, lse = -inf.
        lead, trail = bounds[0], total - bounds[-1]
        Hq, D = q.shape[2], q.shape[3]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        pad_o = lambda n: q.new_zeros(1, n, Hq, D, dtype=cdt)  # noqa: E731
        pad_l = lambda n: q.new_full((1, Hq, n), float("-inf"), dtype=cdt)  # noqa: E731
        o = torch.cat([pad_o(lead)] + os_ + [pad_o(trail)], dim=1)
        lse = torch.cat([pad_l(lead)] + lses + [pad_l(trail)], dim=2)
    o = o.to(q.dtype)
    if return_lse:
        return o, lse.to(lse_dtype)
    return o
