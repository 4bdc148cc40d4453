"""Fused SwiGLU activation `swiglu(h)` = silu(g) * u of the gate_up output h = [g | u].

Dispatch (DESIGN.md): the Triton kernels on CUDA, the same kernels through Triton's interpreter on
CPU when TRITON_INTERPRET=1, otherwise the pure-PyTorch reference of naive.py; fp64 runs the
reference. Only h is saved for the backward, which recomputes silu(g) and writes dg and du into one
(..., 2F) buffer. See README.md."""
from __future__ import annotations

import torch

from ..utils import check_tensor, use_kernel
from .naive import swiglu_ref
from .kernels import swiglu_bwd, swiglu_fn, swiglu_fwd

__all__ = ["swiglu", "swiglu_ref", "swiglu_fwd", "swiglu_bwd"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: a = silu(g) * u with h = [g | u], computed in fp32, rounded once to h's dtype.

    Args:
        h: (..., 2F) fp32 / fp16 / bf16 (fp64 runs the reference); the last dim should have unit
            stride (other layouts are copied), the other dims may be strided (a slice is read in place
            when its leading dims merge into rows).

    Returns:
        a (..., F) in h's dtype. Differentiable in h: dh = [dg | du] in one (..., 2F) buffer,
        dg = da * u * sig(g) * (1 + g * (1 - sig(g))), du = da * silu(g).
    """
    check_tensor("h", h, dtypes=_DTYPES)
    if h.dim() < 1 or h.shape[-1] % 2:
        raise ValueError(f"h: expected (..., 2F) with an even last dim, got shape {tuple(h.shape)}")
    if not use_kernel(h) or h.dtype == torch.float64 or h.numel() == 0:
        return swiglu_ref(h)
    return swiglu_fn(h)
