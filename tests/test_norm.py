"""Fused norms (hybridna_kernels.norm): forward and every gradient against the fp64 reference.

CPU runs the Triton kernels through the interpreter in fp32 and fp16; bf16 runs on the GPU only.
Outputs are NaN-poisoned (conftest), so an element a kernel forgets to write fails."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, KERNEL_DTYPES, assert_close, dtype_id, tol

from hybridna_kernels.norm import (gated_rms_norm, gated_rms_norm_linear, gated_rms_norm_linear_ref, gated_rms_norm_ref,
                                   rms_norm, rms_norm_linear, rms_norm_linear_ref, rms_norm_ref)

SHAPES = [(1, 1, 64), (2, 63, 300), (1, 37, 1040), (3, 5, 3)]  # N = 1 is degenerate: dx = 0 exactly


def _lowest(*dtypes):
    order = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    return max((d for d in dtypes if d is not None), key=order.index)


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).requires_grad_()


_RMS_CASES = [(d, m) for d in KERNEL_DTYPES for m in ("plain", "delta")] + [(torch.float32, "delta16-out16")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-N{}".format(*s))
@pytest.mark.parametrize("dtype,mode", _RMS_CASES, ids=[f"{dtype_id(d)}-{m}" for d, m in _RMS_CASES])
def test_rms_norm(shape, dtype, mode):
    torch.manual_seed(0)
    N = shape[-1]
    x = (torch.randn(shape, device=DEVICE) * 3 + 0.5).to(dtype)
    w = torch.randn(N, device=DEVICE).to(dtype)
    delta = out_dtype = None
    if mode == "delta":
        delta = torch.randn(shape, device=DEVICE).to(dtype)
    elif mode == "delta16-out16":  # the model's case: fp32 residual + 16-bit mixer output, 16-bit norm output
        half = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
        delta, out_dtype = torch.randn(shape, device=DEVICE).to(half), half
    inputs = [x, w] + ([delta] if delta is not None else [])
    leaves = [_leaf(t) for t in inputs]
    refs = [_leaf(t, torch.float64) for t in inputs]
    out = rms_norm(leaves[0], leaves[1], 1e-5, delta=leaves[2] if delta is not None else None, out_dtype=out_dtype)
    ref = rms_norm_ref(refs[0], refs[1], 1e-5, refs[2] if delta is not None else None)
    outs = out if isinstance(out, tuple) else (out,)
    rout = ref if isinstance(ref, tuple) else (ref,)
    assert outs[0].dtype == (out_dtype or dtype)
    low = _lowest(dtype, out_dtype, None if delta is None else delta.dtype)
    assert_close("y", rout[0], outs[0], tol(_lowest(dtype, out_dtype), "fwd"))
    if delta is not None:
        assert outs[1].dtype == dtype
        assert_close("s", rout[1], outs[1], tol(low, "fwd"))
    grads = [torch.randn_like(o, dtype=torch.float32).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(rout, [g.double() for g in grads])
    for name, lf, rf in zip(["dx", "dweight", "ddelta"], leaves, refs):
        assert lf.grad.dtype == lf.dtype, f"{name}: dtype {lf.grad.dtype} != input dtype {lf.dtype}"
        assert_close(name, rf.grad, lf.grad, tol(low, "grad"))


@pytest.mark.parametrize("shape,group_size", [((2, 63, 256), None), ((1, 1, 64), 16), ((1, 45, 300), 100),
                                              ((2, 7, 1040), None)],
                         ids=lambda v: "B{}-T{}-N{}".format(*v) if isinstance(v, tuple) else f"G{v}")
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("z_view", [False, True], ids=["z", "zview"])
def test_gated_rms_norm(shape, group_size, dtype, z_view):
    torch.manual_seed(1)
    N = shape[-1]
    y = (torch.randn(shape, device=DEVICE) * 2).to(dtype)
    if z_view:  # z as a slice of a wider projection output, read in place
        zbig = torch.randn(*shape[:-1], N + 37, device=DEVICE).to(dtype)
        z = zbig[..., 5: 5 + N]
    else:
        z = torch.randn(shape, device=DEVICE).to(dtype)
    w = (1 + 0.1 * torch.randn(N, device=DEVICE)).to(dtype)
    leaves = [_leaf(y), _leaf(z), _leaf(w)]
    if z_view:
        zl = zbig.detach().clone().requires_grad_()
        leaves[1] = zl
        zin = zl[..., 5: 5 + N]
    else:
        zin = leaves[1]
    refs = [_leaf(t, torch.float64) for t in (y, z, w)]
    out = gated_rms_norm(leaves[0], zin, leaves[2], 1e-5, group_size=group_size)
    ref = gated_rms_norm_ref(refs[0], refs[1], refs[2], 1e-5, group_size)
    assert out.dtype == dtype
    assert_close("out", ref, out, tol(dtype, "fwd"))
    g = torch.randn_like(out, dtype=torch.float32).to(dtype)
    out.backward(g)
    ref.backward(g.double())
    dz = leaves[1].grad[..., 5: 5 + N] if z_view else leaves[1].grad
    if z_view:
        assert leaves[1].grad[..., :5].abs().sum() == 0 and leaves[1].grad[..., 5 + N:].abs().sum() == 0
    assert_close("dy", refs[0].grad, leaves[0].grad, tol(dtype, "grad"))
    assert_close("dz", refs[1].grad, dz, tol(dtype, "grad"))
    assert_close("dweight", refs[2].grad, leaves[2].grad, tol(dtype, "grad"))


def test_strided_incoming_gradients():
    """The gradient of a sum arrives as a stride-0 expansion: read in place, same result."""
    torch.manual_seed(4)
    x = torch.randn(2, 9, 64, device=DEVICE, requires_grad=True)
    d = torch.randn(2, 9, 64, device=DEVICE, requires_grad=True)
    w = torch.randn(64, device=DEVICE, requires_grad=True)
    y, s = rms_norm(x, w, delta=d)
    (y.sum() + 2 * s.sum()).backward()
    refs = [_leaf(t, torch.float64) for t in (x, w, d)]
    yr, sr = rms_norm_ref(refs[0], refs[1], 1e-5, refs[2])
    (yr.sum() + 2 * sr.sum()).backward()
    for name, a, r in zip(["dx", "dweight", "ddelta"], (x, w, d), refs):
        assert_close(name, r.grad, a.grad, tol(torch.float32, "grad"))
    z = torch.randn(2, 9, 64, device=DEVICE, requires_grad=True)
    gated_rms_norm(x, z, w).sum().backward()
    zr = _leaf(z, torch.float64)
    gated_rms_norm_ref(refs[0], zr, refs[1]).sum().backward()
    assert_close("dz", zr.grad, z.grad, tol(torch.float32, "grad"))


def test_gated_rms_norm_out_dtype():
    """fp32 inputs with a 16-bit output (the model under autocast): one rounding at the end."""
    torch.manual_seed(2)
    half = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
    y, z = torch.randn(2, 40, 128, device=DEVICE), torch.randn(2, 40, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    out = gated_rms_norm(y, z, w, out_dtype=half)
    assert out.dtype == half
    assert_close("out", gated_rms_norm_ref(y.double(), z.double(), w.double()), out, tol(half, "fwd"))


@pytest.mark.parametrize("which", ["rms", "rms_delta", "gated"])
def test_registered_ops_opcheck(which):
    """The torch.library ops that torch.compile sees: fake shapes, autograd registration, schema."""
    from hybridna_kernels.norm import rms  # noqa: F401 - registers the ops

    torch.manual_seed(3)
    x = torch.randn(3, 10, 48, device=DEVICE, requires_grad=True)
    w = torch.randn(48, device=DEVICE, requires_grad=True)
    if which == "gated":
        z = torch.randn(3, 10, 48, device=DEVICE, requires_grad=True)
        torch.library.opcheck(torch.ops.hybridna.gated_rms_norm_fwd.default, (x, z, w, 1e-5, 16, torch.float32),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    else:
        d = torch.randn(3, 10, 48, device=DEVICE, requires_grad=True) if which == "rms_delta" else None
        torch.library.opcheck(torch.ops.hybridna.rms_norm_fwd.default, (x, d, w, 1e-5, torch.float32),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("writes_h", [True, False], ids=["h-from-bwd", "h-recomputed"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ["rms", "rms_delta", "gated"])
def test_norm_linear(dtype, kind, writes_h, monkeypatch):
    """Norm + linear with the normed activation recomputed in the backward (written by the norm's
    backward pass, or by a separate forward pass: linear.BWD_WRITES_H): forward and every gradient
    (both weights included) against the fp64 composition."""
    import hybridna_kernels.norm.linear as nl

    monkeypatch.setattr(nl, "BWD_WRITES_H", writes_h)
    torch.manual_seed(5)
    B, T, N, O = 2, 37, 96, 72
    x = torch.randn(B, T, N, device=DEVICE).to(dtype)
    other = torch.randn(B, T, N, device=DEVICE).to(dtype)  # delta or z
    nw = (1 + 0.1 * torch.randn(N, device=DEVICE)).to(dtype)
    lw = (torch.randn(O, N, device=DEVICE) / N ** 0.5).to(dtype)
    inputs = [x, other, nw, lw] if kind != "rms" else [x, nw, lw]
    leaves = [_leaf(t) for t in inputs]
    refs = [_leaf(t, torch.float64) for t in inputs]
    if kind == "gated":
        out = gated_rms_norm_linear(*leaves[:2], leaves[2], leaves[3], 1e-5, group_size=32)
        ref = gated_rms_norm_linear_ref(*refs[:2], refs[2], refs[3], 1e-5, 32)
        names = ["dy", "dz", "dnorm_weight", "dlinear_weight"]
    elif kind == "rms_delta":
        out = rms_norm_linear(leaves[0], leaves[2], leaves[3], delta=leaves[1])
        ref = rms_norm_linear_ref(refs[0], refs[2], refs[3], 1e-5, refs[1])
        names = ["dx", "ddelta", "dnorm_weight", "dlinear_weight"]
    else:
        out = rms_norm_linear(*leaves)
        ref = rms_norm_linear_ref(*refs)
        names = ["dx", "dnorm_weight", "dlinear_weight"]
    outs = out if isinstance(out, tuple) else (out,)
    rout = ref if isinstance(ref, tuple) else (ref,)
    for i, (o, r) in enumerate(zip(outs, rout)):
        assert_close(f"out{i}", r, o, tol(dtype, "fwd"))
    grads = [torch.randn_like(o, dtype=torch.float32).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(rout, [g.double() for g in grads])
    for name, lf, rf in zip(names, leaves, refs):
        assert_close(name, rf.grad, lf.grad, tol(dtype, "grad"))


def test_norm_linear_saves_no_normed_activation():
    """What the backward keeps: the norm's input and the weights (and rstd), not the normed activation."""
    torch.manual_seed(6)
    x = torch.randn(2, 30, 64, device=DEVICE, requires_grad=True)
    nw = torch.ones(64, device=DEVICE, requires_grad=True)
    lw = torch.randn(48, 64, device=DEVICE, requires_grad=True)
    big = []

    def pack(t):
        if t.numel() >= x.numel():
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rms_norm_linear(x, nw, lw)
    assert len(big) == 1 and big[0] is x, [tuple(t.shape) for t in big]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind", ["rms", "rms_delta", "gated"])
def test_backward_pass_rewrites_forward_output(dtype, kind):
    """The backward kernels' optional output (used by the norm + linear backward for the weight
    gradient instead of a separate recompute pass) is the forward's output bit for bit, and the
    gradients they return are the same as without it."""
    from hybridna_kernels.norm.rms import gated_rms_norm_bwd, gated_rms_norm_fwd, rms_norm_bwd, rms_norm_fwd

    torch.manual_seed(7)
    B, T, N = 2, 37, 300
    x = (torch.randn(B, T, N, device=DEVICE) * 3).to(dtype)
    other = torch.randn(B, T, N, device=DEVICE).to(dtype)
    w = (1 + 0.1 * torch.randn(N, device=DEVICE)).to(dtype)
    dy = torch.randn(B, T, N, device=DEVICE).to(dtype)
    out_dtype = torch.float16 if dtype == torch.float32 else dtype  # the autocast case: 16-bit output
    if kind == "gated":
        y, rstd = gated_rms_norm_fwd(x, other, w, 1e-5, 100, out_dtype)
        plain = gated_rms_norm_bwd(x, other, w, rstd, dy, 100)
        *grads, y2 = gated_rms_norm_bwd(x, other, w, rstd, dy, 100, out_dtype=out_dtype)
    else:
        delta = other if kind == "rms_delta" else None
        y, s, rstd = rms_norm_fwd(x, w, 1e-5, delta, out_dtype, store_s=delta is not None)
        s = s if s is not None else x
        plain = rms_norm_bwd(s, w, rstd, dy, None, dtype, dtype if delta is not None else None)
        *grads, y2 = rms_norm_bwd(s, w, rstd, dy, None, dtype, dtype if delta is not None else None, y_dtype=out_dtype)
    assert y2.dtype == out_dtype and torch.equal(y, y2)
    for a, b in zip(plain, grads):
        assert (a is None and b is None) or torch.equal(a, b)
