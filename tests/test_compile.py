"""torch.compile over the whole model (issue 10): one graph, no breaks, the eager loss and gradients.

`torch.compile(model, fullgraph=True)` raises on any graph break, so these tests fail if the model
or an op wrapper grows a `.item()`, `.tolist()`, a check on tensor values or data-dependent control
flow on the training path. With the Triton backend the kernels must appear in the graph as the
registered custom ops (hybridna::ssd_scan_fwd, causal_conv1d_fwd, flash_attn_fwd, rms_norm_fwd,
gated_rms_norm_fwd, and swiglu_fwd with the fused SwiGLU on, the default), not be traced
into or replaced by the reference. aot_eager also traces the backward (AOTAutograd), so the
registered backward ops are exercised too. The inductor variants are marked slow (their CPU C++
compile takes 20-45 s per case here; they ran green on CPU, and are the GPU path of `--compile`).
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, tol

import hybridna_kernels.utils as ku
from hybridna import HybriDNA, HybriDNAConfig

_OPS = {"ssd_scan_fwd", "causal_conv1d_fwd", "flash_attn_fwd", "rms_norm_fwd", "gated_rms_norm_fwd"}


def _expected_ops():
    import hybridna.model as hm

    return _OPS | ({"swiglu_fwd"} if hm.FUSED_SWIGLU else set())


def _train_step(model, params, ids):
    for p in params.values():
        p.grad = None
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach().clone(), {n: p.grad.detach().clone() for n, p in params.items()}


def _recording_backend(seen: list, name: str):
    """Backend `name`, after noting the targets of the call_function nodes of every graph Dynamo hands it."""
    inner = torch._dynamo.lookup_backend(name)

    def backend(gm, example_inputs):
        seen.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return inner(gm, example_inputs)

    return backend


@pytest.mark.parametrize("which,seqlen,compiler", [
    ("reference", 64, "aot_eager"),
    ("triton", 40, "aot_eager"),
    pytest.param("reference", 64, "inductor", marks=pytest.mark.slow),
    pytest.param("triton", 40, "inductor", marks=pytest.mark.slow),
])
def test_whole_model_compiles_fullgraph(which, seqlen, compiler):
    """Tiny preset, batch 1: compiled forward + backward equals eager (loss and every gradient)."""
    if which == "reference" and DEVICE.type == "cuda":
        pytest.skip("the reference backend is the CPU path")
    torch.manual_seed(0)
    model = HybriDNA(HybriDNAConfig.preset("tiny")).to(DEVICE)  # fp32, 8 layers, attention at layer 4
    params = dict(model.named_parameters())
    ids = torch.randint(1, 9, (1, seqlen), device=DEVICE)  # seqlen 40: not a multiple of the SSD chunk (64)
    torch._dynamo.reset()
    graphs: list = []
    with ku.backend(which):
        ref_loss, ref_grads = _train_step(model, params, ids)
        compiled = torch.compile(model, fullgraph=True, backend=_recording_backend(graphs, compiler))
        loss, grads = _train_step(compiled, params, ids)
        # a second step reuses the graph (no recompilation on an equal input)
        loss2, _ = _train_step(compiled, params, ids)
    assert len(graphs) == 1, f"expected one graph, Dynamo compiled {len(graphs)}"
    called = {t.split(".")[1] for t in graphs[0] if t.startswith("hybridna.")}  # hybridna.<op>.default
    if which == "triton":
        assert called == _expected_ops(), f"kernels in the graph: {sorted(called)}, expected {sorted(_expected_ops())}"
    else:
        assert not called, f"reference backend but kernel ops in the graph: {sorted(called)}"
    t = tol(torch.float32, "fwd")
    assert_close("loss", ref_loss, loss, t)
    assert_close("loss (second call)", ref_loss, loss2, t)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        assert g.abs().sum() > 0, f"{name}: eager gradient is zero, the comparison would prove nothing"
        assert_close(f"grad {name}", g, grads[name], t)
    torch._dynamo.reset()
