"""Public SSD functions: argument checks and dispatch (kernels or the references of naive.py)."""
from __future__ import annotations

import math

import torch

from ..utils import check_same_device, check_tensor, use_kernel
from .naive import ssd_chunked_ref, ssd_step_ref

_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_IDX_DTYPES = (torch.int32,)


def _kernels():
    """The Triton launchers, or None while they are not available (the reference runs then)."""
    try:
        from . import chunk, step
    except ImportError:  # pragma: no cover - only while a kernel file is missing
        return None
    return chunk, step


def _check_dt_limit(dt_limit):
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit: expected a pair (lo, hi) of floats, got {dt_limit!r}") from None
    if not (0.0 <= lo <= hi) or hi != hi:  # hi != hi: NaN (math.isnan does not trace)
        raise ValueError(f"dt_limit: expected 0 <= lo <= hi, got {dt_limit!r}")
    return lo, hi


def _check_A(A, H, x):
    want = (torch.float64,) if x.dtype == torch.float64 else (torch.float32,)
    check_tensor("A", A, shape=(H,), dtypes=want)
    # Checking values on CUDA would cost a host sync per call; the CPU check is free (not traced).
    if A.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((A < 0).all()):
        raise ValueError("A: expected negative values (the decay is exp(dt * A))")


def _check_D(D, H, P):
    if D is None:
        return
    check_tensor("D", D, dtypes=_X_DTYPES)
    if tuple(D.shape) not in ((H,), (H, P)):
        raise ValueError(f"D: expected shape ({H},) or ({H}, {P}), got {tuple(D.shape)}")


def _check_groups(B, H):
    G = B.shape[-2]
    if G == 0 or H % G != 0:
        raise ValueError(f"B: nheads ({H}) must be a multiple of ngroups (B.shape[-2] = {G})")


def check_scan_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx, cu_seqlens):
    """Validate ssd_scan's arguments; returns (dt_limit as floats, nseq or None)."""
    check_tensor("x", x, ndim=4, dtypes=_X_DTYPES, min_len={0: 1, 1: 1, 2: 1, 3: 1}, contiguous_dims=(3,))
    b, L, H, P = x.shape
    check_tensor("dt", dt, shape=(b, L, H), dtypes=_X_DTYPES)
    _check_A(A, H, x)
    check_tensor("B", B, ndim=4, dtypes=_X_DTYPES, contiguous_dims=(3,))
    check_tensor("B", B, shape=(b, L, None, None), min_len={3: 1})
    _check_groups(B, H)
    check_tensor("C", C, shape=tuple(B.shape), dtypes=_X_DTYPES, contiguous_dims=(3,))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size > 512 \
            or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: expected a power of two in 16..512, got {chunk_size!r}")
    _check_D(D, H, P)
    if z is not None:
        check_tensor("z", z, shape=(b, L, H, P), dtypes=_X_DTYPES, contiguous_dims=(3,))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(H,), dtypes=_X_DTYPES)
    lim = _check_dt_limit(dt_limit)
    nseq = None
    if seq_idx is not None and cu_seqlens is not None:
        raise ValueError("cu_seqlens: give either seq_idx or cu_seqlens, not both")
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, shape=(b, L), dtypes=_IDX_DTYPES)
        if seq_idx.device.type == "cpu" and L > 1 and not torch.compiler.is_compiling() \
                and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("seq_idx: expected non-decreasing segment ids along the sequence")
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=_IDX_DTYPES, min_len={0: 2})
        if b != 1:
            raise ValueError(f"cu_seqlens: packed sequences need batch 1, got x of shape {tuple(x.shape)}")
        nseq = cu_seqlens.shape[0] - 1
        if not torch.compiler.is_compiling():  # values: a host sync, the price of checking them
            cu = cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != L or any(cu[i + 1] < cu[i] for i in range(len(cu) - 1)):
                raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to seqlen={L}, got {cu}")
    Pn = B.shape[3]
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(nseq or b, H, P, Pn), dtypes=_X_DTYPES,
                     contiguous_dims=(3,))
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      seq_idx=seq_idx, cu_seqlens=cu_seqlens)
    return lim, nseq


def ssd_scan(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None,
             return_final_states=False):
    """Mamba2 SSD scan (DESIGN.md): a selective state-space recurrence, computed chunk by chunk.

    Per head, with fp32 state and accumulation:
        d_t = clamp(softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias, *dt_limit)
        h_t = exp(d_t * A) * h_{t-1} + d_t * outer(x_t, B_t)        (h: headdim x dstate)
        y_t = h_t @ C_t + D * x_t;  y_t *= silu(z_t) when z is given

    Args:
        x: (batch, seqlen, nheads, headdim), fp32 / fp16 / bf16 (fp64 runs the reference); seqlen >= 1.
        dt: (batch, seqlen, nheads).
        A: (nheads,) fp32, negative.
        B, C: (batch, seqlen, ngroups, dstate); nheads % ngroups == 0, head h uses group
            h // (nheads // ngroups).
        chunk_size: power of two in 16..512 (any seqlen works; it is padded internally).
        D: optional skip term, (nheads,) or (nheads, headdim).
        z: optional gate like x: y *= z * sigmoid(z).
        dt_bias: optional (nheads,), added to dt before softplus.
        dt_softplus: apply softplus (identity above 20) to dt + dt_bias.
        dt_limit: (lo, hi) clamp of the processed dt; the default (0, inf) clamps negatives to 0.
        initial_states: optional (batch, nheads, headdim, dstate), or (nseq, ...) with cu_seqlens.
        seq_idx: optional int32 (batch, seqlen), non-decreasing segment ids of packed sequences;
            the state restarts from zero at every change (initial_states feeds the first segment).
        cu_seqlens: optional int32 (nseq + 1,) offsets of packed sequences (batch must be 1);
            initial_states and final_states are then per sequence.
        return_final_states: also return the state after the last token (of each sequence).

    Returns:
        y: (batch, seqlen, nheads, headdim) in x's dtype; with return_final_states also
        final_states: (batch or nseq, nheads, headdim, dstate) fp32 (fp64 for fp64 x).

    Differentiable in x, dt, A, B, C, D, z, dt_bias and initial_states.

    Dispatch: the Triton kernels of chunk.py on CUDA (through the interpreter on CPU when
    TRITON_INTERPRET=1); otherwise, and always for fp64, the chunked reference `ssd_chunked_ref`.
    Kernels are deterministic (no atomics). With seq_idx / cu_seqlens the call syncs with the host
    once to lay the segments out on chunk boundaries.
    """
    lim, _ = check_scan_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_states, seq_idx,
                             cu_seqlens)
    kernels = _kernels() if use_kernel(x) and x.dtype != torch.float64 else None
    if kernels is not None:
        return kernels[0].ssd_scan_fn(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, lim,
                                      initial_states, seq_idx, cu_seqlens, return_final_states)
    return ssd_chunked_ref(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                           dt_softplus=dt_softplus, dt_limit=lim, initial_states=initial_states, seq_idx=seq_idx,
                           cu_seqlens=cu_seqlens, return_final_states=return_final_states)


def check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_limit):
    check_tensor("x", x, ndim=3, dtypes=_X_DTYPES, min_len={0: 1, 1: 1, 2: 1}, contiguous_dims=(2,))
    b, H, P = x.shape
    state_dtypes = (torch.float64,) if x.dtype == torch.float64 else (torch.float32,)
    check_tensor("state", state, ndim=4, dtypes=state_dtypes)
    check_tensor("state", state, shape=(b, H, P, None), min_len={3: 1}, contiguous_dims=(3,))
    N = state.shape[3]
    check_tensor("dt", dt, shape=(b, H), dtypes=_X_DTYPES)
    _check_A(A, H, x)
    check_tensor("B", B, shape=(b, None, N), dtypes=_X_DTYPES, contiguous_dims=(2,))
    _check_groups(B, H)
    check_tensor("C", C, shape=tuple(B.shape), dtypes=_X_DTYPES, contiguous_dims=(2,))
    _check_D(D, H, P)
    if z is not None:
        check_tensor("z", z, shape=(b, H, P), dtypes=_X_DTYPES, contiguous_dims=(2,))
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(H,), dtypes=_X_DTYPES)
    lim = _check_dt_limit(dt_limit)
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return lim


def ssd_step(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """One decoding step of ssd_scan's recurrence; `state` is updated in place.

    Args:
        state: (batch, nheads, headdim, dstate) fp32 (for example ssd_scan's final_states).
        x: (batch, nheads, headdim); dt: (batch, nheads); A: (nheads,) fp32 negative;
        B, C: (batch, ngroups, dstate); D: (nheads,) or (nheads, headdim); z: like x;
        dt_bias, dt_softplus, dt_limit: as in ssd_scan.

    Returns:
        y: (batch, nheads, headdim) in x's dtype, equal to ssd_scan's output at the next position.

    Not differentiable (decoding). Dispatch: the Triton kernel of step.py on CUDA (interpreter on CPU
    with TRITON_INTERPRET=1); otherwise, and for fp64, `ssd_step_ref`.
    """
    lim = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    kernels = _kernels() if use_kernel(x) and x.dtype != torch.float64 else None
    if kernels is not None:
        if torch.compiler.is_compiling():
            return kernels[1].ssd_step_op(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), *lim)
        return kernels[1].ssd_step_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, lim)
    with torch.no_grad():
        return ssd_step_ref(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=lim)
