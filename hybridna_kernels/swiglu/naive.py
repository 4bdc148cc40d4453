"""Plain PyTorch reference of the SwiGLU activation (the CPU path and the tests' ground truth)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(h: torch.Tensor) -> torch.Tensor:
    """silu(g) * u of h = [g | u] (..., 2F), computed in fp32 (fp64 for fp64 h), returned in h's dtype
    (..., F)."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    g, u = h.to(acc).chunk(2, dim=-1)
    return (F.silu(g) * u).to(h.dtype)
