"""Plain PyTorch references of the norm ops (the CPU path of the model and the tests' ground truth).

Both compute in fp32 (fp64 for fp64 inputs) and round once, to out_dtype, at the end."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rms_norm_ref(x, weight, eps=1e-5, delta=None, out_dtype=None):
    """s = x + delta (in x's dtype) when delta is given, else s = x; y = s / rms(s) * weight over the
    last dim, in out_dtype (default x.dtype). Returns y, or (y, s) when delta is given."""
    s = x if delta is None else x + delta.to(x.dtype)
    sf = s.to(_acc(s))
    y = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(sf.dtype)
    y = y.to(out_dtype or x.dtype)
    return y if delta is None else (y, s)


def gated_rms_norm_ref(y, z, weight, eps=1e-5, group_size=None, out_dtype=None):
    """g = y * silu(z); out = g / rms(g) * weight, the rms taken per group of group_size channels of
    the last dim (default: all of it), in out_dtype (default y.dtype). Mamba2's gated RMSNorm with
    norm_before_gate=False."""
    N = y.shape[-1]
    gs = group_size or N
    acc = _acc(y)
    g = y.to(acc) * F.silu(z.to(acc))
    gg = g.unflatten(-1, (N // gs, gs))
    out = gg * torch.rsqrt(gg.pow(2).mean(-1, keepdim=True) + eps)
    out = out.flatten(-2) * weight.to(acc)
    return out.to(out_dtype or y.dtype)


def rms_norm_linear_ref(x, norm_weight, linear_weight, eps=1e-5, delta=None, out_dtype=None):
    """linear(rms_norm(x [+ delta])) with the normed activation in out_dtype; returns out, or
    (out, x + delta) when delta is given."""
    r = rms_norm_ref(x, norm_weight, eps, delta, out_dtype)
    h, s = (r, None) if delta is None else r
    out = F.linear(h, linear_weight.to(h.dtype))
    return out if delta is None else (out, s)


def gated_rms_norm_linear_ref(y, z, norm_weight, linear_weight, eps=1e-5, group_size=None, out_dtype=None):
    """linear(gated_rms_norm(y, z)), the normed activation in out_dtype."""
    h = gated_rms_norm_ref(y, z, norm_weight, eps, group_size, out_dtype)
    return F.linear(h, linear_weight.to(h.dtype))
