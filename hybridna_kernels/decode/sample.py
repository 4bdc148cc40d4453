"""Next-token sampling on the device, for a decode loop that is one CUDA graph replay per token.

One program per row: logits / temperature with the suppressed ids at -inf, then argmax (greedy) or
argmax(logits / T + Gumbel noise), which draws from softmax(logits / T) (the Gumbel-max trick); the
noise is Philox (tl.rand) keyed by (seed, step, row, id), the step read from the device. Then teacher
forcing, the <pad> of finished rows and the eos bookkeeping, and the token is written both to the
decoder's input buffer and to the output history at the step's column.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import next_pow2

__all__ = ["sample_step"]


@triton.jit
def _sample_kernel(LOGITS, BANNED, TOK, HIST, LHIST, DONE, FORCED, POS,
                   V, L0, T, seed, inv_temp, eos, pad, slb, shb, slhb, slht, sfb,
                   GREEDY: tl.constexpr, HAS_FORCED: tl.constexpr, HAS_EOS: tl.constexpr,
                   SAVE_LOGITS: tl.constexpr, BV: tl.constexpr):
    b = tl.program_id(0)
    nb = tl.num_programs(0)
    t = tl.load(POS).to(tl.int32) - L0  # the step: tokens sampled so far
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    raw = tl.load(LOGITS + b.to(tl.int64) * slb + o_v, mask=m_v, other=0.0)
    if SAVE_LOGITS:
        tl.store(LHIST + b.to(tl.int64) * slhb + t.to(tl.int64) * slht + o_v, raw, mask=m_v & ((o_v * 0 + t) < T))
    x = raw.to(tl.float32)
    ban = tl.load(BANNED + o_v, mask=m_v, other=1)
    if not GREEDY:
        u = tl.rand(seed, (t * nb + b) * BV + o_v)
        u = tl.minimum(tl.maximum(u, 1e-12), 1.0 - 1e-7)
        x = x * inv_temp - tl.log(-tl.log(u))
    x = tl.where(m_v & (ban == 0), x, float("-inf"))
    tok = tl.argmax(x, 0).to(tl.int64)
    if HAS_FORCED:
        tok = tl.load(FORCED + b * sfb + tl.minimum(t, T - 1)).to(tl.int64)
    done = tl.load(DONE + b)
    tok = tl.where(done != 0, pad, tok)
    if HAS_EOS:
        tl.store(DONE + b, ((done != 0) | (tok == eos)).to(DONE.dtype.element_ty))
    tl.store(TOK + b, tok)
    if t < T:
        tl.store(HIST + b.to(tl.int64) * shb + t, tok)


def sample_step(logits, banned, tok, hist, done, pos, L0, *, temperature=1.0, seed=0, forced=None,
                eos_token_id=None, pad_id=0, logits_hist=None):
    """Sample row b's next token from logits (B, V) at step t = pos[0] - L0 into tok[b] and hist[b, t].

    banned: (V,) uint8, 1 = never sampled; done: (B,) uint8, rows that emitted eos (they get pad_id;
    updated with eos_token_id); forced: (B, T) tokens used instead of sampled ones; logits_hist:
    (B, T, V) receives the raw logits row at step t. temperature 0 is greedy."""
    B, V = logits.shape
    T = hist.shape[1]
    assert logits.stride(1) == 1 and V <= 65536
    greedy = temperature == 0
    dummy = hist
    _sample_kernel[(B,)](
        logits, banned, tok, hist, logits_hist if logits_hist is not None else logits, done,
        forced if forced is not None else dummy, pos,
        V, int(L0), T, int(seed) & 0x7FFFFFFF, 0.0 if greedy else 1.0 / temperature,
        -1 if eos_token_id is None else int(eos_token_id), int(pad_id),
        logits.stride(0), hist.stride(0),
        logits_hist.stride(0) if logits_hist is not None else 0, logits_hist.stride(1) if logits_hist is not None else 0,
        forced.stride(0) if forced is not None else 0,
        GREEDY=greedy, HAS_FORCED=forced is not None, HAS_EOS=eos_token_id is not None,
        SAVE_LOGITS=logits_hist is not None, BV=max(16, next_pow2(V)), num_warps=1)
