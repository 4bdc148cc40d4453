"""Triton kernels of the fused norms: RMSNorm with an optional residual add, and Mamba2's gated
RMSNorm norm(y * silu(z)) * w. One pass forward (one read of each input, one write of each output,
plus a per-row rstd), one pass backward that recomputes the normalised input from the saved input
and rstd instead of keeping fp32 intermediates. The weight gradient is summed per program in fp32
(rows split over a few hundred programs) and reduced over programs at the end."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..utils import cdiv, interpret_mode, new_empty, next_pow2, num_sms
from ..utils import rows_view as _rows


# ---- RMSNorm (+ residual add) ---------------------------------------------------------------------

@triton.jit
def _rms_fwd_kernel(X, DL, W, Y, S, RSTD, N, sx, sd, sy, ss, eps,
                    BN: tl.constexpr, HAS_DELTA: tl.constexpr, STORE_S: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    b_s = tl.load(X + row * sx + o_n, mask=m_n, other=0.0)
    if HAS_DELTA:
        b_s += tl.load(DL + row * sd + o_n, mask=m_n, other=0.0).to(b_s.dtype)
    if STORE_S:
        tl.store(S + row * ss + o_n, b_s, mask=m_n)
    b_s = b_s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(b_s * b_s, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    b_w = tl.load(W + o_n, mask=m_n, other=0.0).to(tl.float32)
    tl.store(Y + row * sy + o_n, (b_s * rstd * b_w).to(Y.dtype.element_ty), mask=m_n)


@triton.jit
def _rows_bwd_setup(W, N, rpp, BN: tl.constexpr, GROUPED: tl.constexpr):
    """A backward program's set-up: it walks rows [r0, r0 + rpp) over the columns col = g N + [0, N) (group g =
    program_id(1) when GROUPED, else 0) and sums the weight gradient of those columns over its rows.
    Returns (pid, g, o_n, m_n, col, w, dw = 0, r0), w and dw fp32."""
    pid = tl.program_id(0)
    if GROUPED:
        g = tl.program_id(1)
    else:
        g = 0
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    col = g * N + o_n
    b_w = tl.load(W + col, mask=m_n, other=0.0).to(tl.float32)
    return pid, g, o_n, m_n, col, b_w, tl.zeros([BN], dtype=tl.float32), pid.to(tl.int64) * rpp


@triton.jit
def _rms_bwd_kernel(S, W, RSTD, DY, DSI, DX, DD, DWP, Y, M, N, rpp, ss, sdy, sdyc, sdsi, sdsic, sdx, sdd, sy,
                    BN: tl.constexpr, HAS_DSI: tl.constexpr, HAS_DD: tl.constexpr, STORE_Y: tl.constexpr):
    pid, _, o_n, m_n, _, b_w, b_dw, r0 = _rows_bwd_setup(W, N, rpp, BN, False)
    for i in range(0, rpp):
        row = r0 + i
        if row < M:
            b_s = tl.load(S + row * ss + o_n, mask=m_n, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            b_dy = tl.load(DY + row * sdy + o_n * sdyc, mask=m_n, other=0.0).to(tl.float32)
            b_xh = b_s * rstd
            b_wdy = b_dy * b_w
            c = tl.sum(b_xh * b_wdy, axis=0) / N
            b_dx = (b_wdy - b_xh * c) * rstd
            if HAS_DSI:
                b_dx += tl.load(DSI + row * sdsi + o_n * sdsic, mask=m_n, other=0.0).to(tl.float32)
            tl.store(DX + row * sdx + o_n, b_dx.to(DX.dtype.element_ty), mask=m_n)
            if HAS_DD:
                tl.store(DD + row * sdd + o_n, b_dx.to(DD.dtype.element_ty), mask=m_n)
            b_dw += b_dy * b_xh
            if STORE_Y:  # the forward's output again, bit for bit (same operations on the same values)
                tl.store(Y + row * sy + o_n, (b_xh * b_w).to(Y.dtype.element_ty), mask=m_n)
    tl.store(DWP + pid.to(tl.int64) * N + o_n, b_dw, mask=m_n)


def _bn(N: int) -> int:
    return next_pow2(N)


def _warps(BN: int) -> int:
    return min(16, max(1, BN // 256))


def _nprog(M: int, device) -> int:
    """Programs of a backward pass: each sums its rows' weight gradient, so few enough that the final
    (nprog, N) reduction is small, enough to fill the GPU."""
    if interpret_mode() or device.type != "cuda":
        return max(1, min(M, 4))
    return max(1, min(M, 8 * num_sms(device)))


def rms_norm_fwd(x, weight, eps: float, delta, out_dtype, store_s: bool):
    """Returns y (M-major like x), s (x + delta, or None when not stored), rstd (M,) fp32."""
    N = x.shape[-1]
    x2 = _rows(x, N)
    M = x2.shape[0]
    d2 = _rows(delta, N) if delta is not None else None
    y = new_empty((M, N), dtype=out_dtype, device=x.device)
    s = new_empty((M, N), dtype=x.dtype, device=x.device) if store_s else None
    rstd = new_empty((M,), dtype=torch.float32, device=x.device)
    BN = _bn(N)
    if M > 0:
        _rms_fwd_kernel[(M,)](
            x2, d2 if d2 is not None else x2, weight, y, s if s is not None else y, rstd, N,
            x2.stride(0), d2.stride(0) if d2 is not None else 0, y.stride(0), s.stride(0) if s is not None else 0,
            float(eps), BN=BN, HAS_DELTA=d2 is not None, STORE_S=s is not None, num_warps=_warps(BN))
    shape = x.shape
    return y.view(shape), (s.view(shape) if s is not None else None), rstd


def rms_norm_bwd(s, weight, rstd, dy, ds_in, x_dtype, delta_dtype, y_dtype=None):
    """dx (x_dtype), dd (delta_dtype, or None when no delta / same dtype as dx), dw (weight dtype).
    With y_dtype, also y: the forward's output recomputed in the same pass (bit-equal to
    rms_norm_fwd's), for the weight gradient of a linear layer after the norm."""
    N = s.shape[-1]
    s2, dy2 = _rows(s, N), _rows(dy, N, any_col_stride=True)
    M = s2.shape[0]
    dsi = _rows(ds_in, N, any_col_stride=True) if ds_in is not None else None
    dx = new_empty((M, N), dtype=x_dtype, device=s.device)
    dd = None
    if delta_dtype is not None and delta_dtype != x_dtype:
        dd = new_empty((M, N), dtype=delta_dtype, device=s.device)
    nprog = _nprog(M, s.device)
    rpp = cdiv(M, nprog) if M > 0 else 0
    dwp = new_empty((nprog, N), dtype=torch.float32, device=s.device)
    y = new_empty((M, N), dtype=y_dtype, device=s.device) if y_dtype is not None else None
    BN = _bn(N)
    _rms_bwd_kernel[(nprog,)](
        s2, weight, rstd, dy2, dsi if dsi is not None else dy2, dx, dd if dd is not None else dx, dwp,
        y if y is not None else dx,
        M, N, rpp, s2.stride(0), dy2.stride(0), dy2.stride(1), dsi.stride(0) if dsi is not None else 0,
        dsi.stride(1) if dsi is not None else 0, dx.stride(0),
        dd.stride(0) if dd is not None else 0, y.stride(0) if y is not None else 0,
        BN=BN, HAS_DSI=dsi is not None, HAS_DD=dd is not None, STORE_Y=y is not None, num_warps=_warps(BN))
    dw = dwp.sum(0).to(weight.dtype)
    out = dx.view(s.shape), (dd.view(s.shape) if dd is not None else None), dw
    return out if y is None else (*out, y.view(s.shape))


def _out_dtype(x, out_dtype):
    return out_dtype if out_dtype is not None else x.dtype


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, weight, eps, out_dtype):
        y, s, rstd = rms_norm_fwd(x, weight, eps, delta, _out_dtype(x, out_dtype), store_s=delta is not None)
        ctx.save_for_backward(s if s is not None else x, weight, rstd)
        ctx.has_delta = delta is not None
        ctx.dtypes = (x.dtype, delta.dtype if delta is not None else None)
        if s is None:
            return y
        return y, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, ds=None):
        s, weight, rstd = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(s)
        dx, dd, dw = rms_norm_bwd(s, weight, rstd, dy, ds, *ctx.dtypes)
        ddelta = (dd if dd is not None else dx) if ctx.has_delta else None
        return dx, ddelta, dw, None, None


# ---- gated RMSNorm: norm(y * silu(z)) * w, per group ------------------------------------------------

@triton.jit
def _gated_fwd_kernel(Yin, Z, W, O, RSTD, G, GS, sy, sz, so, eps, BN: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    o_n = tl.arange(0, BN)
    m_n = o_n < GS
    col = g * GS + o_n
    b_y = tl.load(Yin + row * sy + col, mask=m_n, other=0.0).to(tl.float32)
    b_z = tl.load(Z + row * sz + col, mask=m_n, other=0.0).to(tl.float32)
    b_g = b_y * b_z * tl.sigmoid(b_z)
    rstd = 1.0 / tl.sqrt(tl.sum(b_g * b_g, axis=0) / GS + eps)
    tl.store(RSTD + row * G + g, rstd)
    b_w = tl.load(W + col, mask=m_n, other=0.0).to(tl.float32)
    tl.store(O + row * so + col, (b_g * rstd * b_w).to(O.dtype.element_ty), mask=m_n)


@triton.jit
def _gated_bwd_kernel(Yin, Z, W, RSTD, DO, DY, DZ, DWP, O, M, G, GS, rpp, sy, sz, sdo, sdoc, sdy, sdz, so,
                      BN: tl.constexpr, STORE_O: tl.constexpr):
    pid, g, o_n, m_n, col, b_w, b_dw, r0 = _rows_bwd_setup(W, GS, rpp, BN, True)
    for i in range(0, rpp):
        row = r0 + i
        if row < M:
            b_y = tl.load(Yin + row * sy + col, mask=m_n, other=0.0).to(tl.float32)
            b_z = tl.load(Z + row * sz + col, mask=m_n, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row * G + g)
            b_do = tl.load(DO + row * sdo + col * sdoc, mask=m_n, other=0.0).to(tl.float32)
            b_sig = tl.sigmoid(b_z)
            b_silu = b_z * b_sig
            b_xh = b_y * b_silu * rstd
            b_wdo = b_do * b_w
            c = tl.sum(b_xh * b_wdo, axis=0) / GS
            b_dg = (b_wdo - b_xh * c) * rstd
            tl.store(DY + row * sdy + col, (b_dg * b_silu).to(DY.dtype.element_ty), mask=m_n)
            b_dz = b_dg * b_y * b_sig * (1.0 + b_z * (1.0 - b_sig))
            tl.store(DZ + row * sdz + col, b_dz.to(DZ.dtype.element_ty), mask=m_n)
            b_dw += b_do * b_xh
            if STORE_O:  # the forward's output again, bit for bit (its operations in its order)
                b_g = b_y * b_z * b_sig
                tl.store(O + row * so + col, (b_g * rstd * b_w).to(O.dtype.element_ty), mask=m_n)
    tl.store(DWP + pid.to(tl.int64) * G * GS + col, b_dw, mask=m_n)


def gated_rms_norm_fwd(y, z, weight, eps: float, group_size: int, out_dtype):
    N = y.shape[-1]
    y2, z2 = _rows(y, N), _rows(z, N)
    M, G = y2.shape[0], N // group_size
    o = new_empty((M, N), dtype=out_dtype, device=y.device)
    rstd = new_empty((M, G), dtype=torch.float32, device=y.device)
    BN = _bn(group_size)
    if M > 0:
        _gated_fwd_kernel[(M, G)](y2, z2, weight, o, rstd, G, group_size, y2.stride(0), z2.stride(0), o.stride(0),
                                  float(eps), BN=BN, num_warps=_warps(BN))
    return o.view(y.shape), rstd


def gated_rms_norm_bwd(y, z, weight, rstd, do, group_size: int, out_dtype=None, dz_out=None):
    """dy, dz, dw; with out_dtype also the forward's output recomputed in the same pass (bit-equal to
    gated_rms_norm_fwd's), for the weight gradient of a linear layer after the norm. dz_out: optional
    preallocated dz like z (rows of unit column stride; utils.GradSlab), returned as dz."""
    N = y.shape[-1]
    y2, z2, do2 = _rows(y, N), _rows(z, N), _rows(do, N, any_col_stride=True)
    M, G = y2.shape[0], N // group_size
    dy = new_empty((M, N), dtype=y.dtype, device=y.device)
    dz = None
    if dz_out is not None:
        try:
            dz = dz_out.view(-1, N)  # never a copy: the kernel must write into dz_out itself
        except RuntimeError:
            dz_out = None
    if dz is None:
        dz = new_empty((M, N), dtype=z.dtype, device=y.device)
    nprog = max(1, _nprog(M, y.device) // G)
    rpp = cdiv(M, nprog) if M > 0 else 0
    dwp = new_empty((nprog, N), dtype=torch.float32, device=y.device)
    o = new_empty((M, N), dtype=out_dtype, device=y.device) if out_dtype is not None else None
    BN = _bn(group_size)
    _gated_bwd_kernel[(nprog, G)](y2, z2, weight, rstd, do2, dy, dz, dwp, o if o is not None else dy, M, G, group_size,
                                  rpp, y2.stride(0), z2.stride(0), do2.stride(0), do2.stride(1), dy.stride(0),
                                  dz.stride(0), o.stride(0) if o is not None else 0,
                                  BN=BN, STORE_O=o is not None, num_warps=_warps(BN))
    out = dy.view(y.shape), (dz.view(z.shape) if dz_out is None else dz_out), dwp.sum(0).to(weight.dtype)
    return out if o is None else (*out, o.view(y.shape))


class GatedRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps, group_size, out_dtype):
        o, rstd = gated_rms_norm_fwd(y, z, weight, eps, group_size, _out_dtype(y, out_dtype))
        ctx.save_for_backward(y, z, weight, rstd)
        ctx.group_size = group_size
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        y, z, weight, rstd = ctx.saved_tensors
        dy, dz, dw = gated_rms_norm_bwd(y, z, weight, rstd, do, ctx.group_size)
        return dy, dz, dw, None, None, None


# ---- torch.library registration: opaque nodes under torch.compile (eager keeps the Functions) ------
_EMPTY = (0,)


@torch.library.custom_op("hybridna::rms_norm_fwd", mutates_args=())
def _rms_fwd_op(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, s, rstd = rms_norm_fwd(x, weight, eps, delta, out_dtype, store_s=delta is not None)
    return y, (s if s is not None else x.new_empty(_EMPTY)), rstd


@_rms_fwd_op.register_fake
def _rms_fwd_fake(x, delta, weight, eps, out_dtype):
    M = x.numel() // x.shape[-1] if x.shape[-1] else 0
    s = x.new_empty(x.shape) if delta is not None else x.new_empty(_EMPTY)
    return x.new_empty(x.shape, dtype=out_dtype), s, x.new_empty((M,), dtype=torch.float32)


@torch.library.custom_op("hybridna::rms_norm_bwd", mutates_args=())
def _rms_bwd_op(s: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor,
                ds: Optional[torch.Tensor], x_dtype: torch.dtype,
                delta_dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dd, dw = rms_norm_bwd(s, weight, rstd, dy, ds, x_dtype, delta_dtype)
    return dx, (dd if dd is not None else s.new_empty(_EMPTY)), dw


@_rms_bwd_op.register_fake
def _rms_bwd_fake(s, weight, rstd, dy, ds, x_dtype, delta_dtype):
    dd = s.new_empty(s.shape, dtype=delta_dtype) if delta_dtype not in (None, x_dtype) else s.new_empty(_EMPTY)
    return s.new_empty(s.shape, dtype=x_dtype), dd, weight.new_empty(weight.shape)


def _rms_setup(ctx, inputs, output):
    x, delta, weight, eps, out_dtype = inputs
    y, s, rstd = output
    ctx.save_for_backward(s if delta is not None else x, weight, rstd)
    ctx.dtypes = (x.dtype, delta.dtype if delta is not None else None)
    ctx.has_delta = delta is not None


def _rms_backward(ctx, dy, ds, drstd):
    s, weight, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(s)
    dx, dd, dw = _rms_bwd_op(s, weight, rstd, dy, ds if ctx.has_delta else None, *ctx.dtypes)
    ddelta = None
    if ctx.has_delta:
        ddelta = dd if ctx.dtypes[1] != ctx.dtypes[0] else dx
    return dx, ddelta, dw, None, None


_rms_fwd_op.register_autograd(_rms_backward, setup_context=_rms_setup)


@torch.library.custom_op("hybridna::gated_rms_norm_fwd", mutates_args=())
def _gated_fwd_op(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int,
                  out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    return gated_rms_norm_fwd(y, z, weight, eps, group_size, out_dtype)


@_gated_fwd_op.register_fake
def _gated_fwd_fake(y, z, weight, eps, group_size, out_dtype):
    N = y.shape[-1]
    M = y.numel() // N if N else 0
    return y.new_empty(y.shape, dtype=out_dtype), y.new_empty((M, N // group_size), dtype=torch.float32)


@torch.library.custom_op("hybridna::gated_rms_norm_bwd", mutates_args=())
def _gated_bwd_op(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, do: torch.Tensor,
                  group_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_rms_norm_bwd(y, z, weight, rstd, do, group_size)


@_gated_bwd_op.register_fake
def _gated_bwd_fake(y, z, weight, rstd, do, group_size):
    return y.new_empty(y.shape), z.new_empty(z.shape), weight.new_empty(weight.shape)


def _gated_setup(ctx, inputs, output):
    y, z, weight, eps, group_size, out_dtype = inputs
    ctx.save_for_backward(y, z, weight, output[1])
    ctx.group_size = group_size


def _gated_backward(ctx, do, drstd):
    y, z, weight, rstd = ctx.saved_tensors
    dy, dz, dw = _gated_bwd_op(y, z, weight, rstd, do, ctx.group_size)
    return dy, dz, dw, None, None, None


_gated_fwd_op.register_autograd(_gated_backward, setup_context=_gated_setup)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


def rms_norm_fn(x, weight, eps, delta, out_dtype):
    """Differentiable kernel path of rms_norm (inputs validated)."""
    if _is_compiling():
        y, s, _ = _rms_fwd_op(x, delta, weight, eps, _out_dtype(x, out_dtype))
        return y if delta is None else (y, s)
    return RMSNormFn.apply(x, delta, weight, eps, out_dtype)


def gated_rms_norm_fn(y, z, weight, eps, group_size, out_dtype):
    """Differentiable kernel path of gated_rms_norm (inputs validated)."""
    if _is_compiling():
        return _gated_fwd_op(y, z, weight, eps, group_size, _out_dtype(y, out_dtype))[0]
    return GatedRMSNormFn.apply(y, z, weight, eps, group_size, out_dtype)
