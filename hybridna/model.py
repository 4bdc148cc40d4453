"""HybriDNA: Mamba2 blocks with one grouped-query attention block in every eight (DESIGN.md).

Every block is `x + mixer(norm(x))` then `x + mlp(norm(x))` with RMSNorm and a SwiGLU MLP. The
mixers call only the public ops of hybridna_kernels (Triton on CUDA, the PyTorch references on CPU),
so the same module runs everywhere. Decoding (one token at a time against a recurrent cache) lives in
generation.py; the `step` methods here are its per-layer pieces.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hybridna_kernels import causal_conv1d, causal_conv1d_step, flash_attention, ssd_scan, ssd_step
from hybridna_kernels.norm import gated_rms_norm, gated_rms_norm_linear, rms_norm_linear
from hybridna_kernels.norm import rms_norm as fused_rms_norm
from hybridna_kernels.norm.rms import rms_norm_bwd, rms_norm_fwd
from hybridna_kernels.swiglu import swiglu, swiglu_bwd, swiglu_fwd
from hybridna_kernels.utils import backend as _op_backend
from hybridna_kernels.utils import get_backend as _get_op_backend
from hybridna_kernels.utils import GradSlab, grad_slabs, use_kernel

from .config import HybriDNAConfig
from .tokenizer import A_ID, BOS_ID, N_ID, NUM_BASE_TOKENS, PAD_ID, DNATokenizer, reverse_complement_ids

__all__ = ["HybriDNA", "HybriDNAOutput", "RMSNorm", "Mamba2Mixer", "Attention", "SwiGLU", "Block", "Packed",
           "MambaState", "KVState"]

IGNORE_INDEX = -100
# The fused norms (hybridna_kernels.norm): residual add + RMSNorm in one op, the Mamba2 gate applied
# in the gated norm instead of inside the SSD scan, outputs in the autocast dtype. "0" restores the
# unfused PyTorch norms and the gate inside the scan (same maths; kept to measure the difference).
FUSED_NORMS = os.environ.get("HYBRIDNA_FUSED_NORMS", "1") != "0"
# The fused SwiGLU activation kernels (hybridna_kernels.swiglu); "0" restores the PyTorch silu / mul
# chain (same maths, silu rounded differently: torch computes x / (1 + exp(-x)), the kernel x * sigmoid(x)).
# With the fused norms too, a block's norm2 + gate_up + SwiGLU + down run as one autograd node (_NormMLPFn).
FUSED_SWIGLU = os.environ.get("HYBRIDNA_FUSED_SWIGLU", "1") != "0"
# Training memory (issue 10), each a recomputation in the backward instead of a saved activation:
# MLP_RECOMPUTE: _NormMLPFn keeps only the residual stream and recomputes the gate_up output h
#   (one extra gate_up matmul per block; 2 * d_intermediate 16-bit values per token and block less);
# CONV_RECOMPUTE: the conv output x|B|C that ssd_scan saves is recomputed from the conv input (kept
#   anyway) when the SSD backward needs it (one extra conv forward per Mamba layer; conv_dim values).
#   A fraction f in (0, 1) recomputes in the first round(f * n_layer) blocks only (memory and time both
#   scale with the number of blocks; which blocks does not matter for the peak, reached when the
#   backward starts and every block's activations are alive).
MLP_RECOMPUTE = float(os.environ.get("HYBRIDNA_MLP_RECOMPUTE", "1"))
CONV_RECOMPUTE = os.environ.get("HYBRIDNA_CONV_RECOMPUTE", "1") != "0"
# INPROJ_RECOMPUTE (opt-in): the in_proj output z|x|B|C|dt of a Mamba block (2 d_inner + 2 G N + H 16-bit
#   values per token, kept for the conv, SSD and gated-norm backwards) is recomputed from the residual
#   stream (kept by norm1 anyway) when the backward needs it: one more norm1 + in_proj per Mamba block.
INPROJ_RECOMPUTE = os.environ.get("HYBRIDNA_INPROJ_RECOMPUTE", "0") == "1"
# GRAD_SLABS: in training, the backwards of the ops after a split (gated norm, SSD, conv, attention) write
#   the gradients of the pieces z | x | B | C | dt (in_proj output), x | B | C (conv output) and q | k | v
#   into slices of one buffer per split tensor (hybridna_kernels.utils.GradSlab), so the split's backward
#   needs no cat (torch.split's does: 2 cats per Mamba layer, 1 per attention layer). Same kernels, same
#   values. Opt-in ("1") until it has run on a GPU: written and tested on CPU (interpreter, bit-identical
#   gradients) in session 4, whose device time ran out first; .gpu/cats4.sh measures it against torch.split.
GRAD_SLABS = os.environ.get("HYBRIDNA_GRAD_SLABS", "0") == "1"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Norms and the SSD state run in fp32, or fp64 for fp64 models (the exactness tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32 (fp64 for fp64 x), weight applied before the one cast back."""
    xf = x.to(_compute_dtype(x))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(y.dtype)).to(x.dtype)


def _autocast_dtype(x: torch.Tensor):
    """The dtype the next matmul would cast to under autocast (the norms write it directly), else None."""
    dev = x.device.type
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


class RMSNorm(nn.Module):
    """RMSNorm; with group_size, normalised per group of group_size channels (Mamba2's gated norm).

    forward(x) -> norm(x); forward(x, delta) -> (norm(x + delta), x + delta), the residual add fused
    in; gated(y, z) -> norm(y * silu(z)). Under autocast the output is in the autocast dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or dim  # the gated norm of Mamba2 normalises per group of heads
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, delta=None):  # (..., dim)
        if FUSED_NORMS:
            return fused_rms_norm(x, self.weight, self.eps, delta=delta, out_dtype=_autocast_dtype(x))
        if delta is not None:
            x = x + delta
            return self._unfused(x), x
        return self._unfused(x)

    def gated(self, y, z):  # (..., dim) each -> norm(y * silu(z)) * weight, per group
        if FUSED_NORMS:
            return gated_rms_norm(y, z, self.weight, self.eps, group_size=self.group_size,
                                  out_dtype=_autocast_dtype(y))
        return self._unfused(y * F.silu(z))

    def linear(self, lin: nn.Linear, x, delta=None):
        """lin(self(x [+ delta])) (and x + delta), the normed activation recomputed in the backward
        instead of saved (hybridna_kernels.norm.rms_norm_linear)."""
        if FUSED_NORMS and lin.bias is None:
            return rms_norm_linear(x, self.weight, lin.weight, self.eps, delta=delta, out_dtype=_autocast_dtype(x))
        if delta is None:
            return lin(self(x))
        h, x = self(x, delta)
        return lin(h), x

    def gated_linear(self, lin: nn.Linear, y, z):
        """lin(self.gated(y, z)), the normed activation recomputed in the backward."""
        if FUSED_NORMS and lin.bias is None:
            return gated_rms_norm_linear(y, z, self.weight, lin.weight, self.eps, group_size=self.group_size,
                                         out_dtype=_autocast_dtype(y))
        return lin(self.gated(y, z))

    def _unfused(self, x):
        if self.group_size == x.shape[-1]:
            return rms_norm(x, self.weight, self.eps)
        # per group: (..., G, dim / G) against the weight viewed as (G, dim / G), so the weight is
        # applied in fp32 before the one cast back (no extra pass, no second 16-bit rounding)
        xg = x.unflatten(-1, (-1, self.group_size))
        return rms_norm(xg, self.weight.view(-1, self.group_size), self.eps).flatten(-2)


_RECOMPUTED = object()  # marks a saved tensor that _recompute_saved replaces by a recomputation


class _Recomputed:
    """An activation left out of the saved set (see _recompute_saved). Only its address and layout
    are kept, never the tensor: the packed entries live as long as the graph, and a reference here
    would keep the very tensor this is meant to free."""

    def __init__(self, out: torch.Tensor, recompute):
        st = out.untyped_storage()
        self.ptr, self.nbytes, self.offset, self.device = st.data_ptr(), st.nbytes(), out.storage_offset(), out.device
        dev = out.device.type
        self.amp = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) if dev in ("cuda", "cpu") else (False,)
        self.op_backend = _get_op_backend()
        self.recompute, self.value = recompute, None

    def get(self) -> torch.Tensor:
        if self.value is None:  # once per backward, under the forward's autocast state and op backend
            dev = self.device.type
            ac = torch.autocast(dev, dtype=self.amp[1], enabled=True) if self.amp[0] else contextlib.nullcontext()
            with torch.no_grad(), ac, _op_backend(self.op_backend):
                r = self.recompute()
            if r.untyped_storage().nbytes() != self.nbytes or r.storage_offset() != self.offset:
                raise RuntimeError("recomputed activation has another layout than the one saved")
            self.value = r
        return self.value

    def matches(self, t: torch.Tensor) -> bool:
        return t.device == self.device and t.untyped_storage().data_ptr() == self.ptr


_ACTIVE: list[_Recomputed] = []  # the entries of the enclosing _recompute_saved contexts, innermost last


def _pack(t):
    for e in reversed(_ACTIVE):
        if e.matches(t):
            return (_RECOMPUTED, e, t.shape, t.stride(), t.storage_offset(), t.dtype)
    return t


def _unpack(p):
    if isinstance(p, tuple) and len(p) == 6 and p[0] is _RECOMPUTED:
        _, e, shape, stride, offset, dtype = p
        r = e.get()
        assert r.dtype == dtype
        return r.as_strided(shape, stride, offset)
    return p


def _outer_saved_hooks() -> bool:
    """Whether saved-tensor hooks other than ours are active (activation checkpointing, offloading, a
    test's recorder): hooks do not nest, so _recompute_saved would take the saved tensors from them."""
    try:
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, TypeError, RuntimeError):
        return True
    return top is not None and top[0] is not _pack


@contextlib.contextmanager
def _recompute_saved(out: torch.Tensor, recompute):
    """Within this context, the tensors the autograd graph saves that are views of out's storage are
    not kept: the backward calls recompute() (once) and reads the same views of its result. recompute
    must rebuild out bit for bit with the same layout (deterministic kernels on inputs that are kept
    anyway). Contexts nest (one pair of hooks checks every enclosing entry); other tensors pass through."""
    _ACTIVE.append(_Recomputed(out, recompute))
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _ACTIVE.pop()


def _source(t: torch.Tensor):
    """A callable giving t in a backward: t's recomputation when an enclosing _recompute_saved drops
    it (without holding t), else t itself (kept anyway)."""
    for e in reversed(_ACTIVE):
        if e.matches(t):
            shape, stride, offset = t.shape, t.stride(), t.storage_offset()
            return lambda: e.get().as_strided(shape, stride, offset)
    t = t.detach()
    return lambda: t


class _SlabSplit(torch.autograd.Function):
    """torch.split(t, sizes, dim=-1) (views) for the GRAD_SLABS path: its backward returns the pieces'
    gradients as one view of the slab's buffer when the ops after the split wrote them there (no cat),
    else their cat (zeros for absent ones), like torch.split's backward."""

    @staticmethod
    def forward(ctx, t, sizes, slab):
        ctx.slab, ctx.sizes, ctx.meta = slab, sizes, (tuple(t.shape[:-1]), t.dtype, t.device)
        ctx.set_materialize_grads(False)
        return tuple(torch.split(t, sizes, dim=-1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        g = ctx.slab.assemble(grads)
        if g is None:
            lead, dtype, device = ctx.meta
            g = torch.cat([gi if gi is not None else torch.zeros((*lead, n), dtype=dtype, device=device)
                           for gi, n in zip(grads, ctx.sizes)], dim=-1)
        return g, None, None


def _use_slabs(t: torch.Tensor, state) -> bool:
    return (GRAD_SLABS and state is None and torch.is_grad_enabled() and t.requires_grad
            and t.dtype != torch.float64 and use_kernel(t) and not torch.compiler.is_compiling())


def _split(t: torch.Tensor, sizes: list[int], slabs: list | None):
    """torch.split(t, sizes, dim=-1); with slabs (a list), through _SlabSplit, its GradSlab appended."""
    if slabs is None:
        return torch.split(t, sizes, dim=-1)
    slab = GradSlab(t, torch.split(t.detach(), sizes, dim=-1))
    slabs.append(slab)
    return _SlabSplit.apply(t, sizes, slab)


# ---- state carried between decoding steps ----------------------------------------------------------
@dataclass
class MambaState:
    conv: torch.Tensor  # (B, conv_dim, d_conv - 1), model dtype: the last inputs of the conv
    ssm: torch.Tensor  # (B, H, P, N) fp32 (fp64 for fp64 models)


@dataclass
class KVState:
    k: torch.Tensor  # (B, max_len, Hkv, hd)
    v: torch.Tensor  # (B, max_len, Hkv, hd)


@dataclass
class Packed:
    """Several sequences packed into one row (1, total): boundaries for the kernels' varlen modes."""
    cu_seqlens: torch.Tensor  # (nseq + 1,) int32 offsets
    seq_idx: torch.Tensor  # (1, total) int32 segment id per token (the conv's varlen mode)
    positions: torch.Tensor  # (1, total) int64 position within its sequence (rotary)
    max_seqlen: int

    @classmethod
    def from_lengths(cls, lengths: list[int], device) -> "Packed":
        lens = torch.tensor(lengths, dtype=torch.long, device=device)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.long, device=device)
        cu[1:] = lens.cumsum(0)
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), device=device), lens)
        positions = torch.arange(int(cu[-1]), device=device) - cu[:-1][seq_idx]
        return cls(cu_seqlens=cu.to(torch.int32), seq_idx=seq_idx.to(torch.int32)[None], positions=positions[None],
                   max_seqlen=max(lengths))


class Mamba2Mixer(nn.Module):
    """in_proj -> causal conv1d (SiLU) on x, B, C -> SSD scan (dt_bias, softplus, D) -> gated RMSNorm with z
    -> out_proj. The gate is applied in the norm (g = y * silu(z), then RMSNorm of g: Mamba2's gated RMSNorm
    with norm_before_gate=False), fused with out_proj by hybridna_kernels.norm.gated_rms_norm_linear
    (HYBRIDNA_FUSED_NORMS=0: the unfused PyTorch path)."""

    def __init__(self, cfg: HybriDNAConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, di, H, G, N = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.ngroups, cfg.d_state
        self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state = di, H, cfg.headdim, G, N
        self.conv_dim = cfg.conv_dim
        self.in_proj = nn.Linear(d, 2 * di + 2 * G * N + H, bias=False)  # -> z, x, B, C, dt
        # Depthwise conv weights as (conv_dim, width), the layout causal_conv1d takes.
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim)) if cfg.conv_bias else None
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.norm = RMSNorm(di, eps=cfg.norm_eps, group_size=di // G)
        self.out_proj = nn.Linear(di, d, bias=False)
        self.reset_mamba_parameters()

    @torch.no_grad()
    def reset_mamba_parameters(self):
        cfg = self.cfg
        bound = 1.0 / math.sqrt(cfg.d_conv)  # nn.Conv1d's default for a depthwise conv (fan_in = width)
        self.conv_weight.uniform_(-bound, bound)
        if self.conv_bias is not None:
            self.conv_bias.uniform_(-bound, bound)
        # A = -exp(A_log), uniform in A_init_range; dt from a log-uniform range, stored as
        # dt_bias = softplus^{-1}(dt) so that softplus(0 + dt_bias) = dt at initialisation.
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(*cfg.A_init_range).log())
        dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.D.fill_(1.0)

    def _A(self, x):
        return -torch.exp(self.A_log.to(_compute_dtype(x)))  # (H,) fp32, negative

    def _A_step(self, x):
        """A for decoding without autograd: computed once per (A_log version, storage, dtype) instead of
        once per token (a cast and an exp kernel per layer and step, about 5% of a 300m decode step).
        In-place updates of A_log (optimizer steps, load_state_dict) bump its version and recompute it.
        A CUDAGraphDecoder captures the tensor current at capture time (it is built per generate call)."""
        if torch.is_grad_enabled() and self.A_log.requires_grad:
            return self._A(x)
        key = (self.A_log._version, self.A_log.data_ptr(), self.A_log.device, _compute_dtype(x))
        if getattr(self, "_A_key", None) != key:
            self._A_cached, self._A_key = self._A(x), key
        return self._A_cached

    def forward(self, u, state: MambaState | None = None, rows=None, packed: Packed | None = None):
        """u: (B, L, d_model), or (1, total) packed sequences with `packed`. With `state`, also stores
        the conv and SSD final states (of each sequence) in state[rows]."""
        return self.mix(self.in_proj(u), state, rows, packed)

    def mix(self, zxbcdt, state: MambaState | None = None, rows=None, packed: Packed | None = None):
        """The mixer after in_proj: zxbcdt (B, L, 2di + 2GN + H) -> (B, L, d_model)."""
        slabs = [] if packed is None and _use_slabs(zxbcdt, state) else None  # GRAD_SLABS
        with contextlib.ExitStack() as stack:
            return self._mix(zxbcdt, state, rows, packed, slabs, stack)

    def _mix(self, zxbcdt, state, rows, packed, slabs, stack):
        Bsz, L, _ = zxbcdt.shape
        u = zxbcdt
        di, H, P, G, N = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        z, xBC, dt = _split(zxbcdt, [di, self.conv_dim, H], slabs)
        if slabs:
            stack.enter_context(grad_slabs(slabs[-1]))
        # (B, conv_dim, L) view with channels contiguous: the conv's channel-last fast path.
        conv_out = causal_conv1d(xBC.transpose(1, 2), self.conv_weight, self.conv_bias, activation="silu",
                                 return_final_states=state is not None and packed is None,
                                 seq_idx=None if packed is None else packed.seq_idx)
        if state is not None:
            if packed is None:
                conv_out, conv_final = conv_out
            else:  # the conv state of each sequence: its last width - 1 inputs, zeros before its start
                W1 = self.cfg.d_conv - 1
                cu = packed.cu_seqlens.long()
                idx = cu[1:, None] - W1 + torch.arange(W1, device=u.device)  # (nseq, W1)
                taps = xBC[0, idx.clamp(min=0)]  # (nseq, W1, conv_dim)
                conv_final = taps.masked_fill((idx < cu[:-1, None])[..., None], 0).transpose(1, 2)
        xBC = conv_out.transpose(1, 2)  # (B, L, conv_dim)
        if xBC.stride(-1) != 1:
            xBC = xBC.contiguous()
        x, Bm, Cm = _split(xBC, [di, G * N, G * N], slabs)
        if slabs:
            stack.enter_context(grad_slabs(slabs[-1]))
        hooks = contextlib.nullcontext()
        if (CONV_RECOMPUTE and state is None and torch.is_grad_enabled() and conv_out.requires_grad
                and not torch.compiler.is_compiling() and not _outer_saved_hooks()):
            src, cw = _source(zxbcdt), self.conv_weight.detach()
            cb = None if self.conv_bias is None else self.conv_bias.detach()
            seq_idx = None if packed is None else packed.seq_idx
            hooks = _recompute_saved(conv_out, lambda: causal_conv1d(
                src()[..., di: di + self.conv_dim].transpose(1, 2), cw, cb, activation="silu", seq_idx=seq_idx))
        with hooks:  # training: the conv output that ssd_scan saves is recomputed in its backward
            y = ssd_scan(
                x.unflatten(-1, (H, P)),  # (B, L, H, P)
                dt,  # (B, L, H)
                self._A(u),
                Bm.unflatten(-1, (G, N)),  # (B, L, G, N)
                Cm.unflatten(-1, (G, N)),
                chunk_size=self.cfg.chunk_size, D=self.D, z=None if FUSED_NORMS else z.unflatten(-1, (H, P)),
                dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.cfg.dt_limit,
                return_final_states=state is not None, cu_seqlens=None if packed is None else packed.cu_seqlens,
            )
        if state is not None:
            y, ssm_final = y  # (B or nseq, H, P, N)
            rows = slice(None) if rows is None else rows
            state.conv[rows] = conv_final.to(state.conv.dtype)
            state.ssm[rows] = ssm_final.to(state.ssm.dtype)
        y = y.reshape(Bsz, L, di)
        if FUSED_NORMS:  # gate, norm and out_proj: norm(y * silu(z)) * w in one pass, z read in place
            return self.norm.gated_linear(self.out_proj, y, z)  # (B, L, d)
        return self.out_proj(self.norm(y))  # (B, L, d)

    def allocate_state(self, batch: int, dtype, device) -> MambaState:
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        return MambaState(
            conv=torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, dtype=dtype, device=device),
            ssm=torch.zeros(batch, self.nheads, self.headdim, self.d_state, dtype=sdt, device=device),
        )

    def step(self, u, state: MambaState):
        """One decoding step. u: (B, d_model); state updated in place. Returns (B, d_model)."""
        Bsz = u.shape[0]
        di, H, P, G, N = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        zxbcdt = self.in_proj(u)  # (B, 2di + 2GN + H)
        z, xBC, dt = torch.split(zxbcdt, [di, self.conv_dim, H], dim=-1)
        xBC = causal_conv1d_step(xBC, state.conv, self.conv_weight, self.conv_bias, activation="silu")
        x, Bm, Cm = torch.split(xBC, [di, G * N, G * N], dim=-1)
        y = ssd_step(
            state.ssm,
            x.unflatten(-1, (H, P)),  # (B, H, P)
            dt,  # (B, H)
            self._A_step(u),
            Bm.unflatten(-1, (G, N)),  # (B, G, N)
            Cm.unflatten(-1, (G, N)),
            D=self.D, z=None if FUSED_NORMS else z.unflatten(-1, (H, P)), dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=self.cfg.dt_limit,
        )
        y = y.reshape(Bsz, di)
        return self.out_proj(self.norm.gated(y, z) if FUSED_NORMS else self.norm(y))  # (B, d)


def rotary_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype):
    """positions: (B, L) ints -> cos, sin (B, L, 1, dim / 2)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[..., None] * inv  # (B, L, dim / 2)
    return ang.cos().to(dtype)[:, :, None], ang.sin().to(dtype)[:, :, None]


def apply_rotary(x, cos, sin):
    """x: (B, L, H, D); rotate-half (GPT-NeoX) convention."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Attention(nn.Module):
    """Grouped-query causal attention with a fused QKV projection; optional rotary and sliding window."""

    def __init__(self, cfg: HybriDNAConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.hq, self.hkv, self.hd = cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, (self.hq + 2 * self.hkv) * self.hd, bias=False)
        self.out_proj = nn.Linear(self.hq * self.hd, cfg.d_model, bias=False)

    def _qkv(self, x, positions):
        return self._split_qkv(self.qkv_proj(x), positions)

    def _split_qkv(self, qkv, positions, slabs=None):  # (B, L, (hq + 2 hkv) hd) -> q, k, v
        dt = qkv.dtype if qkv.dtype == torch.float64 else torch.float32
        q, k, v = _split(qkv, [self.hq * self.hd, self.hkv * self.hd, self.hkv * self.hd], slabs)
        q = q.unflatten(-1, (self.hq, self.hd))  # (B, L, hq, hd)
        k = k.unflatten(-1, (self.hkv, self.hd))  # (B, L, hkv, hd)
        v = v.unflatten(-1, (self.hkv, self.hd))
        if self.cfg.rotary:
            cos, sin = rotary_cos_sin(positions, self.hd, self.cfg.rope_theta, dt)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def forward(self, x, state: KVState | None = None, rows=None, packed: Packed | None = None):
        """x: (B, L, d_model), or (1, total) packed sequences with `packed` (they never see each other).
        With `state`, also writes K and V into state[rows, :L] (each packed sequence into its row)."""
        return self.mix(self.qkv_proj(x), state, rows, packed)

    def mix(self, qkv, state: KVState | None = None, rows=None, packed: Packed | None = None):
        """The mixer after qkv_proj: qkv (B, L, (hq + 2 hkv) hd) -> (B, L, d_model)."""
        B, L, _ = qkv.shape
        x = qkv
        positions = None
        if self.cfg.rotary:
            positions = torch.arange(L, device=x.device).expand(B, L) if packed is None else packed.positions
        # GRAD_SLABS: flash attention's backward writes dq, dk, dv into one buffer (rotary: q, k are new tensors)
        slabs = [] if not self.cfg.rotary and _use_slabs(qkv, state) else None
        q, k, v = self._split_qkv(qkv, positions, slabs)
        with grad_slabs(*(slabs or ())):
            if packed is None:
                o = flash_attention(q, k, v, causal=True, window=self.cfg.attn_window)  # (B, L, hq, hd)
            else:
                o = flash_attention(q, k, v, causal=True, window=self.cfg.attn_window,
                                    cu_seqlens=packed.cu_seqlens, max_seqlen=packed.max_seqlen)
        if state is not None:
            rows = slice(None) if rows is None else rows
            if packed is None:
                state.k[rows, :L] = k.to(state.k.dtype)
                state.v[rows, :L] = v.to(state.v.dtype)
            else:
                cu = packed.cu_seqlens.tolist()
                for i, r in enumerate(range(state.k.shape[0])[rows]):
                    state.k[r, : cu[i + 1] - cu[i]] = k[0, cu[i]: cu[i + 1]]
                    state.v[r, : cu[i + 1] - cu[i]] = v[0, cu[i]: cu[i + 1]]
        return self.out_proj(o.reshape(B, L, self.hq * self.hd))  # (B, L, d)

    def allocate_state(self, batch: int, max_len: int, dtype, device) -> KVState:
        shape = (batch, max_len, self.hkv, self.hd)
        return KVState(k=torch.zeros(shape, dtype=dtype, device=device),
                       v=torch.zeros(shape, dtype=dtype, device=device))

    def step(self, x, state: KVState, lengths: list[int]):
        """One decoding step. x: (B, d_model); lengths: each row's cache length before this token
        (host ints). Writes K, V at position lengths[b] and attends over the first lengths[b] + 1 keys."""
        B = x.shape[0]
        positions = None
        if self.cfg.rotary:
            positions = torch.tensor(lengths, device=x.device)[:, None]  # (B, 1)
        q, k, v = self._qkv(x[:, None], positions)  # (B, 1, h, hd)
        W = self.cfg.attn_window
        if all(n == lengths[0] for n in lengths):
            n = lengths[0]
            state.k[:, n] = k[:, 0]
            state.v[:, n] = v[:, 0]
            lo = 0 if W is None else max(0, n + 1 - W)  # a window only needs its last W keys
            o = flash_attention(q, state.k[:, lo: n + 1], state.v[:, lo: n + 1], causal=True)
        else:  # rows of different lengths: one call per row over its own keys
            outs = []
            for b, n in enumerate(lengths):
                state.k[b, n] = k[b, 0]
                state.v[b, n] = v[b, 0]
                lo = 0 if W is None else max(0, n + 1 - W)
                outs.append(flash_attention(q[b: b + 1], state.k[b: b + 1, lo: n + 1],
                                            state.v[b: b + 1, lo: n + 1], causal=True))
            o = torch.cat(outs)
        return self.out_proj(o.reshape(B, self.hq * self.hd))  # (B, d)


class _SwiGLUDownFn(torch.autograd.Function):
    """down(silu(g) * u) of h = [g | u] (the gate_up output, (..., 2F)), bias-free. Same ops as the
    plain expression, but only h is saved: silu(g) * u, the (..., F) input of down, is recomputed in
    the backward instead of kept (one activation less per layer), and dg, du are written into halves
    of one (..., 2F) gradient, so the backward of chunk() does not cat them into a new buffer."""

    @staticmethod
    def forward(ctx, h, w_down, fused=False):
        ctx.fused = fused  # the hybridna_kernels.swiglu kernels for silu(g) * u and dh
        if fused:
            a = swiglu_fwd(h)
        else:
            g, u = h.chunk(2, dim=-1)
            a = F.silu(g) * u  # (..., F)
        ctx.save_for_backward(h, w_down)
        return F.linear(a, w_down.to(a.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        h, w_down = ctx.saved_tensors
        if ctx.fused:  # one kernel reads h once and writes dh and silu(g) * u
            dout = dout.to(h.dtype)
            dh, a = swiglu_bwd(h, dout @ w_down.to(dout.dtype), return_a=True)
            dw = (dout.reshape(-1, dout.shape[-1]).t() @ a.reshape(-1, a.shape[-1])).to(w_down.dtype)
            return dh, dw, None
        g, u = h.chunk(2, dim=-1)
        sg = F.silu(g)
        a = sg * u
        dout = dout.to(a.dtype)
        dw = (dout.reshape(-1, dout.shape[-1]).t() @ a.reshape(-1, a.shape[-1])).to(w_down.dtype)
        del a
        da = dout @ w_down.to(dout.dtype)  # (..., F)
        dh = torch.empty_like(h, memory_format=torch.contiguous_format)
        dg, du = dh.chunk(2, dim=-1)
        torch.mul(da, sg, out=du)
        torch.ops.aten.silu_backward.grad_input(da * u, g, grad_input=dg)
        return dh, dw, None


class _NormMLPFn(torch.autograd.Function):
    """(down(swiglu(gate_up(rms_norm(x + m)))), x + m): a block's residual add, norm2 and SwiGLU MLP as
    one node, through the fused norm and SwiGLU kernels. Saved: the new residual s = x + m (which the
    norm's backward needs anyway), its rstd and, unless recompute, the gate_up output h. The normed
    activation p and silu(g) * u are recomputed in the backward (as rms_norm_linear and _SwiGLUDownFn
    do); with recompute, h = gate_up(p) too (one more matmul for 2F 16-bit values per token less).
    The backward's SwiGLU kernel reads h once and writes both dh and silu(g) * u."""

    @staticmethod
    def forward(ctx, x, m, norm_w, w_gu, w_down, eps, out_dtype, recompute):
        p, s, rstd = rms_norm_fwd(x, norm_w, eps, m, out_dtype, store_s=True)
        h = F.linear(p, w_gu.to(p.dtype))
        del p
        out = F.linear(swiglu_fwd(h), w_down.to(h.dtype))
        ctx.save_for_backward(s, norm_w, w_gu, w_down, rstd, None if recompute else h)
        ctx.cfg = (eps, out_dtype, x.dtype, m.dtype)
        return out, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, ds):
        s, norm_w, w_gu, w_down, rstd, h = ctx.saved_tensors
        eps, out_dtype, x_dtype, m_dtype = ctx.cfg
        p = None
        if h is None:  # recompute the normed activation p, then h = gate_up(p)
            p = rms_norm_fwd(s, norm_w, eps, None, out_dtype, store_s=False)[0]
            h = F.linear(p, w_gu.to(p.dtype))
        dout = dout.to(h.dtype)
        dh, a = swiglu_bwd(h, dout @ w_down.to(h.dtype), return_a=True)
        del h
        dw_down = (dout.reshape(-1, dout.shape[-1]).t() @ a.reshape(-1, a.shape[-1])).to(w_down.dtype)
        del a
        dp = dh @ w_gu.to(dh.dtype)
        if p is None:  # h was kept: the norm's backward pass writes p too (bit-equal to the forward's)
            dx, dm, dnw, p = rms_norm_bwd(s, norm_w, rstd, dp, ds, x_dtype, m_dtype, y_dtype=out_dtype)
        else:
            dx, dm, dnw = rms_norm_bwd(s, norm_w, rstd, dp, ds, x_dtype, m_dtype)
        del dp
        dw_gu = (dh.reshape(-1, dh.shape[-1]).t() @ p.reshape(-1, p.shape[-1])).to(w_gu.dtype)
        return dx, (dm if dm is not None else dx), dnw, dw_gu, dw_down, None, None, None


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_intermediate: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_intermediate, bias=False)
        self.down = nn.Linear(d_intermediate, d_model, bias=False)

    def forward(self, x):  # (..., d)
        return self.from_gate_up(self.gate_up(x))

    def from_gate_up(self, h):  # h = [g | u] (..., 2F) -> down(silu(g) * u) (..., d)
        fused = FUSED_SWIGLU and h.dtype != torch.float64 and use_kernel(h)
        if fused and (torch.compiler.is_compiling() or self.down.bias is not None):
            return self.down(swiglu(h))  # compiled: an opaque custom op, no graph break
        if torch.compiler.is_compiling() or self.down.bias is not None:
            g, u = h.chunk(2, dim=-1)  # compiled: the partitioner decides what to save and fuses the backward
            return self.down(F.silu(g) * u)
        return _SwiGLUDownFn.apply(h, self.down.weight, fused)


class Block(nn.Module):
    def __init__(self, cfg: HybriDNAConfig, layer_idx: int):
        super().__init__()
        self.is_attention = cfg.is_attention(layer_idx)
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Attention(cfg, layer_idx) if self.is_attention else Mamba2Mixer(cfg, layer_idx)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_intermediate) if cfg.d_intermediate else None
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps) if self.mlp is not None else None
        # MLP_RECOMPUTE for this block: None takes the module's (HYBRIDNA_MLP_RECOMPUTE); a fraction f in [0, 1] as
        # there (set for a whole model by set_mlp_recompute)
        self.mlp_recompute: float | None = None

    def forward(self, x, state=None, rows=None, packed=None, delta=None, defer_add: bool = False):  # (B, L, d)
        """x + mixer(norm(x)), then + mlp(norm(.)). With defer_add, the block's input is x + delta
        (delta None: x alone) and it returns (x', delta') whose sum is its output: each residual add
        is then fused into the RMSNorm that follows it, so the stream is read and written once per
        norm. (One forward for both, so module hooks such as FSDP's unsharding see every call.)"""
        # each norm fused with the projection after it (the normed activation is not saved)
        lin1 = self.mixer.qkv_proj if self.is_attention else self.mixer.in_proj
        if delta is None:
            p = self.norm1.linear(lin1, x)
        else:
            p, x = self.norm1.linear(lin1, x, delta)
        with self._inproj_recompute(x, p, lin1, state):
            m = self.mixer.mix(p, state, rows, packed)
        if self.mlp is None:
            return (x, m) if defer_add else x + m
        x, m = self.mlp_residual(x, m)
        return (x, m) if defer_add else x + m

    def _inproj_recompute(self, x, p, lin1, state):
        """INPROJ_RECOMPUTE: the context under which the mixer's saved views of p = in_proj(norm1(x))
        are recomputed from x (the residual stream, saved by norm1) instead of kept."""
        if not (INPROJ_RECOMPUTE and FUSED_NORMS and not self.is_attention and state is None and lin1.bias is None
                and torch.is_grad_enabled() and p.requires_grad and not torch.compiler.is_compiling()
                and not _outer_saved_hooks()):
            return contextlib.nullcontext()
        xs = x.detach()
        return _recompute_saved(p, lambda: self.norm1.linear(lin1, xs))

    def _mlp_recompute(self) -> bool:
        f = float(MLP_RECOMPUTE if self.mlp_recompute is None else self.mlp_recompute)
        return f >= 1 or self.mixer.layer_idx < round(f * self.mixer.cfg.n_layer)

    def mlp_residual(self, x, m):
        """(x + m, mlp(norm2(x + m))): the residual add, norm2 and the MLP. Its own method so that
        training code can checkpoint just this part (it saves the most per token after the mixer)."""
        mlp, norm2 = self.mlp, self.norm2
        if (FUSED_NORMS and FUSED_SWIGLU and mlp.gate_up.bias is None and mlp.down.bias is None
                and torch.float64 not in (x.dtype, m.dtype, norm2.weight.dtype) and use_kernel(x)
                and x.numel() > 0 and not torch.compiler.is_compiling()):
            # one node: residual add + norm2 + gate_up + SwiGLU + down (_NormMLPFn)
            out, x = _NormMLPFn.apply(x, m, norm2.weight, mlp.gate_up.weight, mlp.down.weight, float(norm2.eps),
                                      _autocast_dtype(x) or x.dtype, self._mlp_recompute())
            return x, out
        p, x = norm2.linear(mlp.gate_up, x, m)
        return x, mlp.from_gate_up(p)

    def step(self, x, state, lengths):  # (B, d)
        if self.is_attention:
            x = x + self.mixer.step(self.norm1(x), state, lengths)
        else:
            x = x + self.mixer.step(self.norm1(x), state)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


@dataclass
class HybriDNAOutput:
    logits: torch.Tensor | None  # (B, L, vocab_size)
    loss: torch.Tensor | None = None  # scalar, mean next-token cross-entropy (nats)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # n_layer + 1 of (B, L, d)


def _lengths_from(input_ids, lengths=None, attention_mask=None):
    """Each row's true length: given, from a mask, or up to the last non-pad token (right padding)."""
    B, L = input_ids.shape
    if lengths is not None:
        out = torch.as_tensor(lengths, device=input_ids.device).reshape(-1).long()
        if out.shape[0] != B or bool((out < 1).any()) or bool((out > L).any()):
            raise ValueError(f"lengths: expected {B} values in 1..{L}, got {out.tolist()}")
        return out
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask: expected shape {(B, L)}, got {tuple(attention_mask.shape)}")
        return attention_mask.to(torch.long).sum(1)
    nonpad = (input_ids != PAD_ID).long()
    pos = torch.arange(1, L + 1, device=input_ids.device)
    return (nonpad * pos).amax(1).clamp(min=1)


class HybriDNA(nn.Module):
    def __init__(self, config: HybriDNAConfig):
        super().__init__()
        if not isinstance(config, HybriDNAConfig):
            raise ValueError(f"config: expected a HybriDNAConfig, got {type(config).__name__}")
        config.validate()
        self.config = cfg = config
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    @torch.no_grad()
    def _init_weights(self):
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if self.config.rescale_prenorm_residual:
            # GPT-2: projections that write into the residual stream scaled by 1/sqrt(2 n_layer).
            for blk in self.layers:
                for lin in (blk.mixer.out_proj, blk.mlp.down if blk.mlp is not None else None):
                    if lin is not None:
                        lin.weight.mul_(1.0 / math.sqrt(2 * self.config.n_layer))

    def set_mlp_recompute(self, fraction: float | None) -> None:
        """Training memory against speed: recompute each block's gate_up output in the backward (1.0, the default of
        HYBRIDNA_MLP_RECOMPUTE) or save it (0.0: 2 * d_intermediate 16-bit values more per token and block; the 300m
        at 1 x 32768 on an H200: +3.6% tokens/s for 5.8 GiB more); a fraction in between recomputes in the first
        round(fraction * n_layer) blocks. None: back to HYBRIDNA_MLP_RECOMPUTE."""
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"fraction: expected None or a number in [0, 1], got {fraction!r}")
        for blk in self.layers:
            blk.mlp_recompute = None if fraction is None else float(fraction)

    # ---- forward -----------------------------------------------------------------------------------
    def num_params(self, *, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.embedding.weight.numel()

    def _check_ids(self, input_ids):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (
                torch.int64, torch.int32):
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected an int64 tensor (batch, seqlen), got {got}")
        if input_ids.shape[1] < 1:
            raise ValueError("input_ids: expected at least one token per row")

    def hidden(self, input_ids, *, output_hidden_states=False, state=None, rows=None, lengths=None):
        """The final normed hidden states (B, L, d) and, optionally, all n_layer + 1 hidden states
        (embeddings, then the output of every block; the last one is normed).

        lengths: with input_ids (1, total), the lengths of the sequences packed into the row; each is
        processed as if alone (SSD and conv states restart, attention stays within the sequence).
        state / rows: an InferenceCache and the cache rows this call fills (one per packed sequence)."""
        packed = None
        if lengths is not None:
            lengths = [int(n) for n in lengths]
            if input_ids.shape[0] != 1 or sum(lengths) != input_ids.shape[1] or min(lengths) < 1:
                raise ValueError(f"lengths: expected positive lengths summing to seqlen {input_ids.shape[1]} "
                                 f"of a (1, total) input, got {lengths} for shape {tuple(input_ids.shape)}")
            packed = Packed.from_lengths(lengths, input_ids.device)
        x = self.embedding(input_ids)  # (B, L, d)
        if output_hidden_states:
            hs = [x]
            for i, blk in enumerate(self.layers):
                x = blk(x, None if state is None else state.layers[i], rows, packed)
                hs.append(x)
            x = self.norm_f(x)
            hs[-1] = x
            return x, tuple(hs)
        delta = None  # the residual stream is x + delta; the adds happen inside the next norm
        for i, blk in enumerate(self.layers):
            x, delta = blk(x, None if state is None else state.layers[i], rows, packed, delta=delta, defer_add=True)
        x = self.norm_f(x) if delta is None else self.norm_f(x, delta)[0]
        return x, None

    def logits_from_hidden(self, h):  # (..., d) -> (..., vocab_size)
        return self.lm_head(h)[..., : self.config.vocab_size]

    def forward(self, input_ids, labels=None, *, output_hidden_states: bool = False) -> HybriDNAOutput:
        """input_ids: (B, L) token ids. labels: (B, L) token ids (usually input_ids): the loss is the
        mean cross-entropy of predicting labels[:, t + 1] from positions <= t, ignoring labels that are
        <pad>, -100, and (config.loss_ignore_n) N. Returns HybriDNAOutput(logits, loss, hidden_states)."""
        self._check_ids(input_ids)
        h, hs = self.hidden(input_ids, output_hidden_states=output_hidden_states)
        logits = self.logits_from_hidden(h)  # (B, L, V)
        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(input_ids.shape):
                raise ValueError(f"labels: expected shape {tuple(input_ids.shape)} like input_ids, "
                                 f"got {tuple(labels.shape)}")
            lg = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(lg.to(torch.promote_types(lg.dtype, torch.float32)),
                                   self._loss_targets(labels)[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        return HybriDNAOutput(logits=logits, loss=loss, hidden_states=hs)

    def _loss_targets(self, labels):
        ignore = labels == PAD_ID
        if self.config.loss_ignore_n:
            ignore |= labels == N_ID
        return labels.long().masked_fill(ignore, IGNORE_INDEX)

    # ---- generation (generation.py) ------------------------------------------------------------------
    def generate(self, input_ids, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, eos_token_id: int | None = None, **kwargs):
        """Sample continuations with a recurrent cache; see `hybridna.generation.generate`."""
        from .generation import generate

        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, eos_token_id=eos_token_id, **kwargs)

    # ---- scoring -------------------------------------------------------------------------------------
    @torch.no_grad()
    def token_log_probs(self, input_ids):
        """log p(x_t | x_<t) for t >= 1 as (B, L - 1) fp32 (fp64 for fp64 models), with a mask
        (B, L - 1) of the positions that count (not pad, and not N when config.loss_ignore_n)."""
        self._check_ids(input_ids)
        logits = self.forward(input_ids).logits[:, :-1]  # (B, L-1, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        tgt = self._loss_targets(input_ids)[:, 1:]  # (B, L-1)
        keep = tgt != IGNORE_INDEX
        lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        return lp.masked_fill(~keep, 0.0), keep

    @torch.no_grad()
    def score(self, input_ids, *, reduce: str = "sum", rc_average: bool = False):
        """Per-sequence log-likelihood (natural log) of right-padded token ids (B, L).

        reduce="sum" sums log p over the predicted positions (every token after the first that is not
        pad or N); "mean" divides by their count (nats per base). rc_average=True averages with the
        score of the reverse complement (nucleotides reversed and complemented, special and prompt
        tokens kept in place). Prepend <bos> to score the first base too. Returns (B,) fp32 (fp64 for
        fp64 models)."""
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce: expected 'sum' or 'mean', got {reduce!r}")
        lp, keep = self.token_log_probs(input_ids)
        s = lp.sum(1)
        if reduce == "mean":
            s = s / keep.sum(1).clamp(min=1)
        if rc_average:
            s = 0.5 * (s + self.score(reverse_complement_ids(input_ids), reduce=reduce))
        return s

    @torch.no_grad()
    def variant_effect(self, ref_ids, alt_ids, *, rc_average: bool = False):
        """Log-likelihood ratio log p(alt) - log p(ref) per row (B,): negative means the model finds
        the alternative allele less likely. ref_ids / alt_ids: (B, L) token ids of the same windows."""
        return self.score(alt_ids, rc_average=rc_average) - self.score(ref_ids, rc_average=rc_average)

    # ---- embeddings ----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, input_ids, *, echo: bool = True, pool: str = "mean", layer: int = -1, lengths=None,
              attention_mask=None):
        """Sequence embeddings (B, d_model) from right-padded token ids (B, L).

        echo=True feeds each sequence twice ([x, x], a leading <bos> not repeated) and pools the hidden
        states of the second copy, so every pooled position has seen the whole sequence. pool: "mean"
        over the sequence's tokens or "last" token. layer: which hidden state (0 = embeddings,
        i = output of block i, -1 = the final normed output). Row lengths come from `lengths`,
        `attention_mask`, or the last non-pad token."""
        if pool not in ("mean", "last"):
            raise ValueError(f"pool: expected 'mean' or 'last', got {pool!r}")
        self._check_ids(input_ids)
        n_hs = self.config.n_layer + 1
        if not -n_hs <= layer < n_hs:
            raise ValueError(f"layer: expected -{n_hs} <= layer < {n_hs}, got {layer}")
        lens = _lengths_from(input_ids, lengths, attention_mask)  # (B,)
        B = input_ids.shape[0]
        if echo:
            rows, starts = [], []
            for b in range(B):
                seq = input_ids[b, : int(lens[b])]
                second = seq[1:] if seq[0] == BOS_ID and seq.numel() > 1 else seq
                rows.append(torch.cat([seq, second]))
                starts.append(seq.numel())
            width = max(r.numel() for r in rows)
            ids = input_ids.new_full((B, width), PAD_ID)
            for b, r in enumerate(rows):
                ids[b, : r.numel()] = r
            starts = torch.tensor(starts, device=input_ids.device)
            ends = torch.tensor([r.numel() for r in rows], device=input_ids.device)
        else:
            ids, starts, ends = input_ids, torch.zeros_like(lens), lens
        h, hs = self.hidden(ids, output_hidden_states=layer not in (-1, n_hs - 1))
        h = h if hs is None else hs[layer]  # (B, L, d)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, L)
        if pool == "last":
            return h[torch.arange(B, device=h.device), ends - 1].float()
        m = ((pos >= starts[:, None]) & (pos < ends[:, None])).to(torch.float32)[..., None]  # (B, L, 1)
        return (h.float() * m).sum(1) / m.sum(1)

    # ---- vocabulary ------------------------------------------------------------------------------------
    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int, added_tokens: list[str] | None = None):
        """Grow (or keep) the vocabulary to vocab_size real tokens. New rows of the embedding (and of an
        untied head) are initialised to the mean of the existing base-token rows, so a trained model's
        predictions for old tokens barely change."""
        cfg = self.config
        if vocab_size < NUM_BASE_TOKENS:
            raise ValueError(f"vocab_size: expected at least {NUM_BASE_TOKENS}, got {vocab_size}")
        old_v = cfg.vocab_size
        cfg.vocab_size = vocab_size
        if added_tokens is not None:
            cfg.added_tokens = list(added_tokens)
        cfg.validate()
        new_pv = cfg.padded_vocab_size
        w = self.embedding.weight
        if new_pv != w.shape[0]:
            emb = nn.Embedding(new_pv, cfg.d_model, device=w.device, dtype=w.dtype)
            emb.weight.zero_()
            emb.weight[: w.shape[0]] = w[: min(w.shape[0], new_pv)]
            self.embedding = emb
            if cfg.tie_embeddings:
                self.lm_head = nn.Linear(cfg.d_model, new_pv, bias=False, device=w.device, dtype=w.dtype)
                self.lm_head.weight = self.embedding.weight
            else:
                hw = self.lm_head.weight
                head = nn.Linear(cfg.d_model, new_pv, bias=False, device=hw.device, dtype=hw.dtype)
                head.weight.zero_()
                head.weight[: hw.shape[0]] = hw[: min(hw.shape[0], new_pv)]
                self.lm_head = head
        if vocab_size > old_v:
            base = slice(A_ID, NUM_BASE_TOKENS)  # new rows start from the mean of A C G T N
            self.embedding.weight[old_v:vocab_size] = self.embedding.weight[base].mean(0)
            if not cfg.tie_embeddings:
                self.lm_head.weight[old_v:vocab_size] = self.lm_head.weight[base].mean(0)
        return self

    def add_tokens(self, tokenizer: DNATokenizer, tokens) -> list[int]:
        """Add prompt tokens to the tokenizer and grow this model's embedding to match."""
        ids = tokenizer.add_tokens(tokens)
        if tokenizer.vocab_size > self.config.vocab_size:
            self.resize_token_embeddings(tokenizer.vocab_size, tokenizer.added_tokens)
        else:
            self.config.added_tokens = list(tokenizer.added_tokens)
        return ids

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, tokenizer: DNATokenizer | None = None) -> None:
        """Write config.json, model.safetensors and tokenizer.json (the given tokenizer, or one with the
        config's added tokens) to `directory`."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        if tokenizer is not None:
            if tokenizer.vocab_size > self.config.vocab_size:
                raise ValueError(f"tokenizer: has {tokenizer.vocab_size} tokens but the model only "
                                 f"{self.config.vocab_size}; call model.resize_token_embeddings first")
            self.config.added_tokens = list(tokenizer.added_tokens)
        self.config.save(os.path.join(directory, "config.json"))
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            sd.pop("lm_head.weight", None)  # shared with the embedding; safetensors refuses aliases
        save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        (tokenizer or DNATokenizer(self.config.added_tokens)).save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device=None, dtype=None) -> "HybriDNA":
        """Load a directory written by save_pretrained (safetensors only: nothing is unpickled)."""
        from safetensors.torch import load_file

        cfg_path = os.path.join(directory, "config.json")
        w_path = os.path.join(directory, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.exists(p):
                raise ValueError(f"directory: {p} not found (expected a save_pretrained directory)")
        with open(cfg_path) as f:
            cfg = HybriDNAConfig.from_dict(json.load(f))
        with torch.device("meta"):
            model = cls(cfg)
        sd = load_file(w_path)
        if cfg.tie_embeddings:
            sd["lm_head.weight"] = sd["embedding.weight"]
        model.load_state_dict(sd, strict=True, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embedding.weight
        return model.to(device=device, dtype=dtype)

