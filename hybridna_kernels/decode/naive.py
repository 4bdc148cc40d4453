"""Plain PyTorch references of the decode kernels (the tests' ground truth).

Same maths as the unfused decode path of the model: the normed activation rounded to the weight
dtype, the product accumulated in fp32 (fp64 for fp64 inputs) and rounded to the output dtype, the
SwiGLU / residual / conv step applied to those rounded outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def decode_gemv_ref(a, weight, *, norm_weight=None, eps=1e-5, z=None, group_size=None, residual=None,
                    swiglu=False, conv=None, kv=None, out_dtype=None):
    """Reference of decode_gemv (same arguments; the conv state and the K/V caches updated in place)."""
    acc = _acc(weight)
    odt = out_dtype or weight.dtype
    af = a.to(acc)
    if z is not None and norm_weight is not None:
        af = af * F.silu(z.to(acc))
    if norm_weight is not None:
        K = af.shape[-1]
        gs = group_size if (z is not None and group_size) else K
        g = af.unflatten(-1, (K // gs, gs))
        af = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * norm_weight.to(acc)
    af = af.to(weight.dtype).to(acc)
    y = (af @ weight.to(acc).t()).to(odt)  # (B, N)
    if residual is not None:
        return (residual.to(acc) + y.to(acc)).to(odt)
    if swiglu:
        g, u = y.to(acc).chunk(2, dim=-1)
        return (F.silu(g).to(odt).to(acc) * u).to(odt)
    if conv is not None:
        state, cw, cb, c0 = conv
        C, W = cw.shape
        xin = y[:, c0: c0 + C]
        win = torch.cat([state.to(acc), xin.to(acc)[:, :, None]], dim=-1)  # (B, C, W)
        c = (win * cw.to(acc)).sum(-1)
        if cb is not None:
            c = c + cb.to(acc)
        out = y.clone()
        out[:, c0: c0 + C] = F.silu(c).to(odt)
        state.copy_(win[:, :, 1:].to(state.dtype))
        return out
    if kv is not None:
        kc, vc, pos, qn = kv
        nkv = (y.shape[1] - qn) // 2
        for b in range(y.shape[0]):
            p = int(pos[b])
            kc[b, p] = y[b, qn: qn + nkv].reshape(kc.shape[2:]).to(kc.dtype)
            vc[b, p] = y[b, qn + nkv:].reshape(vc.shape[2:]).to(vc.dtype)
        return y[:, :qn]
    return y


def attention_step_ref(q, k_cache, v_cache, pos, *, window=None, softmax_scale=None):
    """Reference of attention_step: q (B, Hq, D), caches (B, T, Hkv, D), row b over keys 0 .. pos[b]."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    acc = _acc(q)
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    outs = []
    for b in range(B):
        n = int(pos[b]) + 1
        lo = 0 if window is None else max(0, n - window)
        k = k_cache[b, lo:n].to(acc).repeat_interleave(Hq // Hkv, dim=1)  # (n, Hq, D)
        v = v_cache[b, lo:n].to(acc).repeat_interleave(Hq // Hkv, dim=1)
        s = torch.einsum("hd,nhd->hn", q[b].to(acc), k) * scale
        outs.append(torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v))
    return torch.stack(outs).to(q.dtype)
