"""Fused norms of the model layer: `rms_norm` (optionally fused with the residual add before it) and
`gated_rms_norm` (Mamba2's norm(y * silu(z)) * w).

Dispatch (DESIGN.md): Triton kernels on CUDA, the same kernels through Triton's interpreter on CPU
when TRITON_INTERPRET=1, otherwise the pure-PyTorch references of naive.py. fp64 runs the reference.
Both normalise in fp32 and write their output once, in out_dtype: under bf16 autocast the model asks
for bf16, so no fp32 copy of a normalised activation is written or kept for the backward, which
recomputes it from the saved input and the per-row rstd. See README.md.
"""
from __future__ import annotations

import torch

from ..utils import check_same_device, check_tensor, use_kernel
from .linear import GatedRMSNormLinearFn, RMSNormLinearFn
from .naive import gated_rms_norm_linear_ref, gated_rms_norm_ref, rms_norm_linear_ref, rms_norm_ref
from .rms import _is_compiling, gated_rms_norm_fn, rms_norm_fn

__all__ = ["rms_norm", "gated_rms_norm", "rms_norm_linear", "gated_rms_norm_linear", "rms_norm_ref",
           "gated_rms_norm_ref", "rms_norm_linear_ref", "gated_rms_norm_linear_ref"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def rms_norm(x, weight, eps: float = 1e-5, *, delta=None, out_dtype=None):
    """RMSNorm over the last dim, optionally of x + delta (the pre-norm block's residual add).

    s = x + delta (rounded to x's dtype) when delta is given, else s = x;
    y = s * rsqrt(mean(s^2) + eps) * weight, computed in fp32, rounded once to out_dtype.

    Args:
        x: (..., N) fp32 / fp16 / bf16 (fp64 runs the reference), unit stride on the last dim
            preferred (other layouts are copied).
        weight: (N,).
        eps: added to the mean square.
        delta: optional (..., N) like x, any float dtype (for example the bf16 output of a mixer
            added to an fp32 residual stream).
        out_dtype: dtype of y (default x.dtype).

    Returns:
        y (..., N) in out_dtype; with delta, the tuple (y, s) where s (x.dtype) is the new residual.
    Differentiable in x, delta and weight.
    """
    check_tensor("x", x, dtypes=_DTYPES)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x: expected (..., N) with N >= 1, got shape {tuple(x.shape)}")
    N = x.shape[-1]
    check_tensor("weight", weight, shape=(N,), dtypes=_DTYPES)
    if delta is not None:
        check_tensor("delta", delta, shape=tuple(x.shape), dtypes=_DTYPES)
    check_same_device(x=x, weight=weight, delta=delta)
    if not use_kernel(x) or torch.float64 in (x.dtype, weight.dtype) or x.numel() == 0:
        return rms_norm_ref(x, weight, eps, delta, out_dtype)
    return rms_norm_fn(x, weight, float(eps), delta, out_dtype)


def gated_rms_norm(y, z, weight, eps: float = 1e-5, *, group_size=None, out_dtype=None):
    """Gated RMSNorm of Mamba2 (norm_before_gate=False): g = y * silu(z),
    out = g * rsqrt(mean over the group(g^2) + eps) * weight, per group of group_size channels.

    Args:
        y: (..., N) fp32 / fp16 / bf16 (fp64 runs the reference).
        z: (..., N) like y (any dtype of those; a strided view such as a slice of a projection's
            output is read in place when its last dim has unit stride).
        weight: (N,).
        group_size: channels per normalisation group, dividing N (default N: one group).
        out_dtype: dtype of out (default y.dtype).

    Returns:
        out (..., N) in out_dtype. Differentiable in y, z and weight.
    """
    check_tensor("y", y, dtypes=_DTYPES)
    if y.dim() < 1 or y.shape[-1] < 1:
        raise ValueError(f"y: expected (..., N) with N >= 1, got shape {tuple(y.shape)}")
    N = y.shape[-1]
    check_tensor("z", z, shape=tuple(y.shape), dtypes=_DTYPES)
    check_tensor("weight", weight, shape=(N,), dtypes=_DTYPES)
    gs = int(group_size or N)
    if gs < 1 or N % gs:
        raise ValueError(f"group_size: expected a divisor of N = {N}, got {group_size}")
    check_same_device(y=y, z=z, weight=weight)
    if not use_kernel(y) or torch.float64 in (y.dtype, z.dtype, weight.dtype) or y.numel() == 0:
        return gated_rms_norm_ref(y, z, weight, eps, gs, out_dtype)
    return gated_rms_norm_fn(y, z, weight, float(eps), gs, out_dtype)


def rms_norm_linear(x, norm_weight, linear_weight, eps: float = 1e-5, *, delta=None, out_dtype=None):
    """`F.linear(rms_norm(x, norm_weight, eps, delta=delta, out_dtype=out_dtype), linear_weight)`
    (bias-free), the normed activation recomputed in the backward instead of saved.

    Args: as rms_norm; linear_weight (out_features, N), cast to the normed activation's dtype.
    Returns: out (..., out_features) in that dtype; with delta, (out, x + delta).
    Differentiable in x, delta, norm_weight and linear_weight."""
    check_tensor("x", x, dtypes=_DTYPES)
    N = x.shape[-1]
    check_tensor("linear_weight", linear_weight, shape=(None, N), dtypes=_DTYPES)
    if (not use_kernel(x) or torch.float64 in (x.dtype, norm_weight.dtype) or x.numel() == 0
            or _is_compiling()):  # compiled: the two ops, and the compiler chooses what to save
        r = rms_norm(x, norm_weight, eps, delta=delta, out_dtype=out_dtype)
        h, s = (r, None) if delta is None else r
        out = torch.nn.functional.linear(h, linear_weight.to(h.dtype))
        return out if delta is None else (out, s)
    check_tensor("norm_weight", norm_weight, shape=(N,), dtypes=_DTYPES)
    if delta is not None:
        check_tensor("delta", delta, shape=tuple(x.shape), dtypes=_DTYPES)
    check_same_device(x=x, norm_weight=norm_weight, linear_weight=linear_weight, delta=delta)
    return RMSNormLinearFn.apply(x, delta, norm_weight, linear_weight, float(eps), out_dtype or x.dtype)


def gated_rms_norm_linear(y, z, norm_weight, linear_weight, eps: float = 1e-5, *, group_size=None, out_dtype=None):
    """`F.linear(gated_rms_norm(y, z, norm_weight, eps, ...), linear_weight)` (bias-free), the normed
    activation recomputed in the backward instead of saved. Differentiable in y, z and both weights."""
    check_tensor("y", y, dtypes=_DTYPES)
    N = y.shape[-1]
    check_tensor("linear_weight", linear_weight, shape=(None, N), dtypes=_DTYPES)
    if (not use_kernel(y) or torch.float64 in (y.dtype, z.dtype, norm_weight.dtype) or y.numel() == 0
            or _is_compiling()):
        h = gated_rms_norm(y, z, norm_weight, eps, group_size=group_size, out_dtype=out_dtype)
        return torch.nn.functional.linear(h, linear_weight.to(h.dtype))
    check_tensor("z", z, shape=tuple(y.shape), dtypes=_DTYPES)
    check_tensor("norm_weight", norm_weight, shape=(N,), dtypes=_DTYPES)
    gs = int(group_size or N)
    if gs < 1 or N % gs:
        raise ValueError(f"group_size: expected a divisor of N = {N}, got {group_size}")
    check_same_device(y=y, z=z, norm_weight=norm_weight, linear_weight=linear_weight)
    return GatedRMSNormLinearFn.apply(y, z, norm_weight, linear_weight, float(eps), gs, out_dtype or y.dtype)
