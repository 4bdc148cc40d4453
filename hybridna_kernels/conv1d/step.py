"""Triton decode step of the causal depthwise conv1d: y = act(bias + w . [state, x]), state shifted in place."""

from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils import cdiv, new_empty, next_pow2

__all__ = ["causal_conv1d_step_fwd"]


@triton.jit
def _conv1d_step_kernel(
    X, S, WT, BIAS, Y,
    D,
    sxb, sxd, ssb, ssd, ssk, swd, swk, syb, syd,
    W: tl.constexpr, WP: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, BD: tl.constexpr,
):
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)
    o_k = tl.arange(0, WP)
    m_s = (o_k < W - 1)[:, None] & m_d[None, :]
    p_s = S + i_b * ssb + o_d64[None, :] * ssd + o_k.to(tl.int64)[:, None] * ssk
    b_x = tl.load(X + i_b * sxb + o_d64 * sxd, mask=m_d, other=0.0)
    # window[k] = state[k] for k < W - 1, x for k = W - 1
    b_win = tl.load(p_s, mask=m_s, other=0.0).to(tl.float32)
    b_win = tl.where((o_k == W - 1)[:, None], b_x.to(tl.float32)[None, :], b_win)
    b_w = tl.load(WT + o_d64[None, :] * swd + o_k.to(tl.int64)[:, None] * swk,
                  mask=(o_k < W)[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    b_y = tl.sum(b_w * b_win, axis=0)
    if HAS_BIAS:
        b_y += tl.load(BIAS + o_d, mask=m_d, other=0.0).to(tl.float32)
    if SILU:
        b_y = b_y / (1.0 + tl.exp(-b_y))
    tl.store(Y + i_b * syb + o_d64 * syd, b_y.to(Y.dtype.element_ty), mask=m_d)
    # new state[k] = window[k + 1]: read the shifted window before any thread overwrites the state
    m_n = (o_k < W - 2)[:, None] & m_d[None, :]
    b_new = tl.load(p_s + ssk, mask=m_n, other=0.0)
    b_new = tl.where((o_k == W - 2)[:, None], b_x.to(b_new.dtype)[None, :], b_new)
    tl.debug_barrier()
    tl.store(p_s, b_new.to(S.dtype.element_ty), mask=m_s)


def _step_launch(x, conv_state, weight, bias=None, activation=None):
    """Launch the step kernel: returns y (batch, dim); conv_state (batch, dim, width - 1) is updated in place."""
    B, D = x.shape
    W = weight.shape[1]
    y = new_empty((B, D), dtype=x.dtype, device=x.device)
    BD = min(256, next_pow2(D))
    grid = (cdiv(D, BD), B)
    _conv1d_step_kernel[grid](
        x, conv_state, weight, bias if bias is not None else x, y, D,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        W=W, WP=next_pow2(W), SILU=activation == "silu", HAS_BIAS=bias is not None, BD=BD,
        num_warps=4,
    )
    return y


# Registered for torch.compile (conv_state is mutated in place); eager calls launch directly.
@torch.library.custom_op("hybridna::causal_conv1d_step", mutates_args=("conv_state",))
def _step_op(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             activation: Optional[str]) -> torch.Tensor:
    return _step_launch(x, conv_state, weight, bias, activation)


@_step_op.register_fake
def _step_fake(x, conv_state, weight, bias, activation):
    return x.new_empty(x.shape)


def causal_conv1d_step_fwd(x, conv_state, weight, bias=None, activation=None):
    """Launch the step kernel: returns y (batch, dim); conv_state (batch, dim, width - 1) is updated in place."""
    try:
        compiling = torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        compiling = False
    if compiling:
        return _step_op(x, conv_state, weight, bias, activation)
    return _step_launch(x, conv_state, weight, bias, activation)
