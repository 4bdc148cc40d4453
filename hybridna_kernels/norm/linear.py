"""A norm followed by a bias-free linear layer, with the normed activation recomputed in the
backward instead of saved: the saved state is the norm's input (which the norm's own backward needs
anyway) and its per-row rstd. Under bf16 autocast that drops one 16-bit activation per norm from the
saved set (the d_model-wide input of in_proj / qkv_proj / gate_up, the d_inner-wide input of the
Mamba out_proj) for one more write in the backward: the norm's backward kernel, which reads the
input anyway, also writes the normed activation (bit-equal to the forward's) for the linear layer's
weight gradient, so dh = dout @ W comes first and the weight gradient after the norm's backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import grad_dest, take_dest
from .rms import gated_rms_norm_bwd, gated_rms_norm_fwd, rms_norm_bwd, rms_norm_fwd

# False: recompute the normed activation in a separate forward pass before the backward (the session-2
# scheme, kept to measure the difference; same values bit for bit).
BWD_WRITES_H = True


class RMSNormLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, norm_w, lin_w, eps, out_dtype):
        h, s, rstd = rms_norm_fwd(x, norm_w, eps, delta, out_dtype, store_s=delta is not None)
        out = F.linear(h, lin_w.to(h.dtype))
        ctx.save_for_backward(s if s is not None else x, norm_w, lin_w, rstd)
        ctx.cfg = (eps, out_dtype, x.dtype, delta.dtype if delta is not None else None)
        return out if s is None else (out, s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, ds=None):
        s, norm_w, lin_w, rstd = ctx.saved_tensors
        eps, out_dtype, x_dtype, d_dtype = ctx.cfg
        dout = dout.to(out_dtype)
        h = None if BWD_WRITES_H else rms_norm_fwd(s, norm_w, eps, None, out_dtype, store_s=False)[0]
        dh = dout @ lin_w.to(out_dtype)
        if h is None:  # the norm's backward pass also writes h, the recomputed input of the linear (one read of s)
            dx, dd, dnw, h = rms_norm_bwd(s, norm_w, rstd, dh, ds, x_dtype, d_dtype, y_dtype=out_dtype)
        else:
            dx, dd, dnw = rms_norm_bwd(s, norm_w, rstd, dh, ds, x_dtype, d_dtype)
        del dh
        dlw = (dout.reshape(-1, dout.shape[-1]).t() @ h.reshape(-1, h.shape[-1])).to(lin_w.dtype)
        ddelta = (dd if dd is not None else dx) if d_dtype is not None else None
        return dx, ddelta, dnw, dlw, None, None


class GatedRMSNormLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, norm_w, lin_w, eps, group_size, out_dtype):
        h, rstd = gated_rms_norm_fwd(y, z, norm_w, eps, group_size, out_dtype)
        out = F.linear(h, lin_w.to(h.dtype))
        ctx.save_for_backward(y, z, norm_w, lin_w, rstd)
        ctx.cfg = (eps, group_size, out_dtype)
        ctx.dz_dest = grad_dest(z)  # dz into a caller's slab (utils.GradSlab)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        y, z, norm_w, lin_w, rstd = ctx.saved_tensors
        eps, group_size, out_dtype = ctx.cfg
        dout = dout.to(out_dtype)
        h = None if BWD_WRITES_H else gated_rms_norm_fwd(y, z, norm_w, eps, group_size, out_dtype)[0]
        dh = dout @ lin_w.to(out_dtype)
        dz_out = take_dest(ctx.dz_dest, z) if ctx.needs_input_grad[1] else None
        if h is None:  # the norm's backward pass also writes h, the recomputed input of the linear (one read of y, z)
            dy, dz, dnw, h = gated_rms_norm_bwd(y, z, norm_w, rstd, dh, group_size, out_dtype=out_dtype, dz_out=dz_out)
        else:
            dy, dz, dnw = gated_rms_norm_bwd(y, z, norm_w, rstd, dh, group_size, dz_out=dz_out)
        del dh
        dlw = (dout.reshape(-1, dout.shape[-1]).t() @ h.reshape(-1, h.shape[-1])).to(lin_w.dtype)
        return dy, dz, dnw, dlw, None, None, None
