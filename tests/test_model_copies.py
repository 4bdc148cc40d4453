"""No hidden copies of activations in a block's forward (issue 10).

A TorchDispatchMode records every aten copy-type op (copy_, clone, _to_copy, cat, ...) whose output is
an activation-sized tensor: leading dim = batch, numel >= batch * seqlen * d_model. Weights (the
autocast casts of Linear weights) and small tensors do not count, nor do the CPU<->numpy transfers of
the Triton interpreter itself (ops issued from inside triton's interpreter). The block runs through
the Triton kernels (interpreter on CPU), the path the GPU takes, so copies in the kernels' Python glue
count too. A block's forward makes no such copy, in fp32 or under bf16 autocast (the fused norms
write the autocast dtype directly). The backward is held to a
ceiling: the copies that remain there are listed, and a new one fails the test.
"""
from __future__ import annotations

import gc
import sys
import weakref
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hybridna_kernels.utils as ku
from helpers import DEVICE, assert_close, tol
from hybridna import HybriDNA, HybriDNAConfig

_COPY_OPS = {"copy_", "clone", "_to_copy", "cat", "stack", "constant_pad_nd", "index_select", "gather",
             "as_strided_copy", "_reshape_copy", "new_zeros", "zeros_like"}


def _in_triton_interpreter() -> bool:
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename.replace("\\", "/")
        if "/triton/" in fn and "interpreter" in fn:
            return True
        f = f.f_back
    return False


class LargeCopies(TorchDispatchMode):
    """Records (op, shape, dtype) of copy-type ops with an activation-sized output."""

    def __init__(self, batch: int, min_numel: int):
        super().__init__()
        self.batch, self.min_numel = batch, min_numel
        self.copies: list[tuple[str, tuple, torch.dtype]] = []
        self.n_large = 0  # every large activation op, copies or not (shows the mode sees the block)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        big = [o for o in outs if isinstance(o, torch.Tensor) and o.dim() >= 2 and o.shape[0] == self.batch
               and o.numel() >= self.min_numel]
        if big and not _in_triton_interpreter():
            self.n_large += 1
            name = func.overloadpacket.__name__
            if name in _COPY_OPS:
                self.copies.append((name, tuple(big[0].shape), big[0].dtype))
        return out


B, L = 3, 40  # batch 3: no weight of the tiny preset has 3 rows; seqlen 40 is not a chunk multiple


def _block(layer: int, autocast: bool, backward: bool = False):
    """Record one forward (or, with backward=True, the backward after an unrecorded forward)."""
    torch.manual_seed(0)
    cfg = HybriDNAConfig.preset("tiny")
    # On a CUDA machine the kernels run on the GPU (TRITON_INTERPRET is only set without one, so CPU
    # tensors could not take the Triton path there); on CPU through the interpreter.
    blk = HybriDNA(cfg).layers[layer].to(DEVICE)
    x = torch.randn(B, L, cfg.d_model, device=DEVICE, requires_grad=True)  # fp32 residual stream
    rec = LargeCopies(B, B * L * cfg.d_model)
    with ku.backend("triton"), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=autocast):
        if backward:
            y = blk(x)
            with rec:
                y.sum().backward()
            assert x.grad is not None
        else:
            with rec:
                y = blk(x)
    assert y.shape == x.shape
    return cfg, rec


def test_recorder_sees_copies():
    """Positive control: the recorder counts a transpose made contiguous and a cast, not a view."""
    rec = LargeCopies(2, 2 * 8 * 16)
    x = torch.randn(2, 8, 16)
    with rec:
        x.transpose(1, 2).reshape(2, -1)  # a copy
        x.reshape(2, -1)  # a view
        x.to(torch.float16)
    assert [c[0] for c in rec.copies] == ["clone", "_to_copy"], rec.copies


@pytest.mark.parametrize("layer", [0, 4], ids=["mamba", "attention"])
def test_block_forward_fp32_makes_no_activation_copy(layer):
    """in_proj outputs split as views, the conv fed a channel-last (B, D, L) view, its output read back
    as a view, SSD output reshaped as a view: not one activation copy in the forward."""
    cfg, rec = _block(layer, autocast=False)
    assert rec.n_large >= 4, "the recorder saw almost nothing of the block"
    assert rec.copies == [], f"{'attention' if cfg.is_attention(layer) else 'Mamba'} block copies: {rec.copies}"


@pytest.mark.parametrize("layer", [0, 4], ids=["mamba", "attention"])
def test_block_forward_autocast_makes_no_activation_copy(layer):
    """Under bf16 autocast (fp32 weights, the training set-up) the fused norms write their output in
    bf16 directly, so there is no cast of a normed activation for the next matmul (the unfused fp32
    norms made four per Mamba block: norm1's and norm2's outputs, the gated norm's up- and downcast)."""
    cfg, rec = _block(layer, autocast=True)
    assert rec.n_large >= 4, "the recorder saw almost nothing of the block"
    assert rec.copies == [], rec.copies


@pytest.mark.parametrize("slabs", [False, True], ids=["split", "slabs"])
def test_mamba_block_backward_copies_ceiling(slabs, monkeypatch):
    """fp32 backward of a Mamba block: at most the copies that remain today, each named here.
    With GRAD_SLABS off (torch.split):
    - cat (B, L, 2di + 2GN + H): autograd of the split of the in_proj output into z, xBC, dt;
    - cat (B, L, di + 2GN): autograd of the split of the conv output into x, B, C.
    With GRAD_SLABS (opt-in) none: the gated norm, SSD and conv backwards write dz | dxBC | ddt and
    dx | dB | dC into slices of one buffer each, and the split's backward returns that buffer.
    The SSD backward's z.contiguous() is gone (the gate is applied in the gated norm, which reads z in
    place). The SwiGLU's cat (B, L, 2F) is gone (_SwiGLUFn writes dg, du into one buffer): a regression
    there, or any other new copy, fails."""
    import hybridna.model as hm

    monkeypatch.setattr(hm, "GRAD_SLABS", slabs)
    cfg, rec = _block(0, autocast=False, backward=True)
    di, G, N, H = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads
    allowed = Counter() if slabs else Counter([("cat", (B, L, 2 * di + 2 * G * N + H), torch.float32),
                                               ("cat", (B, L, di + 2 * G * N), torch.float32)])
    got = Counter(rec.copies)
    assert got <= allowed, f"new copies in the backward: {dict(got - allowed)}"
    if not slabs:
        assert got == allowed, "torch.split's backward cats no longer seen: the recorder misses them"
    assert rec.n_large >= 4, "the recorder saw almost nothing of the backward"


@pytest.mark.parametrize("slabs", [False, True], ids=["split", "slabs"])
def test_attention_block_backward_copies(slabs, monkeypatch):
    """fp32 backward of an attention block: torch.split's backward cats dq | dk | dv (the one copy);
    with GRAD_SLABS flash attention's backward writes them into one buffer and nothing is copied."""
    import hybridna.model as hm

    monkeypatch.setattr(hm, "GRAD_SLABS", slabs)
    cfg, rec = _block(4, autocast=False, backward=True)
    qkv = (cfg.attn_n_heads + 2 * cfg.attn_n_kv_heads) * cfg.attn_head_dim
    assert Counter(rec.copies) == (Counter() if slabs else Counter([("cat", (B, L, qkv), torch.float32)]))
    assert rec.n_large >= 4, "the recorder saw almost nothing of the backward"


def _slab_spy(monkeypatch):
    """Record the GradSlabs the model makes and whether each split backward found its buffer."""
    import hybridna.model as hm

    made, hits = [], []

    class Spy(hm.GradSlab):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self)

        def assemble(self, grads):
            g = super().assemble(grads)
            hits.append(g is not None)
            return g

    monkeypatch.setattr(hm, "GradSlab", Spy)
    return made, hits


@pytest.mark.parametrize("flags", [dict(), dict(CONV_RECOMPUTE=False), dict(INPROJ_RECOMPUTE=True),
                                   dict(FUSED_NORMS=False)],
                         ids=["default", "conv-kept", "inproj-recompute", "unfused-norms"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_grad_slabs_bit_identical(flags, autocast, monkeypatch):
    """GRAD_SLABS against torch.split (the old path): the same kernels write the same values, only into
    slices of one buffer: outputs and every gradient bit-identical, under each recompute switch; the
    recomputes drop the same activations; each split backward returns the buffer (no cat) except with
    the unfused norms (the SSD applies the gate, its dz is not written into the slab: the in_proj
    split falls back to the cat); the buffers are released by the backward."""
    flags = dict(dict(CONV_RECOMPUTE=True, INPROJ_RECOMPUTE=False, FUSED_NORMS=True), **flags)
    with monkeypatch.context() as mp:  # each run its own spies (they chain otherwise)
        old = _recompute_run(mp, dict(flags, GRAD_SLABS=False), autocast)
    with monkeypatch.context() as mp:
        made, hits = _slab_spy(mp)
        new = _recompute_run(mp, dict(flags, GRAD_SLABS=True), autocast)
    assert len(made) == 2
    assert hits == ([True, False] if not flags["FUSED_NORMS"] else [True, True]), hits  # conv split first
    assert all(s.buf is None for s in made)
    assert sorted(old[3]) == sorted(new[3]) and sorted(old[4]) == sorted(new[4]) and old[5] == new[5]
    assert all(torch.equal(a, b) for a, b in zip(old[1], new[1]))
    assert all(torch.equal(a, b) for a, b in zip(old[2], new[2]))


def _block_grads(blk, x, ckpt: bool, passes: int = 1) -> list:
    """Gradients of sum(blk(x)^2) with respect to x and blk's parameters (Triton kernels), blk under
    activation checkpointing when ckpt. passes > 1 runs the backward of the same graph again (retain_graph,
    gradients accumulating); the gradients after each pass, concatenated."""
    from torch.utils.checkpoint import checkpoint

    x.grad = None
    blk.zero_grad(set_to_none=True)
    out = []
    with ku.backend("triton"):
        y = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        loss = y.square().sum()
        for i in range(passes):
            loss.backward(retain_graph=i < passes - 1)
            out += [x.grad.clone()] + [p.grad.clone() for p in blk.parameters()]
    return out


def test_grad_slabs_twice_and_checkpointed(monkeypatch):
    """A second backward through the same graph (retain_graph) gives the first pass's gradients again
    (each pass's split releases its buffer, so the second pass fills a new one), and under activation
    checkpointing the slabs still serve: gradients equal to torch.split's bit for bit, for a Mamba and an
    attention block. (The one-hand-out-per-slice rule itself is test_grad_slab_rules'.)"""
    import hybridna.model as hm

    cfg = HybriDNAConfig.preset("tiny")
    torch.manual_seed(0)
    model = HybriDNA(cfg).to(DEVICE)
    x = torch.randn(RB, L, cfg.d_model, device=DEVICE, requires_grad=True)
    for layer in (0, 4):
        blk = model.layers[layer]
        res = {}
        for slabs in (False, True):
            monkeypatch.setattr(hm, "GRAD_SLABS", slabs)
            _, hits = _slab_spy(monkeypatch)
            res[slabs] = [_block_grads(blk, x, ckpt, passes=2) for ckpt in (False, True)]
            if slabs:
                assert hits and all(hits), hits
        for a, b in zip(res[False], res[True]):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert all(torch.equal(u, v) for u, v in zip(res[True][0], res[True][1]))


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_swiglu_saves_only_its_input_and_gate_up_output(fused, monkeypatch):
    """Saved activations of the MLP: x (for gate_up) and h = [g | u]; neither silu(g) nor silu(g) * u
    (the input of down, recomputed in the backward); gradients equal to the plain expression's:
    bit-identical on the PyTorch path, within the fp32 tolerance through the fused SwiGLU kernels
    (which compute silu as g * sigmoid(g), torch as g / (1 + exp(-g)))."""
    torch.manual_seed(0)
    import hybridna.model as hm
    from hybridna.model import SwiGLU

    monkeypatch.setattr(hm, "FUSED_SWIGLU", fused)
    mlp = SwiGLU(16, 32).to(DEVICE)
    x = torch.randn(B, L, 16, device=DEVICE, requires_grad=True)
    params = {p.data_ptr() for p in mlp.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mlp(x)
    assert sum(storages.values()) == 4 * B * L * (16 + 2 * 32), storages
    dy = torch.randn_like(y)
    y.backward(dy)
    gx, gw = x.grad.clone(), [p.grad.clone() for p in mlp.parameters()]
    x.grad = None
    mlp.zero_grad()
    g, u = mlp.gate_up(x).chunk(2, dim=-1)
    mlp.down(torch.nn.functional.silu(g) * u).backward(dy)
    if not fused:
        assert torch.equal(gx, x.grad)
        assert all(torch.equal(a, p.grad) for a, p in zip(gw, mlp.parameters()))
        return
    t = tol(torch.float32, "grad")
    assert_close("dx", x.grad, gx, t)
    for (n, p), a in zip(mlp.named_parameters(), gw):
        assert_close(f"d{n}", p.grad, a, t)


def _saved_bytes(fn):
    """(result, {storage ptr: nbytes}) of the activations fn's autograd graph saves (not parameters)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, storages


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_norm_mlp_node_saves_residual_only(autocast, monkeypatch):
    """A block's residual add + norm2 + gate_up + SwiGLU + down as one node (_NormMLPFn, the fused
    kernels): with MLP_RECOMPUTE it saves only the new residual s = x + m and its rstd (the gate_up
    output h is recomputed), without it s, rstd and h; either way the output, the residual and every
    gradient match the unfused path (norm2 + gate_up, then torch's SwiGLU + down)."""
    import hybridna.model as hm

    cfg = HybriDNAConfig.preset("tiny")
    torch.manual_seed(0)
    blk = HybriDNA(cfg).layers[0].to(DEVICE)
    x = torch.randn(B, L, cfg.d_model, device=DEVICE, requires_grad=True)
    m = torch.randn(B, L, cfg.d_model, device=DEVICE).to(torch.bfloat16 if autocast else torch.float32)
    m.requires_grad_()
    dout = torch.randn(B, L, cfg.d_model, device=DEVICE)
    dres = torch.randn(B, L, cfg.d_model, device=DEVICE)
    params = {p.untyped_storage().data_ptr() for p in blk.parameters()}
    F2 = 2 * cfg.d_intermediate
    res = {}
    for name, fused, recompute in [("ref", False, False), ("keep", True, False), ("recompute", True, True)]:
        monkeypatch.setattr(hm, "FUSED_SWIGLU", fused)
        monkeypatch.setattr(hm, "MLP_RECOMPUTE", recompute)
        x.grad = m.grad = None
        blk.zero_grad(set_to_none=True)
        with ku.backend("triton"), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=autocast):
            (s, out), saved = _saved_bytes(lambda: blk.mlp_residual(x, m))
        saved = {k: v for k, v in saved.items() if k not in params}
        torch.autograd.backward([out, s], [dout.to(out.dtype), dres])
        res[name] = (out.detach().float(), s.detach(), x.grad.clone(), m.grad.clone(),
                     [p.grad.clone() for p in (blk.norm2.weight, blk.mlp.gate_up.weight, blk.mlp.down.weight)])
        if name == "ref":
            continue
        hdt = 2 if autocast else 4
        expect = {(B * L * cfg.d_model * 4, (B, L, cfg.d_model), torch.float32),  # s (fp32 residual)
                  (B * L * 4, (B * L,), torch.float32)}  # rstd
        if not recompute:
            expect.add((B * L * F2 * hdt, (B, L, F2), torch.bfloat16 if autocast else torch.float32))  # h
        assert set(saved.values()) == expect, (name, sorted(saved.values(), key=str))
    dt = torch.bfloat16 if autocast else torch.float32
    for name in ("keep", "recompute"):
        for what, a, b in zip(("out", "s", "dx", "dm"), res["ref"][:4], res[name][:4]):
            assert_close(f"{name} {what}", a, b, tol(dt, "grad"))
        for what, a, b in zip(("dnorm2", "dgate_up", "ddown"), res["ref"][4], res[name][4]):
            assert_close(f"{name} {what}", a, b, tol(dt, "grad"))
    # recomputing h gives the same bits as keeping it
    assert all(torch.equal(a, b) for a, b in zip(res["keep"][:4], res["recompute"][:4]))
    assert all(torch.equal(a, b) for a, b in zip(res["keep"][4], res["recompute"][4]))


RB = 1  # batch of the recompute tests (the interpreter's cost grows with rows; one row shows it all)


def _recompute_run(monkeypatch, flags: dict, autocast: bool):
    """One Mamba block forward + backward with hybridna.model flags set, recording what the
    recompute hooks drop (saved-tensor hooks do not nest: an outer recorder would miss everything the
    mixer saves under them) and weak references to the activations they were asked to drop."""
    import hybridna.model as hm

    for k, v in flags.items():
        monkeypatch.setattr(hm, k, v)
    dropped, kept, refs = [], [], []
    real_pack, real_ctx = hm._pack, hm._recompute_saved

    def pack_spy(t):
        r = real_pack(t)
        (kept if r is t else dropped).append((t.untyped_storage().nbytes(), tuple(t.shape), t.dtype))
        return r

    def ctx_spy(out, fn):
        refs.append(weakref.ref(out))
        return real_ctx(out, fn)

    monkeypatch.setattr(hm, "_pack", pack_spy)
    monkeypatch.setattr(hm, "_recompute_saved", ctx_spy)
    cfg = HybriDNAConfig.preset("tiny")
    torch.manual_seed(0)
    blk = HybriDNA(cfg).layers[0].to(DEVICE)
    x0 = torch.randn(RB, L, cfg.d_model, device=DEVICE, requires_grad=True)
    d0 = torch.randn(RB, L, cfg.d_model, device=DEVICE, requires_grad=True)
    with ku.backend("triton"), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=autocast):
        xo, m = blk(x0, delta=d0, defer_add=True)  # the model's form: residual add fused into norm1
    gc.collect()
    alive = [r() is not None for r in refs]  # the dropped activations must be gone before the backward
    with ku.backend("triton"):
        (xo + m).float().square().sum().backward()
    grads = [x0.grad, d0.grad] + [p.grad for p in blk.parameters()]
    return cfg, (xo.detach(), m.detach()), grads, dropped, kept, alive


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_recomputed_activations_not_saved(autocast, monkeypatch):
    """CONV_RECOMPUTE: the Mamba mixer does not keep the conv output x|B|C that ssd_scan saves
    (conv_dim values per token); with INPROJ_RECOMPUTE too, nor the in_proj output z|x|B|C|dt (read
    by the conv, SSD and gated-norm backwards). Each is freed after the forward and recomputed in the
    backward (the conv from its input; norm1 + in_proj from the residual stream that norm1 keeps), bit
    for bit: outputs and every gradient bit-identical to keeping them."""
    base = _recompute_run(monkeypatch, dict(CONV_RECOMPUTE=False, INPROJ_RECOMPUTE=False), autocast)
    assert base[3] == base[4] == [] and base[5] == [], "hooks installed with the recomputes off"
    dt = torch.bfloat16 if autocast else torch.float32
    cfg = base[0]
    di, G, N, H, P = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads, cfg.headdim
    nb_conv = RB * L * cfg.conv_dim * dt.itemsize  # the conv output's storage
    nb_in = RB * L * (2 * di + 2 * G * N + H) * dt.itemsize  # the in_proj output's storage
    for inproj in (False, True):
        _, outs, grads, dropped, kept, alive = _recompute_run(
            monkeypatch, dict(CONV_RECOMPUTE=True, INPROJ_RECOMPUTE=inproj), autocast)
        conv_views = [(nb_conv, (RB, L, H, P), dt), (nb_conv, (RB, L, G, N), dt), (nb_conv, (RB, L, G, N), dt)]
        if not inproj:
            assert sorted(dropped) == sorted(conv_views), dropped
        else:  # also the conv input, z (gated norm) and dt (SSD) views of the in_proj output
            assert sorted({d[0] for d in dropped}) == sorted({nb_in, nb_conv}), dropped
            assert set(conv_views) | {(nb_in, (RB, cfg.conv_dim, L), dt), (nb_in, (RB, L, di), dt),
                                      (nb_in, (RB, L, H), dt)} <= set(dropped), dropped
        gone = (nb_conv, nb_in) if inproj else (nb_conv,)
        assert kept and all(k[0] not in gone for k in kept), kept
        assert alive == [False] * (1 + inproj)
        assert all(torch.equal(a, b) for a, b in zip(base[1], outs))
        assert all(torch.equal(a, b) for a, b in zip(base[2], grads))


def test_conv_recompute_steps_aside_under_checkpointing(monkeypatch):
    """Saved-tensor hooks do not nest: under activation checkpointing (its own hooks) the mixer leaves
    the conv output to the checkpoint, and the gradients equal those without checkpointing."""
    import hybridna.model as hm

    monkeypatch.setattr(hm, "CONV_RECOMPUTE", True)
    calls = []
    real = hm._recompute_saved
    monkeypatch.setattr(hm, "_recompute_saved", lambda *a: calls.append(1) or real(*a))
    cfg = HybriDNAConfig.preset("tiny")
    torch.manual_seed(0)
    blk = HybriDNA(cfg).layers[0].to(DEVICE)
    x = torch.randn(RB, L, cfg.d_model, device=DEVICE, requires_grad=True)
    grads = [_block_grads(blk, x, ckpt) for ckpt in (False, True)]
    assert len(calls) == 1, calls  # the plain forward only: neither the checkpointed one nor its recompute
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_grad_slab_rules():
    """GradSlab's contract: a piece matches by its memory (any view of it: unflatten, transpose), nothing
    else does (a part of a piece, another tensor); a piece handed out twice starts a new buffer (no
    overwrite); assemble gives the base's gradient only from the views it handed out, once."""
    base = torch.randn(2, 5, 7)
    pieces = torch.split(base, [3, 4], dim=-1)
    slab = ku.GradSlab(base, pieces)
    assert slab.dest(pieces[1].unflatten(-1, (2, 2))).i == 1
    assert slab.dest(pieces[0].transpose(1, 2)).i == 0
    assert slab.dest(pieces[0][..., :2]) is None and slab.dest(torch.randn(2, 5, 3)) is None
    d0, d1 = slab.dest(pieces[0]), slab.dest(pieces[1].unflatten(-1, (2, 2)))
    g0 = d0.take()
    g0b = d0.take()  # a second request: a new buffer
    assert g0.untyped_storage().data_ptr() != g0b.untyped_storage().data_ptr()
    g1 = d1.take().flatten(-2)
    assert slab.assemble([g0, g1]) is None and slab.buf is None  # g0 is not in the current buffer
    g0, g1 = d0.take(), d1.take().flatten(-2)
    g0.fill_(1.0)
    g1.fill_(2.0)
    full = slab.assemble([g0, g1])
    assert full is not None and full.shape == base.shape and slab.buf is None
    assert torch.equal(full, torch.cat([torch.ones(2, 5, 3), torch.full((2, 5, 4), 2.0)], -1))
    assert slab.assemble([g0, g1]) is None  # released: nothing handed out since


def test_set_mlp_recompute(monkeypatch):
    """HybriDNA.set_mlp_recompute overrides HYBRIDNA_MLP_RECOMPUTE per model: 0 keeps every block's gate_up output,
    1 recomputes it everywhere, a fraction in the first round(f * n_layer) blocks, None goes back to the module's;
    anything else is refused, naming the argument. The saved tensors follow (h saved or not)."""
    import hybridna.model as hm

    monkeypatch.setattr(hm, "MLP_RECOMPUTE", 1.0)
    cfg = HybriDNAConfig.preset("tiny")
    model = HybriDNA(cfg)
    assert all(blk._mlp_recompute() for blk in model.layers)
    model.set_mlp_recompute(0.0)
    assert not any(blk._mlp_recompute() for blk in model.layers)
    model.set_mlp_recompute(0.5)
    assert [blk._mlp_recompute() for blk in model.layers] == [i < cfg.n_layer // 2 for i in range(cfg.n_layer)]
    model.set_mlp_recompute(None)
    assert all(blk._mlp_recompute() for blk in model.layers)
    for bad in (1.5, -0.1, "all"):
        with pytest.raises(ValueError, match="fraction"):
            model.set_mlp_recompute(bad)
    blk = model.layers[0].to(DEVICE)
    x = torch.randn(B, L, cfg.d_model, device=DEVICE, requires_grad=True)
    m = torch.randn(B, L, cfg.d_model, device=DEVICE, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in blk.parameters()}
    h_shape = (B, L, 2 * cfg.d_intermediate)
    for frac, saved_h in ((0.0, True), (1.0, False)):
        model.set_mlp_recompute(frac)
        with ku.backend("triton"):
            _, saved = _saved_bytes(lambda: blk.mlp_residual(x, m))
        shapes = {v[1] for k, v in saved.items() if k not in params}
        assert (h_shape in shapes) == saved_h, (frac, shapes)
