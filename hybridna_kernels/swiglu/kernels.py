"""Triton kernels of the SwiGLU activation a = silu(g) * u of h = [g | u] (..., 2F).

One pass each way, fp32 math, one rounding to h's dtype. Grid: rows x blocks of BF columns; a
program reads its block of g and of u (the same row of h, F apart) and writes one block of a, or
in the backward the same blocks of dg and du into one (..., 2F) gradient buffer. Only h is saved:
silu(g) is recomputed in the backward."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import cdiv, new_empty, next_pow2
from ..utils import rows_view as _rows


@triton.jit
def _gate_up_block(H, F, sh, BF: tl.constexpr):
    """This program's row and column block of h = [g | u]: (row, o_f, m_f, g, u), g and u in fp32."""
    row = tl.program_id(0).to(tl.int64)
    o_f = tl.program_id(1) * BF + tl.arange(0, BF)
    m_f = o_f < F
    p_g = H + row * sh + o_f
    b_g = tl.load(p_g, mask=m_f, other=0.0).to(tl.float32)
    b_u = tl.load(p_g + F, mask=m_f, other=0.0).to(tl.float32)
    return row, o_f, m_f, b_g, b_u


@triton.jit
def _swiglu_fwd_kernel(H, O, F, sh, so, BF: tl.constexpr):
    row, o_f, m_f, b_g, b_u = _gate_up_block(H, F, sh, BF)
    b_a = b_g * tl.sigmoid(b_g) * b_u
    tl.store(O + row * so + o_f, b_a.to(O.dtype.element_ty), mask=m_f)


@triton.jit
def _swiglu_bwd_kernel(H, DO, DH, A, F, sh, sdo, sdoc, sdh, sa, BF: tl.constexpr, STORE_A: tl.constexpr):
    row, o_f, m_f, b_g, b_u = _gate_up_block(H, F, sh, BF)
    b_do = tl.load(DO + row * sdo + o_f.to(tl.int64) * sdoc, mask=m_f, other=0.0).to(tl.float32)
    b_sig = tl.sigmoid(b_g)
    b_dg = b_do * b_u * b_sig * (1.0 + b_g * (1.0 - b_sig))
    b_du = b_do * b_g * b_sig
    p_dg = DH + row * sdh + o_f
    tl.store(p_dg, b_dg.to(DH.dtype.element_ty), mask=m_f)
    tl.store(p_dg + F, b_du.to(DH.dtype.element_ty), mask=m_f)
    if STORE_A:  # the forward's output again (for the gradient of the next matmul's weight)
        tl.store(A + row * sa + o_f, (b_g * b_sig * b_u).to(A.dtype.element_ty), mask=m_f)


def _bf(F: int) -> int:
    # Column block of a program: a row of up to 1024 channels in one program, wider rows split over
    # the second grid dimension (an elementwise op: no reduction needs the whole row).
    return min(1024, next_pow2(F))


def _warps(BF: int) -> int:
    return min(4, max(1, BF // 256))


def swiglu_fwd(h: torch.Tensor) -> torch.Tensor:
    """a = silu(g) * u (..., F) in h's dtype, h = [g | u] (..., 2F) (inputs validated)."""
    F = h.shape[-1] // 2
    h2 = _rows(h, 2 * F)
    M = h2.shape[0]
    out = new_empty((M, F), dtype=h.dtype, device=h.device)
    if M > 0 and F > 0:
        BF = _bf(F)
        _swiglu_fwd_kernel[(M, cdiv(F, BF))](h2, out, F, h2.stride(0), out.stride(0), BF=BF, num_warps=_warps(BF))
    return out.view(*h.shape[:-1], F)


def swiglu_bwd(h: torch.Tensor, dout: torch.Tensor, return_a: bool = False):
    """dh = [dg | du] (..., 2F) contiguous, in h's dtype, from the output gradient dout (..., F)
    (any strides: a stride-0 expanded gradient is read in place). With return_a, (dh, a): the same
    pass also writes a = silu(g) * u again (bit-equal to swiglu_fwd's), which the backward of a
    following matmul needs for its weight gradient, so h is read once instead of twice."""
    F = h.shape[-1] // 2
    h2 = _rows(h, 2 * F)
    do2 = _rows(dout, F, any_col_stride=True)
    M = h2.shape[0]
    dh = new_empty((M, 2 * F), dtype=h.dtype, device=h.device)
    a = new_empty((M, F), dtype=h.dtype, device=h.device) if return_a else None
    if M > 0 and F > 0:
        BF = _bf(F)
        _swiglu_bwd_kernel[(M, cdiv(F, BF))](h2, do2, dh, a if a is not None else dh, F, h2.stride(0), do2.stride(0),
                                              do2.stride(1), dh.stride(0), a.stride(0) if a is not None else 0,
                                              BF=BF, STORE_A=return_a, num_warps=_warps(BF))
    if return_a:
        return dh.view(h.shape), a.view(*h.shape[:-1], F)
    return dh.view(h.shape)


class SwiGLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return swiglu_fwd(h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        (h,) = ctx.saved_tensors
        return swiglu_bwd(h, dout)


# ---- torch.library registration: an opaque node under torch.compile (eager keeps the Function) ----

@torch.library.custom_op("hybridna::swiglu_fwd", mutates_args=())
def _swiglu_fwd_op(h: torch.Tensor) -> torch.Tensor:
    return swiglu_fwd(h)


@_swiglu_fwd_op.register_fake
def _swiglu_fwd_fake(h):
    return h.new_empty((*h.shape[:-1], h.shape[-1] // 2))


@torch.library.custom_op("hybridna::swiglu_bwd", mutates_args=())
def _swiglu_bwd_op(h: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    return swiglu_bwd(h, dout)


@_swiglu_bwd_op.register_fake
def _swiglu_bwd_fake(h, dout):
    return h.new_empty(h.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dout):
    (h,) = ctx.saved_tensors
    return _swiglu_bwd_op(h, dout)


_swiglu_fwd_op.register_autograd(_backward, setup_context=_setup)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


def swiglu_fn(h: torch.Tensor) -> torch.Tensor:
    """Differentiable kernel path of swiglu (inputs validated)."""
    if _is_compiling():
        return _swiglu_fwd_op(h)
    return SwiGLUFn.apply(h)
