"""Plain PyTorch references for the Mamba2 SSD (DESIGN.md; derivation in README.md).

- `ssd_sequential_ref`: the recurrence itself, one time step after another. Slow; the definition.
- `ssd_chunked_ref`: the chunked (SSD) form: intra-chunk quadratic attention-like term with segsum
  decays, chunk end states, a short loop passing states between chunks, output from the states.
  Vectorised over time; the model's CPU path.
- `ssd_step_ref`: one decoding step, state updated in place.

All compute in fp32 (fp64 when x is fp64); y comes back in x's dtype, states in the compute dtype.
No input validation here: the public functions in __init__.py check their arguments.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ssd_sequential_ref", "ssd_chunked_ref", "ssd_step_ref", "process_dt", "cu_seqlens_to_seq_idx"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def process_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf), dtype=torch.float32):
    """d = clamp(softplus(dt + dt_bias) if dt_softplus else dt + dt_bias, *dt_limit), in `dtype`.

    softplus is torch's (threshold 20: the identity above 20), which the kernels reproduce.
    """
    d = dt.to(dtype)
    if dt_bias is not None:
        d = d + dt_bias.to(dtype)
    if dt_softplus:
        d = F.softplus(d)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    return d.clamp(min=lo, max=None if math.isinf(hi) else hi)


def cu_seqlens_to_seq_idx(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(nseq+1,) offsets -> (1, seqlen) int32 sequence index of each token (no host sync)."""
    pos = torch.arange(seqlen, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True).to(torch.int32)[None]


def _output(y, x, D, z, cdt):
    """y + D * x, then * silu(z)."""
    if D is not None:
        Dc = D.to(cdt)
        y = y + (Dc[:, None] if Dc.dim() == 1 else Dc) * x.to(cdt)
    if z is not None:
        zc = z.to(cdt)
        y = y * zc * torch.sigmoid(zc)
    return y


def ssd_sequential_ref(x, dt, A, B, C, *, chunk_size=None, D=None, z=None, dt_bias=None, dt_softplus=False,
                       dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None,
                       return_final_states=False):
    """The SSD recurrence of DESIGN.md, step by step (chunk_size is accepted and ignored).

    h_t = exp(d_t A) h_{t-1} + d_t x_t B_t^T, y_t = h_t C_t + D x_t, y_t *= silu(z_t).
    The state restarts at every boundary of seq_idx / cu_seqlens: from zero, except that
    initial_states feeds the first segment of each batch row (seq_idx) or each sequence (cu_seqlens).
    Final states: the state after the last token of each batch row / of each sequence (an empty
    sequence's final state is its initial state).
    """
    cdt = _compute_dtype(x)
    b, L, H, P = x.shape
    G = B.shape[2]
    d = process_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (b, L, H)
    Bh = B.to(cdt).repeat_interleave(H // G, dim=2)  # (b, L, H, N)
    Ch = C.to(cdt).repeat_interleave(H // G, dim=2)
    N = Bh.shape[-1]
    xc = x.to(cdt)
    Ac = A.to(cdt)

    starts, ends, nseq = {}, {}, 0
    if cu_seqlens is not None:
        cu = [int(v) for v in cu_seqlens.tolist()]
        nseq = len(cu) - 1
        for s in range(nseq):
            if cu[s + 1] > cu[s]:
                starts[cu[s]] = s
                ends[cu[s + 1] - 1] = s

    def init(s=None):
        if initial_states is None:
            return x.new_zeros((b if s is None else 1, H, P, N), dtype=cdt)
        return initial_states.to(cdt) if s is None else initial_states[s:s + 1].to(cdt)

    h = init() if cu_seqlens is None else None
    finals = [None] * nseq
    ys = []
    for t in range(L):
        if cu_seqlens is not None:
            if t in starts:
                h = init(starts[t])
        elif seq_idx is not None and t > 0:
            new = (seq_idx[:, t] != seq_idx[:, t - 1])[:, None, None, None]
            h = torch.where(new, torch.zeros_like(h), h)
        dA = torch.exp(d[:, t] * Ac)  # (b, H)
        h = dA[..., None, None] * h + (d[:, t, :, None, None] * xc[:, t, :, :, None]) * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
        if t in ends:
            finals[ends[t]] = h
    y = _output(torch.stack(ys, dim=1), x, D, z, cdt).to(x.dtype)
    if not return_final_states:
        return y
    if cu_seqlens is None:
        return y, h
    final = torch.cat([f if f is not None else init(s) for s, f in enumerate(finals)], dim=0)
    return y, final


def _chunked_core(x, d, A, B, C, Q, init, seq_idx):
    """Chunked SSD on processed dt `d` (b, L, H); everything in the compute dtype.

    Returns y without the D / z terms (b, L, H, P) and the final state (b, H, P, N).
    Positions padded at the end carry d = 0: no decay, no input, so the final state is unchanged.
    """
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    pad = (-L) % Q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        d = F.pad(d, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    nc = x.shape[1] // Q
    x = x.reshape(b, nc, Q, H, P)
    d = d.reshape(b, nc, Q, H)
    B = B.reshape(b, nc, Q, G, N)
    C = C.reshape(b, nc, Q, G, N)
    cs = torch.cumsum(d * A, dim=2)  # (b, c, Q, H), non-increasing along Q

    # Intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) d_j x_j.
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    mask = causal[None, None, :, :, None]
    if seq_idx is not None:
        s = seq_idx.reshape(b, nc, Q)
        mask = mask & (s[:, :, :, None] == s[:, :, None, :])[..., None]
    seg = cs[:, :, :, None, :] - cs[:, :, None, :, :]  # (b, c, i, j, H)
    decay = torch.exp(torch.where(mask, seg, torch.full_like(seg, -math.inf)))
    CB = torch.einsum("bcign,bcjgn->bcijg", C, B).repeat_interleave(rep, dim=-1)  # (b, c, i, j, H)
    W = CB * decay * d[:, :, None, :, :]
    y = torch.einsum("bcijh,bcjhp->bcihp", W, x)

    # Chunk end states: sum_j exp(cs_last - cs_j) d_j x_j B_j^T (only tokens of the last segment).
    w_end = torch.exp(cs[:, :, -1:, :] - cs) * d  # (b, c, Q, H)
    if seq_idx is not None:
        w_end = w_end * (s == s[:, :, -1:])[..., None]
    Bh = B.repeat_interleave(rep, dim=3)  # (b, c, Q, H, N)
    states = torch.einsum("bcjh,bcjhp,bcjhn->bchpn", w_end, x, Bh)

    # State passing between chunks; h_in[c] is the state entering chunk c, owned by segment prev[c].
    h = init if init is not None else x.new_zeros((b, H, P, N))
    chunk_decay = torch.exp(cs[:, :, -1, :])  # (b, c, H)
    h_in = []
    for c in range(nc):
        h_in.append(h)
        carry = chunk_decay[:, c, :, None, None] * h
        if seq_idx is not None:
            prev = s[:, 0, 0] if c == 0 else s[:, c - 1, -1]
            carry = carry * (s[:, c, -1] == prev).to(h.dtype)[:, None, None, None]
        h = carry + states[:, c]
    h_in = torch.stack(h_in, dim=1)  # (b, c, H, P, N)

    # Output from the entering state: y_i += exp(cs_i) C_i h_in^T (tokens still in segment prev[c]).
    Ch = C.repeat_interleave(rep, dim=3)
    w_in = torch.exp(cs)  # (b, c, Q, H)
    if seq_idx is not None:
        prev = torch.cat([s[:, :1, 0], s[:, :-1, -1]], dim=1)  # (b, c)
        w_in = w_in * (s == prev[:, :, None])[..., None]
    y = y + torch.einsum("bcih,bcihn,bchpn->bcihp", w_in, Ch, h_in)
    y = y.reshape(b, nc * Q, H, P)[:, :L]
    return y, h


def ssd_chunked_ref(x, dt, A, B, C, *, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                    dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None,
                    return_final_states=False):
    """The chunked SSD form, same arguments and results as `ssd_sequential_ref`.

    With cu_seqlens the packed sequences are unpacked into a zero-padded batch (padding has d = 0,
    which leaves states untouched) so initial and final states are per sequence.
    """
    cdt = _compute_dtype(x)
    b, L, H, P = x.shape
    d = process_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)
    xc, Bc, Cc, Ac = x.to(cdt), B.to(cdt), C.to(cdt), A.to(cdt)
    init = None if initial_states is None else initial_states.to(cdt)
    Q = int(chunk_size)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int64)
        lens = cu[1:] - cu[:-1]
        nseq = lens.numel()
        maxlen = max(int(lens.max().item()), 1)
        t = torch.arange(maxlen, device=x.device)
        valid = t[None, :] < lens[:, None]  # (nseq, maxlen)
        idx = torch.where(valid, cu[:-1, None] + t[None, :], torch.zeros_like(valid, dtype=torch.int64))

        def unpack(v):
            out = v[0][idx]
            return out * valid.reshape(nseq, maxlen, *([1] * (out.dim() - 2))).to(out.dtype)

        yp, final = _chunked_core(unpack(xc), unpack(d), Ac, unpack(Bc), unpack(Cc), Q, init, None)
        y = yp[valid][None]
    else:
        y, final = _chunked_core(xc, d, Ac, Bc, Cc, Q, init, seq_idx)
    y = _output(y, x, D, z, cdt).to(x.dtype)
    return (y, final) if return_final_states else y


def ssd_step_ref(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                 dt_limit=(0.0, math.inf)):
    """One step: state (b, H, P, N) <- exp(d A) state + d x B^T (in place); returns y (b, H, P).

    Computes in the state's dtype (fp32, or fp64 for an fp64 state).
    """
    cdt = torch.float64 if state.dtype == torch.float64 else torch.float32
    H = x.shape[1]
    G = B.shape[1]
    d = process_dt(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (b, H)
    Bh = B.to(cdt).repeat_interleave(H // G, dim=1)  # (b, H, N)
    Ch = C.to(cdt).repeat_interleave(H // G, dim=1)
    dA = torch.exp(d * A.to(cdt))
    new = dA[..., None, None] * state.to(cdt) + (d[..., None, None] * x.to(cdt)[..., None]) * Bh[:, :, None, :]
    with torch.no_grad():
        state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    return _output(y, x, D, z, cdt).to(x.dtype)
