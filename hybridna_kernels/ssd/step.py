"""Triton kernel of ssd_step: one decoding step of the SSD recurrence, fp32 state updated in place.

Memory-bound: the (batch, nheads, headdim, dstate) fp32 state is read once and written once; every
program owns a (BP x dstate) slab of one head.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils import new_empty, next_pow2
from .chunk import _dt_proc


@triton.jit
def _ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                     H, G, P, N, lo, hi,
                     s_st_b, s_st_h, s_st_p, s_x_b, s_x_h, s_dt_b, s_dt_h, s_B_b, s_B_g, s_C_b, s_C_g, s_z_b, s_z_h,
                     BP: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, D_PER_CHAN: tl.constexpr,
                     HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_HI: tl.constexpr,
                     PDL: tl.constexpr = False):
    if PDL:  # programmatic dependent launch (the fused decode step): start early, wait before any access
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    i_p = tl.program_id(2)
    i_g = i_h // (H // G)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p = o_p < P
    m_n = o_n < N
    m = m_p[:, None] & m_n[None, :]
    d = tl.load(dt_ptr + i_b * s_dt_b + i_h * s_dt_h).to(tl.float32)
    if HAS_BIAS:
        d += tl.load(bias_ptr + i_h).to(tl.float32)
    d = _dt_proc(d, lo, hi, SOFTPLUS, HAS_HI)
    dA = tl.exp(tl.minimum(d * tl.load(A_ptr + i_h).to(tl.float32), 0.0))
    p_st = state_ptr + i_b * s_st_b + i_h * s_st_h + o_p[:, None] * s_st_p + o_n[None, :]
    h = tl.load(p_st, mask=m, other=0.0)
    x = tl.load(x_ptr + i_b * s_x_b + i_h * s_x_h + o_p, mask=m_p, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + i_b * s_B_b + i_g * s_B_g + o_n, mask=m_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + i_b * s_C_b + i_g * s_C_g + o_n, mask=m_n, other=0.0).to(tl.float32)
    h = h * dA + (d * x)[:, None] * Bv[None, :]
    tl.store(p_st, h, mask=m)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        if D_PER_CHAN:
            y += tl.load(D_ptr + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + i_h).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + i_b * s_z_b + i_h * s_z_h + o_p, mask=m_p, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(y_ptr + (i_b * H + i_h) * P + o_p, y.to(y_ptr.dtype.element_ty), mask=m_p)


def ssd_step_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, pdl=False):
    """Kernel path of ssd_step (arguments already validated). pdl: launch with programmatic dependent
    launch (sm_90+, CUDA only; the decode step's chain of kernels)."""
    lo, hi = dt_limit
    b, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    BN = max(16, next_pow2(N))
    # 2K fp32 elements (8 KiB) per program: many programs in flight, no register pressure
    BP = max(1, min(next_pow2(P), 2048 // BN))
    y = new_empty((b, H, P), dtype=x.dtype, device=x.device)
    zz = z if z is not None else x
    _ssd_step_kernel[(b, H, triton.cdiv(P, BP))](
        state, x, dt, A, B, C, D if D is not None else A, zz, dt_bias if dt_bias is not None else A, y,
        H, G, P, N, float(lo), float(hi) if hi != float("inf") else 0.0,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), zz.stride(0), zz.stride(1),
        BP=BP, BN=BN, HAS_D=D is not None, D_PER_CHAN=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_HI=hi != float("inf"), PDL=pdl, num_warps=4,
        **({"launch_pdl": True} if pdl else {}))
    return y


@torch.library.custom_op("hybridna::ssd_step", mutates_args=("state",))
def ssd_step_op(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                dt_softplus: bool, lo: float, hi: float) -> torch.Tensor:
    """Registered form of ssd_step_fwd for torch.compile (state is mutated in place)."""
    return ssd_step_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, (lo, hi))


@ssd_step_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, lo, hi):
    return x.new_empty(x.shape)
