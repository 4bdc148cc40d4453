"""Batch-1 decode GEMV, y = W a (W an nn.Linear weight (N, K)), with the decode step's neighbours fused.

Prologue (on the input a, (B, K)): nothing, an RMSNorm (NORM=1, the rms over all K), or the gated
RMSNorm of Mamba2 (NORM=2: a = y * silu(z), the rms per group of GROUP channels). Every program
recomputes the rms itself (K <= a few thousand elements, read from L2), so no separate norm kernel.
The normed activation is rounded to the weight dtype before the product, like the unfused path
(norm writes the autocast dtype, the matmul reads it).

Epilogue (EPI):
  0  out = y
  1  out = residual + y                        (the residual add after out_proj / down)
  2  out[:, j] = silu(y[j]) * y[F + j]          (gate_up + SwiGLU: a program owns rows j and F + j)
  3  conv step on rows [C0, C0 + CW): out = silu(conv(state, y)), state shifted in place; other
     rows raw (in_proj + causal_conv1d_step: each channel's state is owned by one program)
  4  rows [0, QN) -> out (q), [QN, QN + KVN) -> k_cache[b, pos[b]], the next KVN -> v_cache[b, pos[b]]
     (qkv_proj writing K and V into the cache at a position read from a device tensor)

Memory-bound: each program owns BN output rows (2 BN weight rows for SwiGLU) and streams them in
(BN, BK) tiles, accumulating elementwise in fp32 and reducing once at the end.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..utils import cdiv, interpret_mode, new_empty, next_pow2, num_sms

__all__ = ["decode_gemv", "gemv_config"]


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _act(p_a, p_z, o_k, m_k, NORM: tl.constexpr):
    """The GEMV input at columns o_k in fp32: a, or a * silu(z) for the gated norm."""
    a = tl.load(p_a + o_k, mask=m_k, other=0.0).to(tl.float32)
    if NORM == 2:
        a = a * _silu(tl.load(p_z + o_k, mask=m_k, other=0.0).to(tl.float32))
    return a


@triton.jit
def _epilogue(y, u, o_n, m_n, i_b, OUT, R, S, CW, CB, KC, VC, POS, C0, QN, KVN,
              sob, srb, ssb, ssd, ssk, skb, skt, svb, svt,
              EPI: tl.constexpr, HAS_CB: tl.constexpr, CW_: tl.constexpr, WP: tl.constexpr):
    """Write rows o_n of the output from y = W a (and u = W_u a for SwiGLU), fp32, rounded already."""
    o_n64 = o_n.to(tl.int64)
    p_o = OUT + i_b * sob + o_n64
    if EPI == 0:
        tl.store(p_o, y.to(OUT.dtype.element_ty), mask=m_n)
    if EPI == 1:
        r = tl.load(R + i_b * srb + o_n64, mask=m_n, other=0.0).to(tl.float32)
        tl.store(p_o, (r + y).to(OUT.dtype.element_ty), mask=m_n)
    if EPI == 2:
        g = _silu(y).to(OUT.dtype.element_ty).to(tl.float32)
        tl.store(p_o, (g * u).to(OUT.dtype.element_ty), mask=m_n)
    if EPI == 3:
        o_c = o_n - C0
        m_c = m_n & (o_c >= 0) & (o_c < QN)  # QN: the number of conv channels
        o_c64 = tl.where(m_c, o_c, 0).to(tl.int64)
        o_w = tl.arange(0, WP)
        p_s = S + i_b * ssb + o_c64[:, None] * ssd + o_w.to(tl.int64)[None, :] * ssk
        m_s = m_c[:, None] & (o_w < CW_ - 1)[None, :]
        win = tl.load(p_s, mask=m_s, other=0.0).to(tl.float32)
        win = tl.where((o_w == CW_ - 1)[None, :], y[:, None], win)  # window = [state, x]
        cw = tl.load(CW + o_c64[:, None] * CW_ + o_w[None, :], mask=m_c[:, None] & (o_w < CW_)[None, :],
                     other=0.0).to(tl.float32)
        c = tl.sum(cw * win, 1)
        if HAS_CB:
            c += tl.load(CB + o_c64, mask=m_c, other=0.0).to(tl.float32)
        c = _silu(c)
        tl.store(p_o, tl.where(m_c, c, y).to(OUT.dtype.element_ty), mask=m_n)
        # new state = window[1:]: this program owns these channels, so no other program reads them
        new = tl.load(p_s + ssk, mask=m_c[:, None] & (o_w < CW_ - 2)[None, :], other=0.0).to(tl.float32)
        new = tl.where((o_w == CW_ - 2)[None, :], y[:, None], new)
        tl.debug_barrier()
        tl.store(p_s, new.to(S.dtype.element_ty), mask=m_s)
    if EPI == 4:
        pos = tl.load(POS + i_b).to(tl.int64)
        tl.store(p_o, y.to(OUT.dtype.element_ty), mask=m_n & (o_n < QN))
        o_k_ = tl.where(o_n >= QN, o_n - QN, 0).to(tl.int64)
        tl.store(KC + i_b * skb + pos * skt + o_k_, y.to(KC.dtype.element_ty),
                 mask=m_n & (o_n >= QN) & (o_n < QN + KVN))
        o_v_ = tl.where(o_n >= QN + KVN, o_n - QN - KVN, 0).to(tl.int64)
        tl.store(VC + i_b * svb + pos * svt + o_v_, y.to(VC.dtype.element_ty), mask=m_n & (o_n >= QN + KVN))


@triton.jit
def _gemv_kernel(
    A, Z, NW, W, OUT, R, S, CW, CB, KC, VC, POS,
    N, K, eps, C0, QN, KVN,
    sab, szb, sob, srb, ssb, ssd, ssk, skb, skt, svb, svt,
    NORM: tl.constexpr, GROUP: tl.constexpr, EPI: tl.constexpr, HAS_CB: tl.constexpr,
    CW_: tl.constexpr, WP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr,
    ONE_TILE: tl.constexpr, PERSIST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_kk = tl.arange(0, BK)
    p_a = A + i_b * sab
    p_z = Z + i_b * szb
    if PDL:
        # programmatic dependent launch: let the next kernel start, read the weights (which no kernel
        # writes) while the previous kernel finishes, then wait for it before reading its outputs and
        # before writing anything
        tl.extra.cuda.gdc_launch_dependents()
    if ONE_TILE:  # K <= BK, one norm group: weights first, the normed activation once per program
        m_k1 = o_kk < K
        o_n = pid_n * BN + tl.arange(0, BN)
        m_w1 = (o_n < N)[:, None] & m_k1[None, :]
        p_w = W + o_n.to(tl.int64)[:, None] * K + o_kk[None, :]
        w1 = tl.load(p_w, mask=m_w1, other=0.0)
        if EPI == 2:
            w21 = tl.load(p_w + N * K, mask=m_w1, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_wait()
        a1 = _act(p_a, p_z, o_kk, m_k1, NORM)
        if NORM != 0:
            rstd1 = tl.rsqrt(tl.sum(a1 * a1, 0) / K + eps)
            a1 = a1 * rstd1 * tl.load(NW + o_kk, mask=m_k1, other=0.0).to(tl.float32)
        a1 = a1.to(W.dtype.element_ty).to(tl.float32)[None, :]
        if PERSIST:  # row blocks pid, pid + G, ...: the next block's weights load during this one's math
            G = tl.num_programs(0)
            for blk in range(pid_n, tl.cdiv(N, BN), G):
                o_n = blk * BN + tl.arange(0, BN)
                m_n = o_n < N
                nxt = (blk + G) * BN + tl.arange(0, BN)
                m_nx = (nxt < N)[:, None] & m_k1[None, :]
                p_nx = W + nxt.to(tl.int64)[:, None] * K + o_kk[None, :]
                w1n = tl.load(p_nx, mask=m_nx, other=0.0)
                y = tl.sum(w1.to(tl.float32) * a1, 1).to(OUT.dtype.element_ty).to(tl.float32)
                u = y
                if EPI == 2:
                    w21n = tl.load(p_nx + N * K, mask=m_nx, other=0.0)
                    u = tl.sum(w21.to(tl.float32) * a1, 1).to(OUT.dtype.element_ty).to(tl.float32)
                    w21 = w21n
                _epilogue(y, u, o_n, m_n, i_b, OUT, R, S, CW, CB, KC, VC, POS, C0, QN, KVN,
                          sob, srb, ssb, ssd, ssk, skb, skt, svb, svt, EPI, HAS_CB, CW_, WP)
                w1 = w1n
        else:
            y = tl.sum(w1.to(tl.float32) * a1, 1).to(OUT.dtype.element_ty).to(tl.float32)
            u = y
            if EPI == 2:
                u = tl.sum(w21.to(tl.float32) * a1, 1).to(OUT.dtype.element_ty).to(tl.float32)
            _epilogue(y, u, o_n, o_n < N, i_b, OUT, R, S, CW, CB, KC, VC, POS, C0, QN, KVN,
                      sob, srb, ssb, ssd, ssk, skb, skt, svb, svt, EPI, HAS_CB, CW_, WP)
    else:  # general K: (BN, BK) tiles along K, per norm group (the rms of a group first)
        if PDL:
            tl.extra.cuda.gdc_wait()
        o_n = pid_n * BN + tl.arange(0, BN)
        m_n = o_n < N
        o_n64 = o_n.to(tl.int64)
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        acc2 = tl.zeros([BN, BK], dtype=tl.float32)
        for g0 in range(0, K, GROUP):
            g1 = g0 + GROUP
            rstd = 1.0
            if NORM != 0:
                ss = tl.zeros([BK], dtype=tl.float32)
                for k0 in range(g0, g1, BK):
                    o_k = k0 + o_kk
                    m_k = o_k < g1
                    a = _act(p_a, p_z, o_k, m_k, NORM)
                    ss += a * a
                rstd = tl.rsqrt(tl.sum(ss, 0) / GROUP + eps)
            for k0 in range(g0, g1, BK):
                o_k = k0 + o_kk
                m_k = o_k < g1
                a = _act(p_a, p_z, o_k, m_k, NORM)
                if NORM != 0:
                    a = a * rstd * tl.load(NW + o_k, mask=m_k, other=0.0).to(tl.float32)
                a = a.to(W.dtype.element_ty).to(tl.float32)[None, :]  # the activation the matmul reads
                m_w = m_n[:, None] & m_k[None, :]
                w = tl.load(W + o_n64[:, None] * K + o_k[None, :], mask=m_w, other=0.0)
                acc += w.to(tl.float32) * a
                if EPI == 2:
                    w2 = tl.load(W + (o_n64 + N)[:, None] * K + o_k[None, :], mask=m_w, other=0.0)
                    acc2 += w2.to(tl.float32) * a
        y = tl.sum(acc, 1).to(OUT.dtype.element_ty).to(tl.float32)  # rounded like a matmul output
        u = tl.sum(acc2, 1).to(OUT.dtype.element_ty).to(tl.float32)
        _epilogue(y, u, o_n, m_n, i_b, OUT, R, S, CW, CB, KC, VC, POS, C0, QN, KVN,
                  sob, srb, ssb, ssd, ssk, skb, skt, svb, svt, EPI, HAS_CB, CW_, WP)


# Programmatic dependent launch (sm_90+): each decode kernel starts while the previous one finishes
# and streams its weights meanwhile. On by default since the round-2 GPU run (H100, 300m bf16 batch 1:
# 0.492 vs 0.616 ms per token at a 1k prompt, 0.662 vs 0.752 at 131k); "0" turns it off. Tests flip
# PDL at run time.
PDL = os.environ.get("HYBRIDNA_DECODE_PDL", "1") != "0"


def use_pdl(t: torch.Tensor) -> bool:
    return PDL and t.is_cuda and not interpret_mode() and torch.cuda.get_device_capability(t.device)[0] >= 9


def _env_cfg():
    v = os.environ.get("HYBRIDNA_GEMV_CFG")  # "BN,BK,warps" for every shape (sweeps)
    return tuple(int(t) for t in v.split(",")) if v else None


def gemv_config(N, K, swiglu=False):
    """(BN, BK, num_warps): one (BN, BK) weight tile of 8K elements per program and step (16 KB of bf16
    in flight; 32 KB with SwiGLU's two tiles), 8 warps: 32 fp32 accumulators per thread and tile, no
    spills on sm_90 (Triton 3.6: 95 registers, 163-194 with SwiGLU). K up to 2048 is one step."""
    env = _env_cfg()
    if env is not None:
        BN, BK, nw = env
        return BN, min(BK, max(16, next_pow2(K))), nw
    tile, nw = _tile_cfg()
    BK = min(2048, max(16, next_pow2(K)))
    BN = max(1, min(32, tile // BK))
    return BN, BK, nw


def _persist() -> int:
    """HYBRIDNA_GEMV_PERSIST=n: n programs per SM, each looping over row blocks with the next block's
    weights in flight (0, the default: one program per row block); one-tile shapes (K <= BK) only."""
    return int(os.environ.get("HYBRIDNA_GEMV_PERSIST", "0"))


def _tile_cfg():
    """(weight elements per program, warps): HYBRIDNA_GEMV_TILE="8192,8" (the default)."""
    v = os.environ.get("HYBRIDNA_GEMV_TILE")
    return tuple(int(t) for t in v.split(",")) if v else (8192, 8)


def decode_gemv(a, weight, *, norm_weight=None, eps=1e-5, z=None, group_size=None, residual=None,
                swiglu=False, conv=None, kv=None, out_dtype=None, config=None):
    """y = weight @ a per row (a (B, K), weight (N, K)) with a fused prologue and epilogue.

    norm_weight: RMSNorm of a first (over K, or with z: of a * silu(z) per group of group_size).
    residual (B, N): returns residual + y.   swiglu: weight is [W_g; W_u] (2F, K), returns
    silu(W_g a) * (W_u a) (B, F).   conv = (state (B, C, W - 1), conv_weight (C, W), conv_bias or None,
    c0): rows c0 .. c0 + C go through the causal conv step with SiLU, the state updated in place.
    kv = (k_cache (B, T, ...), v_cache, pos (B,) int, qn): rows [0, qn) are returned (q), the next
    (N - qn) / 2 written to k_cache[b, pos[b]] and the rest to v_cache[b, pos[b]].
    """
    B, K = a.shape
    NR = weight.shape[0]
    N = NR // 2 if swiglu else NR
    odt = out_dtype or weight.dtype
    nq = kv[3] if kv is not None else N
    out = new_empty((B, nq), dtype=odt, device=a.device)
    assert a.stride(1) == 1 and weight.is_contiguous()
    BN, BK, nw = config or gemv_config(N, K, swiglu)
    NORM = 0 if norm_weight is None else (2 if z is not None else 1)
    GROUP = K if NORM != 2 or group_size is None else group_size
    EPI = 1 if residual is not None else 2 if swiglu else 3 if conv is not None else 4 if kv is not None else 0
    dummy = weight
    S = CWt = CB = KC = VC = POS = dummy
    C0, QN, KVN = 0, nq, 0
    ss = (0, 0, 0)
    skb = skt = svb = svt = 0
    CW_, WP, HAS_CB = 2, 2, False
    if conv is not None:
        S, CWt, CB, C0 = conv
        assert CWt.is_contiguous()
        QN = S.shape[1]
        CW_ = CWt.shape[1]
        WP = next_pow2(CW_)
        ss = S.stride()
        HAS_CB = CB is not None
        CB = CB if CB is not None else dummy
    if kv is not None:
        KC, VC, POS, QN = kv
        assert KC.stride(-1) == 1 and KC.stride(-2) == KC.shape[-1] and VC.stride(-1) == 1 \
            and VC.stride(-2) == VC.shape[-1]
        KVN = (N - QN) // 2
        skb, skt, svb, svt = KC.stride(0), KC.stride(1), VC.stride(0), VC.stride(1)
    zz = z if z is not None else a
    r = residual if residual is not None else out
    pdl = use_pdl(a)
    one_tile = K <= BK and GROUP == K
    nblk = cdiv(N, BN)
    persist = _persist() if one_tile else 0
    grid0 = min(nblk, persist * (num_sms(a.device) if a.is_cuda else 4)) if persist else nblk
    _gemv_kernel[(grid0, B)](
        a, zz, norm_weight if norm_weight is not None else dummy, weight, out, r, S, CWt, CB, KC, VC, POS,
        N, K, float(eps), C0, QN, KVN,
        a.stride(0), zz.stride(0), out.stride(0), r.stride(0), *ss, skb, skt, svb, svt,
        NORM=NORM, GROUP=GROUP, EPI=EPI, HAS_CB=HAS_CB, CW_=CW_, WP=WP, BN=BN, BK=BK, PDL=pdl,
        ONE_TILE=one_tile, PERSIST=bool(persist), num_warps=nw, **({"launch_pdl": True} if pdl else {}))
    return out
