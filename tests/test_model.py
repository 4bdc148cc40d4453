"""HybriDNA model layer: config, forward/loss, causality, score, embed, checkpoints, vocabulary growth,
and the tiny preset through the Triton kernels against the reference path."""
import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, HAS_CUDA, assert_close, assert_close_model, dtype_id, tol

import hybridna_kernels.utils as ku
from hybridna import DNATokenizer, HybriDNA, HybriDNAConfig
from hybridna.tokenizer import N_ID, PAD_ID, reverse_complement_ids


def tiny(**kw):
    torch.manual_seed(0)
    return HybriDNA(HybriDNAConfig.preset("tiny", **kw))


def rand_ids(B, L, seed=0, lo=5, hi=9):  # A C G T
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (B, L), generator=g)


_KERNEL_TESTS = {"test_tiny_kernels_match_reference"}


@pytest.fixture(autouse=True)
def _reference_backend(request):
    # Whole models are too slow for the interpreter: the pure-PyTorch references, except where a
    # test asks for the kernels.
    if request.node.originalname in _KERNEL_TESTS:
        yield
        return
    with ku.backend("reference"):
        yield


# ---- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,target", [("300m", 0.3e9), ("3b", 3e9), ("7b", 7e9)])
def test_preset_param_counts(name, target):
    cfg = HybriDNAConfig.preset(name)
    assert abs(cfg.num_params() - target) / target < 0.05, cfg.summary()
    assert cfg.d_state == 128 and cfg.headdim == 64 and cfg.expand == 2 and cfg.d_conv == 4 and cfg.chunk_size == 256
    assert cfg.attn_layer_idx == [i for i in range(cfg.n_layer) if i % 8 == 4]


def test_preset_sizes_and_tiny():
    assert (HybriDNAConfig.preset("300m").d_model, HybriDNAConfig.preset("300m").n_layer) == (1024, 24)
    assert (HybriDNAConfig.preset("3b").d_model, HybriDNAConfig.preset("3b").n_layer) == (4096, 16)
    assert (HybriDNAConfig.preset("7b").d_model, HybriDNAConfig.preset("7b").n_layer) == (4096, 32)
    cfg = HybriDNAConfig.preset("tiny")
    assert cfg.attn_layer_idx == [4] and cfg.num_params() < 1e6
    for untie in (False, True):
        m = tiny(tie_embeddings=not untie)
        assert m.num_params() == m.config.num_params()
        assert [b.is_attention for b in m.layers] == [i == 4 for i in range(8)]
    assert HybriDNA(HybriDNAConfig.preset("tiny", vocab_size=11)).embedding.weight.shape[0] == 16


@pytest.mark.parametrize("kw,match", [
    (dict(headdim=48), "headdim"),
    (dict(attn_n_kv_heads=3), "attn_n_kv_heads"),
    (dict(d_conv=1), "d_conv"),
    (dict(vocab_size=8), "vocab_size"),
    (dict(attn_window=0), "attn_window"),
    (dict(ngroups=3), "ngroups"),
    (dict(d_model=0), "d_model"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=f"HybriDNAConfig.{match}"):
        HybriDNAConfig.preset("tiny", **kw)


def test_config_errors_and_roundtrip(tmp_path):
    with pytest.raises(ValueError, match="preset: expected one of"):
        HybriDNAConfig.preset("1b")
    with pytest.raises(ValueError, match="unknown config fields"):
        HybriDNAConfig.preset("tiny", d_modle=3)
    cfg = HybriDNAConfig.preset("tiny", attn_window=7, added_tokens=["<HepG2>"], vocab_size=11)
    cfg.save(tmp_path / "c.json")
    assert HybriDNAConfig.load(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["dt_limit"] == [0.0, "inf"]


def test_mamba2_init():
    m = tiny()
    mix = m.layers[0].mixer
    A = -torch.exp(mix.A_log)
    assert bool((A <= -1).all() and (A >= -16).all())
    dt = F.softplus(mix.dt_bias)
    assert bool((dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all())
    assert torch.equal(mix.D.detach(), torch.ones_like(mix.D))


# ---- forward / loss ---------------------------------------------------------------------------------
def test_forward_loss_ignores_pad_and_n():
    m = tiny().double()
    ids = rand_ids(2, 40)
    ids[0, 30:] = PAD_ID
    ids[1, 7] = N_ID
    out = m(ids, labels=ids)
    assert out.logits.shape == (2, 40, 10) and out.loss.dim() == 0
    lp = torch.log_softmax(out.logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    keep = (ids[:, 1:] != PAD_ID) & (ids[:, 1:] != N_ID)
    assert keep.sum() == 29 + 38
    torch.testing.assert_close(out.loss, -lp[keep].mean(), rtol=1e-12, atol=0)
    labels = ids.clone()
    labels[1, 20:] = -100
    keep[1, 19:] = False
    torch.testing.assert_close(m(ids, labels=labels).loss, -lp[keep].mean(), rtol=1e-12, atol=0)
    assert m(ids).loss is None
    with pytest.raises(ValueError, match="labels: expected shape"):
        m(ids, labels=ids[:, :5])
    with pytest.raises(ValueError, match="input_ids"):
        m(ids.float())


def test_causal_and_right_padding_invariant():
    m = tiny().double()
    ids = rand_ids(1, 70)
    ref = m(ids).logits
    ids2 = ids.clone()
    ids2[0, 50:] = torch.randint(0, 10, (20,))
    torch.testing.assert_close(m(ids2).logits[:, :50], ref[:, :50], rtol=1e-12, atol=1e-12)
    assert (m(ids2).logits[:, 50:] - ref[:, 50:]).abs().max() > 1e-6  # later positions do see the change
    # Row of a right-padded batch == the sequence alone (SSM state never sees later padding).
    batch = torch.cat([ids, ids2]).clone()
    batch[1, 33:] = PAD_ID
    torch.testing.assert_close(m(batch).logits[1, :33], m(ids2[:, :33]).logits[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, dict(rotary=True, attn_window=6)], ids=["default", "rotary-window"])
def test_packed_sequences_are_independent(kw):
    """hidden(..., lengths=) on sequences packed into one row equals each sequence alone."""
    m = tiny(**kw).double()
    lens = [17, 1, 70, 5]
    seqs = [rand_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    h, _ = m.hidden(torch.cat(seqs)[None], lengths=lens)
    for i, s in enumerate(seqs):
        o = sum(lens[:i])
        torch.testing.assert_close(h[0, o: o + lens[i]], m.hidden(s[None])[0][0], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="lengths"):
        m.hidden(torch.cat(seqs)[None], lengths=[17, 1, 70])


def test_hidden_states_and_backward():
    m = tiny(tie_embeddings=False)
    ids = rand_ids(2, 33)
    out = m(ids, labels=ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 9 and all(h.shape == (2, 33, 64) for h in hs)
    torch.testing.assert_close(m.logits_from_hidden(hs[-1]), out.logits)
    out.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---- score / variant effect -------------------------------------------------------------------------
def test_score_and_variant_effect():
    m = tiny().double()
    ids = rand_ids(3, 25, seed=3)
    ids[2, 15:] = PAD_ID
    lp = torch.log_softmax(m(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    keep = (ids[:, 1:] != PAD_ID) & (ids[:, 1:] != N_ID)
    want_sum = (lp * keep).sum(1)
    torch.testing.assert_close(m.score(ids).double(), want_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.score(ids, reduce="mean").double(), want_sum / keep.sum(1), rtol=1e-5, atol=1e-5)
    rc = reverse_complement_ids(ids)
    torch.testing.assert_close(m.score(ids, rc_average=True), (m.score(ids) + m.score(rc)) / 2)
    assert not torch.allclose(m.score(ids), m.score(rc))
    alt = ids.clone()
    alt[:, 10] = torch.where(ids[:, 10] == 5, 6, 5)
    torch.testing.assert_close(m.variant_effect(ids, alt), m.score(alt) - m.score(ids))
    torch.testing.assert_close(m.variant_effect(ids, ids), torch.zeros(3, dtype=m.score(ids).dtype))
    with pytest.raises(ValueError, match="reduce"):
        m.score(ids, reduce="max")


# ---- embeddings ---------------------------------------------------------------------------------------
def test_embed_echo_and_plain():
    m = tiny().double()
    ids = rand_ids(2, 12, seed=4)
    ids[1, 8:] = PAD_ID
    for b, n in ((0, 12), (1, 8)):
        seq = ids[b, :n]
        echo_ids = torch.cat([seq, seq])[None]
        hs = m(echo_ids, output_hidden_states=True).hidden_states
        for layer in (-1, 3):
            got = m.embed(ids, echo=True, pool="mean", layer=layer)[b]
            torch.testing.assert_close(got.double(), hs[layer][0, n:].mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m.embed(ids, pool="last")[b].double(), hs[-1][0, -1], rtol=1e-6, atol=1e-6)
        plain = m(seq[None], output_hidden_states=True).hidden_states
        torch.testing.assert_close(m.embed(ids, echo=False, layer=0)[b].double(), plain[0][0].mean(0),
                                   rtol=1e-6, atol=1e-6)
    assert m.embed(ids).shape == (2, 64)
    with pytest.raises(ValueError, match="pool"):
        m.embed(ids, pool="max")
    with pytest.raises(ValueError, match="layer"):
        m.embed(ids, layer=9)


# ---- checkpoints and vocabulary ------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_load_roundtrip(tmp_path, tie):
    m = tiny(tie_embeddings=tie, rotary=True)
    tok = DNATokenizer()
    m.add_tokens(tok, ["<HepG2>"])
    m.save_pretrained(tmp_path, tokenizer=tok)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "tokenizer.json"]
    m2 = HybriDNA.from_pretrained(tmp_path)
    assert m2.config == m.config and m2.config.added_tokens == ["<HepG2>"]
    assert (m2.lm_head.weight is m2.embedding.weight) == tie
    ids = torch.from_numpy(tok.encode("<HepG2>ACGTTGCAN"))[None]
    torch.testing.assert_close(m2(ids).logits, m(ids).logits, rtol=0, atol=0)
    assert DNATokenizer.from_pretrained(tmp_path).vocab == tok.vocab
    with pytest.raises(ValueError, match="not found"):
        HybriDNA.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_add_prompt_tokens_grows_embedding(tie):
    m = tiny(tie_embeddings=tie).double()
    tok = DNATokenizer()
    ids = rand_ids(1, 20)
    before = m(ids).logits
    new = [f"<cell{i}>" for i in range(9)]  # 10 + 9 = 19 tokens: padded vocab grows 16 -> 24
    assert m.add_tokens(tok, new) == list(range(10, 19))
    assert m.config.vocab_size == 19 and m.embedding.weight.shape[0] == 24 and m.lm_head.weight.shape[0] == 24
    assert (m.lm_head.weight is m.embedding.weight) == tie
    after = m(ids).logits
    assert after.shape == (1, 20, 19)
    torch.testing.assert_close(after[..., :10], before, rtol=0, atol=0)  # old tokens untouched
    prompt = torch.from_numpy(tok.encode("<cell8>ACGT"))[None]
    assert torch.isfinite(m(prompt, labels=prompt).loss)


# ---- the kernels against the reference path -------------------------------------------------------------
def _kernel_dtypes():
    return [torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])


@pytest.mark.parametrize("dtype", _kernel_dtypes(), ids=dtype_id)
def test_tiny_kernels_match_reference(dtype):
    """The tiny preset through the Triton kernels (interpreter on CPU) gives the logits of the fp64
    reference path within the forward tolerance of the compute dtype; a short sequence keeps the
    interpreter fast."""
    m = tiny(rotary=True).to(DEVICE).to(dtype)  # weights rounded to the compute dtype, for both paths
    ids = rand_ids(2, 24, seed=5).to(DEVICE)
    with ku.backend("reference"):
        same = m(ids).logits
        ref = copy.deepcopy(m).double()(ids).logits
    with ku.backend("triton"):
        out = m(ids).logits
    assert_close_model(f"logits-{dtype_id(dtype)}", ref, out, same, tol(dtype, "fwd"))
