"""Causal depthwise conv1d (DESIGN.md): `causal_conv1d` and its decode step `causal_conv1d_step`.

Dispatch (DESIGN.md): Triton kernels on CUDA, the same kernels through Triton's interpreter on CPU
when TRITON_INTERPRET=1, otherwise the pure-PyTorch reference of naive.py. The maths, including the
seq_idx and state conventions, is in README.md.
"""
from __future__ import annotations

import torch

from ..utils import check_same_device, check_tensor, use_kernel
from .conv import causal_conv1d_fn
from .naive import causal_conv1d_ref, causal_conv1d_step_ref
from .step import causal_conv1d_step_fwd

__all__ = ["causal_conv1d", "causal_conv1d_step", "causal_conv1d_ref", "causal_conv1d_step_ref",
           "MIN_WIDTH", "MAX_WIDTH"]

MIN_WIDTH, MAX_WIDTH = 2, 8
_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_ACTIVATIONS = (None, "silu")
_SEQ_IDX_DTYPES = (torch.int32, torch.int64)


def _check_weight(weight, dim: int):
    check_tensor("weight", weight, dtypes=_X_DTYPES)
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]  # nn.Conv1d(groups=dim) layout (dim, 1, width)
    check_tensor("weight", weight, shape=(dim, None))
    width = weight.shape[1]
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"weight: width (weight.shape[1]) must be in {MIN_WIDTH}..{MAX_WIDTH}, got {width}")
    return weight, width


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")


def causal_conv1d(x, weight, bias=None, *, activation=None, initial_states=None,
                  return_final_states=False, seq_idx=None):
    """Causal depthwise conv1d: `F.conv1d(x, weight[:, None], bias, padding=width-1, groups=dim)[..., :seqlen]`
    followed by the activation, with optional carried-in states and packed-sequence boundaries.

    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k]); inputs before t = 0
    come from initial_states (or are zero).

    Args:
        x: (batch, dim, seqlen), fp32 / fp16 / bf16 (fp64 runs the reference), any strides;
            channel-last memory (x.stride(1) == 1) is the fast path. seqlen >= 1.
        weight: (dim, width) with 2 <= width <= 8 (also accepted: nn.Conv1d's (dim, 1, width)).
        bias: optional (dim,).
        activation: None or "silu".
        initial_states: optional (batch, dim, width - 1), the width - 1 inputs before t = 0, oldest first.
        return_final_states: also return the last width - 1 inputs.
        seq_idx: optional int32/int64 (batch, seqlen) non-decreasing segment ids of packed sequences;
            no tap crosses a segment boundary. initial_states belong to the first segment
            (seq_idx[:, 0]); final_states hold only positions of the last segment (others are zero).

    Returns:
        y: (batch, dim, seqlen) in x's dtype; and, when return_final_states,
        final_states: (batch, dim, width - 1) in x's dtype.

    Differentiable in x, weight, bias and initial_states, through y and final_states alike.
    Accumulation is in fp32 (fp64 for fp64 inputs).
    """
    check_tensor("x", x, ndim=3, dtypes=_X_DTYPES, min_len={2: 1})
    B, D, L = x.shape
    if D == 0:
        raise ValueError(f"x: dim (x.shape[1]) must be at least 1, got shape {tuple(x.shape)}")
    weight, W = _check_weight(weight, D)
    if bias is not None:
        check_tensor("bias", bias, shape=(D,), dtypes=_X_DTYPES)
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(B, D, W - 1), dtypes=_X_DTYPES)
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, shape=(B, L), dtypes=_SEQ_IDX_DTYPES)
    _check_activation(activation)
    check_same_device(x=x, weight=weight, bias=bias, initial_states=initial_states, seq_idx=seq_idx)

    if not use_kernel(x) or x.dtype == torch.float64 or B == 0:
        return causal_conv1d_ref(x, weight, bias, activation, initial_states, return_final_states, seq_idx)
    return causal_conv1d_fn(x, weight, bias, activation, initial_states, return_final_states, seq_idx)


def causal_conv1d_step(x, conv_state, weight, bias=None, *, activation=None):
    """One decoding step of causal_conv1d; conv_state is updated in place.

    Args:
        x: (batch, dim), the new input token's channels.
        conv_state: (batch, dim, width - 1), the last width - 1 inputs, oldest first (for example the
            final_states of causal_conv1d); any strides. Overwritten with its shift by one, x newest last.
        weight: (dim, width), 2 <= width <= 8 (also accepted: (dim, 1, width)).
        bias: optional (dim,).
        activation: None or "silu".

    Returns:
        y: (batch, dim) in x's dtype, equal to causal_conv1d's output at the next position.
    """
    check_tensor("x", x, ndim=2, dtypes=_X_DTYPES)
    B, D = x.shape
    if D == 0:
        raise ValueError(f"x: dim (x.shape[1]) must be at least 1, got shape {tuple(x.shape)}")
    weight, W = _check_weight(weight, D)
    check_tensor("conv_state", conv_state, shape=(B, D, W - 1), dtypes=_X_DTYPES)
    if bias is not None:
        check_tensor("bias", bias, shape=(D,), dtypes=_X_DTYPES)
    _check_activation(activation)
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)

    if not use_kernel(x) or torch.float64 in (x.dtype, conv_state.dtype) or B == 0:
        with torch.no_grad():
            y, new_state = causal_conv1d_step_ref(x, conv_state, weight, bias, activation)
            conv_state.copy_(new_state)
        return y
    return causal_conv1d_step_fwd(x, conv_state, weight, bias, activation)
