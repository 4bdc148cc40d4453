"""Cached generation: decoding logits equal a full forward pass at every step, ragged prompt batches,
sampling controls, eos, and (GPU) the CUDA-graph decode step."""
import pytest
import torch
from helpers import DEVICE, HAS_CUDA, assert_close, assert_close_model, dtype_id, tol

import hybridna_kernels.utils as ku
from hybridna import HybriDNA, HybriDNAConfig
from hybridna.generation import allocate_cache, decode_step, generate, prefill, sample_next
from hybridna.tokenizer import BOS_ID, EOS_ID, PAD_ID


def tiny(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return HybriDNA(HybriDNAConfig.preset("tiny", **kw)).to(dtype)


def rand_ids(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 9, (B, L), generator=g)


@pytest.fixture(autouse=True)
def _reference_backend(request):
    if request.node.originalname.startswith(("test_gpu_", "test_kernels_")):
        yield
        return
    with ku.backend("reference"):
        yield


VARIANTS = {
    "default": {},
    "rotary": dict(rotary=True),
    "window5": dict(attn_window=5),
    "untied-rotary-window": dict(tie_embeddings=False, rotary=True, attn_window=9),
}


# Every variant in fp64; fp32 once (the default layout) is enough.
@pytest.mark.parametrize("variant, dtype", [(v, torch.float64) for v in VARIANTS] + [("default", torch.float32)],
                         ids=lambda a: dtype_id(a) if isinstance(a, torch.dtype) else a)
def test_cached_decode_matches_full_forward(variant, dtype):
    """Greedy generation with the recurrent cache: the logits each new token was drawn from equal the
    full-forward logits at that position, at every step. The prompt (70) is longer than the chunk (64)
    so the prefill crosses a chunk boundary."""
    m = tiny(dtype, **VARIANTS[variant])
    prompt = rand_ids(2, 70, seed=1)
    T = 12
    out, step_logits = generate(m, prompt, T, temperature=0, return_logits=True)
    assert out.shape == (2, 70 + T) and torch.equal(out[:, :70], prompt)
    full = m(out).logits[:, 69: 69 + T]  # position t predicts token t + 1
    assert_close(f"decode-logits-{variant}", full, step_logits, tol(dtype, "fwd"))
    allowed = step_logits.index_fill(-1, torch.tensor([PAD_ID, BOS_ID]), float("-inf"))  # never generated
    assert torch.equal(out[:, 70:], allowed.argmax(-1))


def test_decode_sees_updated_A_log():
    """Decoding caches A = -exp(A_log) per A_log version: after an in-place update of A_log (an
    optimizer step, load_state_dict) the cached decode still matches the full forward."""
    m = tiny(torch.float64)
    prompt = rand_ids(1, 20, seed=3)
    generate(m, prompt, 3, temperature=0)  # fills the cache of A
    with torch.no_grad():
        for blk in m.layers:
            if not blk.is_attention:
                blk.mixer.A_log.add_(0.7)
    out, step_logits = generate(m, prompt, 4, temperature=0, return_logits=True)
    assert_close("decode-after-A_log-update", m(out).logits[:, 19: 23], step_logits, tol(torch.float64, "fwd"))


def test_ragged_prompts_match_generating_alone():
    m = tiny(rotary=True, attn_window=20)
    lens = [37, 21, 5]
    prompts = rand_ids(3, 37, seed=2)
    for b, n in enumerate(lens):
        prompts[b, n:] = PAD_ID
    T = 15
    out, lg = generate(m, prompts, T, temperature=0, return_logits=True)
    assert out.shape == (3, 37 + T)
    for b, n in enumerate(lens):
        alone, lg1 = generate(m, prompts[b: b + 1, :n], T, temperature=0, return_logits=True)
        assert torch.equal(out[b, : n + T], alone[0]), f"row {b}"
        assert (out[b, n + T:] == PAD_ID).all()
        assert_close(f"row{b}-logits", lg1[0], lg[b], 1e-10)
    # Explicit lengths (a prompt may end in a token that looks like padding).
    out2 = generate(m, prompts, T, temperature=0, lengths=torch.tensor(lens))
    assert torch.equal(out2, out)


def test_prefill_then_steps_equals_forward_states():
    """prefill + decode_step directly, with a cache of the exact size; a full cache is refused."""
    m = tiny()
    ids = rand_ids(2, 30, seed=3)
    cache = allocate_cache(m, 2, 30)
    logits = prefill(m, ids[:, :25], [25, 25], cache)
    full = m(ids).logits
    assert_close("prefill", full[:, 24], logits, 1e-10)
    for t in range(25, 30):
        logits = decode_step(m, ids[:, t], cache)
        assert_close(f"step{t}", full[:, t], logits, 1e-10)
    with pytest.raises(ValueError, match="cache: full"):
        decode_step(m, ids[:, 0], cache)


def test_sampling_controls():
    m = tiny()
    prompt = rand_ids(2, 16, seed=4)
    a = generate(m, prompt, 20, temperature=1.0, seed=7)
    b = generate(m, prompt, 20, temperature=1.0, seed=7)
    c = generate(m, prompt, 20, temperature=1.0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(m, prompt, 20, temperature=0)
    assert torch.equal(generate(m, prompt, 20, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(generate(m, prompt, 20, temperature=0.7, top_p=1e-6, seed=3), greedy)
    assert not (a[:, 16:] == PAD_ID).any() and not (a[:, 16:] == BOS_ID).any()
    assert torch.equal(generate(m, prompt, 0), prompt)
    st = {}
    assert torch.equal(generate(m, prompt, 20, temperature=0, stats=st), greedy)
    assert st["new_tokens"] == 20 and min(st["prefill_s"], st["decode_s"]) > 0


def test_sample_next_truncation():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    top2 = sample_next(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    # Nucleus 0.7: {0.5, 0.3} reaches it; the renormalised frequencies are 5/8 and 3/8.
    nuc = sample_next(logits, top_p=0.7, generator=g)
    assert set(nuc.tolist()) == {0, 1}
    assert abs((nuc == 0).float().mean().item() - 0.625) < 0.04
    full = sample_next(logits, generator=g)
    assert set(full.tolist()) == {0, 1, 2, 3}
    assert abs((full == 3).float().mean().item() - 0.05) < 0.02
    cold = sample_next(logits, temperature=0.05, generator=g)
    assert (cold == 0).all()


def test_eos_stops_rows():
    m = tiny()
    prompt = rand_ids(2, 10, seed=5)
    T = 6
    greedy = generate(m, prompt, T, temperature=0)
    eos = int(greedy[0, 12])  # a token row 0 emits greedily; each row must stop at its first occurrence
    out = generate(m, prompt, T, temperature=0, eos_token_id=eos)
    stops = []
    for b in range(2):
        new = greedy[b, 10:]
        hit = (new == eos).nonzero()
        k = int(hit[0]) + 1 if len(hit) else T  # new tokens kept, the eos included
        stops.append(k)
        assert torch.equal(out[b, 10: 10 + k], new[:k]) and (out[b, 10 + k:] == PAD_ID).all()
    assert stops[0] <= 3
    assert out.shape[1] == 10 + max(stops)
    # One row that stops: generation ends right after its eos.
    alone = generate(m, prompt[:1], T, temperature=0, eos_token_id=eos)
    assert alone.shape == (1, 10 + stops[0]) and alone[0, -1] == eos
    assert EOS_ID == 2


@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(eos_token_id=99), "eos_token_id"),
    (dict(lengths=[11, 3]), "lengths"),
])
def test_generate_validation(kw, match):
    m = tiny()
    args = dict(max_new_tokens=3)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        generate(m, rand_ids(2, 10), **args)


def test_cuda_graph_needs_cuda():
    if HAS_CUDA:
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(tiny(), rand_ids(1, 10), 3, cuda_graph=True)


@pytest.mark.parametrize("variant", ["default", "untied-rotary-window"])
def test_graph_segments_match_decode_step(variant):
    """The piecewise segmentation the CUDA-graph decoder captures, run eagerly on CPU, reproduces
    decode_step exactly (the capture itself is checked on the GPU)."""
    from hybridna.generation import CUDAGraphDecoder

    m = tiny(**VARIANTS[variant])
    ids = rand_ids(2, 30, seed=8)
    caches = [allocate_cache(m, 2, 30) for _ in range(2)]
    for c in caches:
        prefill(m, ids[:, :22], [22, 22], c)
    dec = CUDAGraphDecoder(m, caches[1], use_graphs=False)
    for t in range(22, 30):
        want = decode_step(m, ids[:, t], caches[0])
        got = dec.step(ids[:, t])
        assert_close(f"segments-step{t}", want, got, 1e-12)
    assert caches[1].lengths == [30, 30]


def _ragged_kernel_decode(cfg, fused, monkeypatch):
    """Prefill two prompts of different lengths (packed: the kernels' varlen modes) and decode 3
    tokens through the Triton kernels in fp32 (per-op or fused step), against the fp64 reference full
    forward of each row on the same tokens. Returns the fp32 model and the ids."""
    from hybridna import generation

    m = tiny(torch.float64, **cfg).to(DEVICE)
    ids = rand_ids(2, 19, seed=7).to(DEVICE)
    lens, T = [16, 11], 3
    prompts = ids[:, :16].clone()
    prompts[1, 11:] = PAD_ID
    forced = torch.stack([ids[0, 16:19], ids[1, 11:14]])
    with ku.backend("reference"):
        ref = torch.stack([m(ids[:1, :19]).logits[0, 15:18], m(ids[1:, :14]).logits[0, 10:13]])
    m = m.float()
    monkeypatch.setattr(generation, "FUSED_DECODE", fused)
    with ku.backend("triton"):
        assert generation.fused_decode_supported(m) == fused
        _, lg = generate(m, prompts, T, temperature=0, return_logits=True, forced_tokens=forced, lengths=lens)
    assert_close(f"kernel-decode-fp32-{'fused' if fused else 'perop'}", ref, lg, tol(torch.float32, "fwd"))
    return m, ids


def test_kernels_decode_matches_reference(monkeypatch):
    """The per-op decode step through the Triton kernels (the interpreter on CPU: ssd_step,
    causal_conv1d_step, flash_attention with seqlen_q = 1), ragged prompts, against the fp64
    reference; short, so the interpreter stays fast."""
    _ragged_kernel_decode(dict(rotary=True), False, monkeypatch)


# the default layout (K/V written by the qkv GEMV) runs in test_kernels_device_loop_generate
@pytest.mark.parametrize("variant", ["untied-rotary-window"])
def test_kernels_fused_decode_matches_reference(variant, monkeypatch):
    """The fused decode step (hybridna_kernels.decode through the interpreter, fp32): prompts of
    different lengths (each row at its own device-side position), against the fp64 reference full
    forward of each row; then the fused CUDA-graph decoder's step run eagerly equals decode_step."""
    from hybridna import generation
    from hybridna.generation import CUDAGraphDecoder

    m, ids = _ragged_kernel_decode(VARIANTS[variant], True, monkeypatch)
    with ku.backend("triton"):
        caches = [allocate_cache(m, 2, 19) for _ in range(2)]
        for c in caches:
            prefill(m, ids[:, :16], [16, 16], c)
        dec = CUDAGraphDecoder(m, caches[1], use_graphs=False)
        assert dec.fused
        for t in range(16, 18):
            monkeypatch.setattr(generation, "FUSED_DECODE", False)
            want = decode_step(m, ids[:, t].to(DEVICE), caches[0])  # the per-op step
            monkeypatch.setattr(generation, "FUSED_DECODE", True)
            got = dec.step(ids[:, t].to(DEVICE))
            assert_close(f"fused-graph-step{t}", want.double(), got, tol(torch.float32, "fwd"))
        assert caches[1].lengths == [18, 18] and int(dec.pos[0]) == 18


def test_kernels_device_loop_generate(monkeypatch):
    """generate()'s device loop (fused step + sampling kernel per token, run eagerly through the
    interpreter as the CUDA graph would run it): forced tokens with eos in them give the fp64
    reference logits at every step, rows stop at their eos (then <pad>) and generation ends at the
    step where the last row stopped (eos polled every 16 tokens, the output trimmed); sampling with a seed is reproducible and never suppressed."""
    from hybridna import generation

    m = tiny(torch.float64).to(DEVICE)
    ids = rand_ids(2, 22, seed=9).to(DEVICE)
    eos = 7
    ids[0, 17], ids[1, 19] = eos, eos  # row 0 stops at new token 1, row 1 at new token 3
    ids[1, 16:19] = 5
    ids[0, 16] = 6
    with ku.backend("reference"):
        ref = m(ids).logits[:, 15:19]
    m = m.float()
    monkeypatch.setattr(generation, "FUSED_DECODE", True)
    with ku.backend("triton"):
        out, lg = generate(m, ids[:, :16], 6, temperature=0, return_logits=True, forced_tokens=ids[:, 16:22],
                           eos_token_id=eos)
        assert out.shape == (2, 20) and lg.shape[:2] == (2, 4)
        assert torch.equal(out[1, 16:], ids[1, 16:20]) and torch.equal(out[0, 16:18], ids[0, 16:18])
        assert bool((out[0, 18:] == PAD_ID).all())
        # row 0 is fed <pad> after its eos: its logits follow the forward up to step 2
        assert_close("device-loop-logits", torch.cat([ref[0, :3], ref[1]]), torch.cat([lg[0, :3], lg[1]]),
                     tol(torch.float32, "fwd"))
        a = generate(m, ids[:, :16], 3, temperature=1.0, seed=3)
        b = generate(m, ids[:, :16], 3, temperature=1.0, seed=3)
        assert torch.equal(a, b) and not bool(((a[:, 16:] == PAD_ID) | (a[:, 16:] == BOS_ID)).any())


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True, "pdl"], ids=["perop", "fused", "fused-pdl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_gpu_kernels_decode_and_cuda_graph(dtype, fused, monkeypatch):
    """On the GPU with the Triton kernels: cached decode logits match the full forward (fp64
    reference), and the CUDA-graph decode step reproduces the eager decode step; per-op and fused."""
    from hybridna import generation

    import hybridna_kernels.decode.gemv as gm

    monkeypatch.setattr(generation, "FUSED_DECODE", bool(fused))
    monkeypatch.setattr(gm, "PDL", fused == "pdl")
    m = tiny(torch.float64, rotary=True).to(DEVICE)
    prompt = rand_ids(2, 100, seed=6).to(DEVICE)
    T = 16
    with ku.backend("reference"):
        out_ref = generate(m, prompt, T, temperature=0)
        ref = m(out_ref).logits[:, 99: 99 + T]
    m = m.to(dtype)
    with ku.backend("reference"):  # the same cached decode through the PyTorch references, in the same dtype
        _, same = generate(m, prompt, T, temperature=0, return_logits=True, forced_tokens=out_ref[:, 100:])
    _, lg = generate(m, prompt, T, temperature=0, return_logits=True, forced_tokens=out_ref[:, 100:])
    assert_close_model(f"gpu-decode-{dtype_id(dtype)}", ref, lg, same, tol(dtype, "fwd"))
    _, lg_graph = generate(m, prompt, T, temperature=0, return_logits=True, cuda_graph=True,
                           forced_tokens=out_ref[:, 100:])
    assert_close(f"gpu-graph-{dtype_id(dtype)}", lg.double(), lg_graph, tol(dtype, "fwd"))
    if fused:  # the device loop (sampling kernel in the graph) replayed == run eagerly, same seed
        a = generate(m, prompt, T, temperature=1.0, seed=5, cuda_graph=True, eos_token_id=EOS_ID)
        monkeypatch.setattr(generation, "DEVICE_LOOP_NEEDS_GRAPH", False)
        b = generate(m, prompt, T, temperature=1.0, seed=5, eos_token_id=EOS_ID)
        assert torch.equal(a, b)


def test_cli_generate_score_embed(tmp_path, capsys):
    import numpy as np

    from hybridna import DNATokenizer
    from hybridna.cli import main

    m = tiny(torch.float32)
    tok = DNATokenizer()
    m.add_tokens(tok, ["<HepG2>"])
    ck = tmp_path / "ck"
    m.save_pretrained(ck, tokenizer=tok)
    fa = tmp_path / "s.fa"
    fa.write_text(">a desc\nACGTAC\nGTTA\n>b\nGGGCCCATAT\n")
    (tmp_path / "v.tsv").write_text("v1\t3\tT\tb\nv2\t5\tGG\tb\n")
    assert main(["generate", "--model", str(ck), "--device", "cpu", "--seq", "<HepG2>ACGT", "--seq", "AC", "--max-new-tokens", "9",
                 "--seed", "1", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[0].startswith(">seq0_0 prompt=<HepG2>ACGT new_tokens=9") and len(out[1]) == 9
    assert set("".join(out[1::2])) <= set("ACGTN") and len([ln for ln in out if ln.startswith(">")]) == 4
    assert main(["score", "--model", str(ck), "--device", "cpu", "--fasta", str(fa), "--reduce", "mean"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().split("\n")]
    ids = tok.batch_encode(["ACGTACGTTA", "GGGCCCATAT"], return_tensors="pt")["input_ids"]
    want = m.score(ids, reduce="mean")
    assert rows[0] == ["name", "length", "loglik_mean"] and [r[0] for r in rows[1:]] == ["a", "b"]
    assert abs(float(rows[1][2]) - want[0].item()) < 1e-5 and abs(float(rows[2][2]) - want[1].item()) < 1e-5
    assert main(["score", "--model", str(ck), "--device", "cpu", "--fasta", str(fa), "--variants", str(tmp_path / "v.tsv")]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().split("\n")]
    alt = tok.batch_encode(["GGGCCGGTAT"], return_tensors="pt")["input_ids"]
    llr = m.variant_effect(ids[1:], alt).item()
    assert rows[1][:4] == ["v1", "b", "3", "T"] and abs(float(rows[2][4]) - llr) < 1e-5
    assert main(["embed", "--model", str(ck), "--device", "cpu", "--fasta", str(fa), "--out", str(tmp_path / "e.npy")]) == 0
    e = np.load(tmp_path / "e.npy")
    assert e.shape == (2, 64) and np.allclose(e[1], m.embed(ids[1:]).numpy(), atol=1e-5)
    assert (tmp_path / "e.names.txt").read_text().split() == ["a", "b"]
