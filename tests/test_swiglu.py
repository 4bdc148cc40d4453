"""Fused SwiGLU (hybridna_kernels.swiglu): forward and dh against the fp64 reference, and against the
model's unfused _SwiGLUDownFn.

CPU runs the Triton kernels through the interpreter in fp32 and fp16; bf16 runs on the GPU only.
Outputs are NaN-poisoned (conftest), so an element a kernel forgets to write fails."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, KERNEL_DTYPES, assert_close, dtype_id, tol

from hybridna_kernels.swiglu import swiglu, swiglu_ref

# (rows, F): F = 1, odd, and wider than one 1024-column block would need at 2F; rows 1, odd, 257.
SHAPES = [(1, 1), (5, 37), (257, 37), (5, 300), (3, 1100), (257, 1)]


def _check(h, dtype):
    """swiglu(h) and dh (random upstream gradient) against the fp64 reference of the same values."""
    hl = h.detach().requires_grad_()
    hr = h.detach().to(torch.float64).requires_grad_()
    out = swiglu(hl)
    ref = swiglu_ref(hr)
    assert out.dtype == dtype and out.shape == (*h.shape[:-1], h.shape[-1] // 2)
    assert_close("a", ref, out, tol(dtype, "fwd"))
    da = torch.randn(out.shape, device=DEVICE).to(dtype)
    out.backward(da)
    ref.backward(da.double())
    assert hl.grad.dtype == dtype and hl.grad.shape == h.shape
    assert_close("dh", hr.grad, hl.grad, tol(dtype, "grad"))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}-F{}".format(*s))
def test_swiglu(shape, dtype):
    torch.manual_seed(0)
    M, F = shape
    h = (torch.randn(M, 2 * F, device=DEVICE) * 3).to(dtype)
    _check(h, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
def test_swiglu_strided(dtype):
    """h as slices of a wider (B, T, W) tensor (row stride W) and a transposed 4-d h."""
    torch.manual_seed(1)
    F = 37
    big = (torch.randn(2, 9, 2 * F + 11, device=DEVICE) * 3).to(dtype)
    _check(big[:, :, 5: 5 + 2 * F], dtype)  # rows of stride 2F + 11, in place
    _check(big[:, 1:8, 5: 5 + 2 * F], dtype)  # (B, T) do not merge: copied
    _check((torch.randn(3, 2, 5, 2 * F, device=DEVICE) * 3).to(dtype).transpose(0, 1), dtype)


def test_swiglu_expanded_gradient():
    """The stride-0 gradient of a sum is read in place."""
    torch.manual_seed(2)
    h = (torch.randn(4, 5, 2 * 37, device=DEVICE) * 3).requires_grad_()
    hr = h.detach().double().requires_grad_()
    swiglu(h).sum().backward()
    swiglu_ref(hr).sum().backward()
    assert_close("dh", hr.grad, h.grad, tol(torch.float32, "grad"))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 2816), (131072 + 3, 64)], ids=["M4096-F2816", "M131075-F64"])
def test_swiglu_gpu_large(shape):
    """Model widths in bf16, and rows x 2F past 2^24 elements (int64 row offsets)."""
    torch.manual_seed(3)
    M, F = shape
    _check(torch.randn(M, 2 * F, device=DEVICE).to(torch.bfloat16), torch.bfloat16)


def test_swiglu_matches_model_swiglu_down():
    """down(swiglu(h)) equals the model's unfused _SwiGLUDownFn (forward, dh and dW) in fp32."""
    from hybridna.model import _SwiGLUDownFn

    torch.manual_seed(4)
    F, d = 37, 16
    h = (torch.randn(2, 7, 2 * F, device=DEVICE) * 3).requires_grad_()
    w = (torch.randn(d, F, device=DEVICE) / F ** 0.5).requires_grad_()
    h0, w0 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out = torch.nn.functional.linear(swiglu(h), w)
    base = _SwiGLUDownFn.apply(h0, w0)
    assert_close("out", base, out, tol(torch.float32, "fwd"))
    dout = torch.randn_like(out)
    out.backward(dout)
    base.backward(dout)
    assert_close("dh", h0.grad, h.grad, tol(torch.float32, "grad"))
    assert_close("dw", w0.grad, w.grad, tol(torch.float32, "grad"))


@pytest.mark.parametrize("bad,msg", [((3, 7), "even"), ((3, 8), "dtype")], ids=["odd", "int"])
def test_swiglu_rejects(bad, msg):
    h = torch.randn(bad) if msg == "even" else torch.ones(bad, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^h: .*" + msg):
        swiglu(h)


def test_swiglu_fp64_and_empty():
    h = torch.randn(3, 10, dtype=torch.float64)
    assert torch.equal(swiglu(h), swiglu_ref(h))
    assert swiglu(torch.randn(0, 10)).shape == (0, 5)


def test_model_swiglu_flag(monkeypatch):
    """SwiGLU.forward with HYBRIDNA_FUSED_SWIGLU on (model.FUSED_SWIGLU) gives the default path's
    output, dx and weight gradients in fp32."""
    import hybridna.model as model

    torch.manual_seed(5)
    mlp = model.SwiGLU(16, 37).to(DEVICE)
    x = torch.randn(2, 9, 16, device=DEVICE)
    outs = []
    for flag in (False, True):
        monkeypatch.setattr(model, "FUSED_SWIGLU", flag)
        mlp.zero_grad()
        xl = x.clone().requires_grad_()
        y = mlp(xl)
        y.backward(torch.ones_like(y) * 0.5 + y.detach())
        outs.append((y.detach(), xl.grad, mlp.gate_up.weight.grad.clone(), mlp.down.weight.grad.clone()))
    for name, base, fused in zip(["y", "dx", "dW_gate_up", "dW_down"], *outs):
        assert_close(name, base, fused, tol(torch.float32, "fwd" if name == "y" else "grad"))


def test_swiglu_compiles_fullgraph():
    """Under torch.compile the op is the opaque hybridna::swiglu_fwd node (fullgraph raises on a graph
    break), forward and dh still right."""
    graphs = []

    def backend(gm, inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch.manual_seed(6)
    h = (torch.randn(3, 5, 2 * 37, device=DEVICE) * 3).requires_grad_()
    hr = h.detach().double().requires_grad_()
    f = torch.compile(lambda t: swiglu(t) * 2, fullgraph=True, backend=backend)
    out = f(h)
    ref = swiglu_ref(hr) * 2
    assert any("hybridna.swiglu_fwd" in g for g in graphs), graphs
    assert_close("a", ref, out, tol(torch.float32, "fwd"))
    out.sum().backward()
    ref.sum().backward()
    assert_close("dh", hr.grad, h.grad, tol(torch.float32, "grad"))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=dtype_id)
def test_swiglu_bwd_returns_activation(dtype):
    """swiglu_bwd(h, da, return_a=True) (the model's MLP backward): dh equal to the plain backward's,
    and a = silu(g) * u bit-equal to the forward kernel's, from one read of h (rows of a strided h)."""
    from hybridna_kernels.swiglu import swiglu_bwd, swiglu_fwd

    torch.manual_seed(4)
    F = 300
    h = (torch.randn(2, 7, 2 * F + 6, device=DEVICE) * 3).to(dtype)[..., 3: 3 + 2 * F]
    da = torch.randn(2, 7, F, device=DEVICE).to(dtype)
    dh, a = swiglu_bwd(h, da, return_a=True)
    assert a.shape == (2, 7, F) and a.dtype == dtype and dh.shape == h.shape
    assert torch.equal(a, swiglu_fwd(h))
    assert torch.equal(dh, swiglu_bwd(h, da))
    hr = h.detach().double().requires_grad_()
    swiglu_ref(hr).backward(da.double())
    assert_close("dh", hr.grad, dh, tol(dtype, "grad"))
