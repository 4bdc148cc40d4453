"""The SSD decode step (hybridna_kernels.ssd.ssd_step's maths, dt softplus, no gate) as a decode kernel
that can be launched with programmatic dependent launch: its launch overlaps the previous kernel (the
in_proj GEMV) and it waits for it before reading anything. The fp32 state is updated in place."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ssd.chunk import _softplus
from ..utils import new_empty
from .gemv import use_pdl

__all__ = ["ssd_step_decode"]


@triton.jit
def _ssd_step_decode_kernel(ST, X, DT, A, Bm, Cm, D, DTB, Y,
                            H, P, N, lo, hi, s_st_b, s_st_h, s_st_p, sxb, sdtb, sbb, sbg, scb, scg,
                            HPG: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                            HAS_HI: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1)
    i_p = tl.program_id(2)
    i_g = (i_h // HPG).to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    d = _softplus(tl.load(DT + i_b * sdtb + i_h).to(tl.float32) + tl.load(DTB + i_h).to(tl.float32))
    d = tl.maximum(d, lo)
    if HAS_HI:
        d = tl.minimum(d, hi)
    dA = tl.exp(tl.minimum(d * tl.load(A + i_h).to(tl.float32), 0.0))
    p_st = ST + i_b * s_st_b + i_h.to(tl.int64) * s_st_h + o_p.to(tl.int64)[:, None] * s_st_p + o_n[None, :]
    m = m_p[:, None] & m_n[None, :]
    h = tl.load(p_st, mask=m, other=0.0)
    x = tl.load(X + i_b * sxb + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32)
    bv = tl.load(Bm + i_b * sbb + i_g * sbg + o_n, mask=m_n, other=0.0).to(tl.float32)
    cv = tl.load(Cm + i_b * scb + i_g * scg + o_n, mask=m_n, other=0.0).to(tl.float32)
    h = h * dA + (d * x)[:, None] * bv[None, :]
    tl.store(p_st, h, mask=m)
    y = tl.sum(h * cv[None, :], 1)
    if HAS_D:
        y += tl.load(D + i_h).to(tl.float32) * x
    tl.store(Y + (i_b * H + i_h) * P + o_p, y.to(Y.dtype.element_ty), mask=m_p)


def ssd_step_decode(state, x, dt, A, B, C, D, dt_bias, dt_limit):
    """state (b, H, P, N) fp32 updated in place; x (b, H * P) (any row stride); dt (b, H); A, dt_bias
    (H,); B, C (b, G * N); D (H,) or None. Returns y (b, H * P) in x's dtype (softplus(dt + dt_bias),
    clamped to dt_limit)."""
    b, H, P, N = state.shape
    G = B.shape[1] // N
    assert state.stride(3) == 1 and x.stride(1) == 1 and B.stride(1) == 1 and C.stride(1) == 1
    BN = max(16, triton.next_power_of_2(N))
    BP = max(1, min(triton.next_power_of_2(P), 2048 // BN))
    y = new_empty((b, H * P), dtype=x.dtype, device=x.device)
    lo, hi = dt_limit
    pdl = use_pdl(x)
    _ssd_step_decode_kernel[(b, H, triton.cdiv(P, BP))](
        state, x, dt, A, B, C, D if D is not None else A, dt_bias, y,
        H, P, N, float(lo), float(hi) if hi != float("inf") else 0.0,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), dt.stride(0), B.stride(0), N,
        C.stride(0), N, HPG=H // G, BP=BP, BN=BN, HAS_D=D is not None, HAS_HI=hi != float("inf"), PDL=pdl,
        num_warps=4, **({"launch_pdl": True} if pdl else {}))
    return y
