"""Plain PyTorch references for the causal depthwise conv1d (the definition; see README.md).

Both run in float64 when given float64, otherwise in float32, and return x's dtype. They are
differentiable with autograd in every floating input. No input checks here: the public functions in
__init__.py validate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d_ref", "causal_conv1d_step_ref"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_states=None,
                      return_final_states=False, seq_idx=None):
    """y[b, d, t] = act(bias[d] + sum_k weight[d, k] * x_ext[b, d, t + k]) where
    x_ext = cat(initial_states or zeros, x) along time (width - 1 leading positions).

    With seq_idx (batch, seqlen), a tap whose position belongs to another segment than t reads zero.
    The width - 1 positions before t = 0 (initial_states) belong to the first segment, seq_idx[:, 0].
    final_states[b, :, j] = x_ext[b, :, seqlen + j], zeroed where that position is not in the last
    segment (so that decoding from it continues the last segment alone).

    Shapes: x (B, D, L); weight (D, W); bias (D,); initial_states (B, D, W - 1); seq_idx (B, L).
    Returns y (B, D, L) in x's dtype, or (y, final_states (B, D, W - 1) in x's dtype).
    """
    B, D, L = x.shape
    W = weight.shape[1]
    cd = _compute_dtype(x)
    xc = x.to(cd)
    if initial_states is None:
        pre = xc.new_zeros(B, D, W - 1)
    else:
        pre = initial_states.to(cd)
    x_ext = torch.cat([pre, xc], dim=-1)  # (B, D, L + W - 1)
    w = weight.to(cd)
    if seq_idx is not None:
        seg = seq_idx.to(torch.int64)
        seg_ext = torch.cat([seg[:, :1].expand(B, W - 1), seg], dim=-1)  # (B, L + W - 1)
    y = torch.zeros(B, D, L, dtype=cd, device=x.device)
    for k in range(W):
        tap = x_ext[:, :, k:k + L]  # x at position t - (W - 1) + k
        if seq_idx is not None:
            tap = tap * (seg_ext[:, k:k + L] == seg).unsqueeze(1).to(cd)
        y = y + w[:, k, None] * tap
    if bias is not None:
        y = y + bias.to(cd)[:, None]
    y = _act(y, activation).to(x.dtype)
    if not return_final_states:
        return y
    final = x_ext[:, :, L:]  # (B, D, W - 1): the last W - 1 inputs
    if seq_idx is not None:
        final = final * (seg_ext[:, L:] == seg[:, -1:]).unsqueeze(1).to(cd)
    return y, final.to(x.dtype)


def causal_conv1d_step_ref(x, conv_state, weight, bias=None, activation=None):
    """One decoding step. Shapes: x (B, D); conv_state (B, D, W - 1), oldest first; weight (D, W).

    Returns (y (B, D) in x's dtype, new_state (B, D, W - 1) in conv_state's dtype). Pure: the public
    causal_conv1d_step copies new_state into conv_state in place.
    """
    cd = _compute_dtype(x)
    window = torch.cat([conv_state.to(cd), x.to(cd)[:, :, None]], dim=-1)  # (B, D, W)
    y = (window * weight.to(cd)).sum(-1)
    if bias is not None:
        y = y + bias.to(cd)
    y = _act(y, activation).to(x.dtype)
    return y, window[:, :, 1:].to(conv_state.dtype)
