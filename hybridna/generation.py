"""Cached generation: prefill with the chunked kernels, then decode one token at a time.

Prefill runs the prompt through `ssd_scan` / `causal_conv1d` / `flash_attention` and keeps, per
layer, the SSD state (B, H, P, N) and the conv state (B, conv_dim, width - 1) of the Mamba layers and
the K, V cache (B, max_len, Hkv, hd) of the attention layers. Each new token then costs one
`ssd_step` + `causal_conv1d_step` per Mamba layer (independent of the prompt length) and one
`flash_attention` with seqlen_q = 1 over the cache per attention layer.

Prompts of different lengths: right-padded input_ids with their true lengths. Left padding would be
wrong for the SSM (pad tokens would flow into the state), so prompts of different lengths are packed
into one row and prefilled with the kernels' variable-length modes (ssd_scan cu_seqlens, conv
seq_idx, flash_attention cu_seqlens), each at its own length; while decoding, the attention layers
attend, row by row, over exactly that row's keys. A row's continuation is then the one it gets when generated alone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from hybridna_kernels import flash_attention, ssd_step
from hybridna_kernels.utils import use_kernel

from .model import Attention, HybriDNA, KVState, MambaState, Packed, _lengths_from
from .tokenizer import BOS_ID, PAD_ID

__all__ = ["InferenceCache", "allocate_cache", "prefill", "decode_step", "fused_decode_step", "sample_next",
           "generate", "CUDAGraphDecoder"]

# The fused decode step (hybridna_kernels.decode: ~5 kernels per layer, the attention's cache length on
# the device, so the CUDA-graph decoder captures the whole step as one graph). "0" keeps the per-op
# step (Block.step) and the piecewise graphs. Read at call time (tests and benchmarks flip it). On by
# default since the first GPU run (H100, 300m bf16: 0.707 vs 0.994 ms per token at a 1k prompt).
FUSED_DECODE = os.environ.get("HYBRIDNA_FUSED_DECODE", "1") != "0"


def fused_decode_supported(model: HybriDNA) -> bool:
    """The fused step runs the Triton kernels (CUDA, or the interpreter) on fp32 / fp16 / bf16 models."""
    w = model.embedding.weight
    return FUSED_DECODE and w.dtype != torch.float64 and use_kernel(w)


@dataclass
class InferenceCache:
    layers: list  # MambaState or KVState per layer
    lengths: list[int]  # tokens held per row
    max_len: int


def allocate_cache(model: HybriDNA, batch: int, max_len: int, *, dtype=None, device=None) -> InferenceCache:
    w = model.embedding.weight
    dtype, device = dtype or w.dtype, device or w.device
    layers = []
    for blk in model.layers:
        if blk.is_attention:
            layers.append(blk.mixer.allocate_state(batch, max_len, dtype, device))
        else:
            layers.append(blk.mixer.allocate_state(batch, dtype, device))
    return InferenceCache(layers=layers, lengths=[0] * batch, max_len=max_len)


@torch.no_grad()
def prefill(model: HybriDNA, input_ids: torch.Tensor, lengths: list[int], cache: InferenceCache) -> torch.Tensor:
    """Run each row's first lengths[b] tokens, filling the cache. Returns the last position's logits (B, V)."""
    B = input_ids.shape[0]
    if all(n == lengths[0] for n in lengths):
        x, delta = _prefill_blocks(model, input_ids[:, : lengths[0]], cache, None)  # (B, L, d)
        x, delta = x[:, -1], None if delta is None else delta[:, -1]
    else:  # pack the prompts into one row: every kernel runs once, each prompt at its own length
        flat = torch.cat([input_ids[b, :n] for b, n in enumerate(lengths)])[None]  # (1, total)
        x, delta = _prefill_blocks(model, flat, cache, lengths)
        ends = torch.tensor(lengths, device=x.device).cumsum(0) - 1
        x, delta = x[0, ends], None if delta is None else delta[0, ends]  # (B, d)
    # the final norm only where logits are needed (model.hidden normalises every position)
    last = model.norm_f(x) if delta is None else model.norm_f(x, delta)[0]
    cache.lengths = list(lengths)
    assert last.shape[0] == B
    return model.logits_from_hidden(last)  # (B, V)


def _prefill_blocks(model: HybriDNA, input_ids, cache, lengths):
    """model.hidden's block loop (deferred residual adds) without its final norm: (x, delta), the
    residual stream being x + delta at every position."""
    packed = None
    if lengths is not None:
        if input_ids.shape[0] != 1 or sum(lengths) != input_ids.shape[1] or min(lengths) < 1:
            raise ValueError(f"lengths: expected positive lengths summing to seqlen {input_ids.shape[1]}, "
                             f"got {lengths}")
        packed = Packed.from_lengths([int(n) for n in lengths], input_ids.device)
    x, delta = model.embedding(input_ids), None
    for i, blk in enumerate(model.layers):
        x, delta = blk(x, cache.layers[i], None, packed, delta=delta, defer_add=True)
    return x, delta


@torch.no_grad()
def decode_step(model: HybriDNA, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
    """Feed one token per row (B,) and return the next-token logits (B, V)."""
    if max(cache.lengths) >= cache.max_len:
        raise ValueError(f"cache: full ({cache.max_len} tokens); allocate a larger cache")
    if fused_decode_supported(model):
        pos = torch.tensor(cache.lengths, dtype=torch.long, device=model.embedding.weight.device)
        logits = fused_decode_step(model, tokens, cache, pos)
        cache.lengths = [n + 1 for n in cache.lengths]
        return logits
    x = model.embedding(tokens)  # (B, d)
    for blk, st in zip(model.layers, cache.layers):
        x = blk.step(x, st, cache.lengths)
    cache.lengths = [n + 1 for n in cache.lengths]
    return model.logits_from_hidden(model.norm_f(x))  # (B, V)


@torch.no_grad()
def fused_decode_step(model: HybriDNA, tokens: torch.Tensor, cache: InferenceCache, pos: torch.Tensor) -> torch.Tensor:
    """decode_step through the fused decode kernels; pos (B,) int64 on the device holds each row's
    cache length before the token (not advanced here, cache.lengths untouched). Per Mamba block:
    norm1 + in_proj + conv step, ssd_step, gated norm + out_proj + residual add, norm2 + gate_up +
    SwiGLU, down + residual add; per attention block: norm1 + qkv_proj + K/V cache write, the
    attention step (2 kernels), out_proj + residual add and the same MLP. Nothing depends on host
    values that change between steps, so the step can be captured once and replayed."""
    from hybridna_kernels.decode import attention_step, decode_gemv
    from hybridna_kernels.decode.gemv import use_pdl
    from hybridna_kernels.ssd.step import ssd_step_fwd

    B = tokens.shape[0]
    x = model.embedding(tokens)  # (B, d)
    for blk, st in zip(model.layers, cache.layers):
        mix = blk.mixer
        n1 = blk.norm1
        if blk.is_attention:
            att: Attention = mix
            if att.cfg.rotary:  # rotary between the projection and the cache: the unfused projection
                q, k, v = att._qkv(n1(x)[:, None], pos[:, None])  # (B, 1, h, hd)
                rows = torch.arange(B, device=x.device)
                st.k[rows, pos] = k[:, 0].to(st.k.dtype)
                st.v[rows, pos] = v[:, 0].to(st.v.dtype)
                q = q[:, 0]
            else:
                q = decode_gemv(x, att.qkv_proj.weight, norm_weight=n1.weight, eps=n1.eps,
                                kv=(st.k, st.v, pos, att.hq * att.hd)).view(B, att.hq, att.hd)
            o = attention_step(q, st.k, st.v, pos, window=att.cfg.attn_window)  # (B, hq, hd)
            x = decode_gemv(o.reshape(B, -1), att.out_proj.weight, residual=x)
        else:
            di, H, P, G, N = mix.d_inner, mix.nheads, mix.headdim, mix.ngroups, mix.d_state
            zx = decode_gemv(x, mix.in_proj.weight, norm_weight=n1.weight, eps=n1.eps,
                             conv=(st.conv, mix.conv_weight, mix.conv_bias, di))  # z, conv(x B C), dt
            xs = zx[:, di: 2 * di]
            Bm = zx[:, 2 * di: 2 * di + G * N]
            Cm = zx[:, 2 * di + G * N: 2 * di + 2 * G * N]
            dt = zx[:, di + mix.conv_dim:]
            args = (st.ssm, xs.unflatten(-1, (H, P)), dt, mix._A_step(x), Bm.unflatten(-1, (G, N)),
                    Cm.unflatten(-1, (G, N)))
            if use_pdl(x):  # the step kernel itself, launched with PDL like its neighbours
                y = ssd_step_fwd(*args, mix.D, None, mix.dt_bias, True, (float(mix.cfg.dt_limit[0]),
                                 float(mix.cfg.dt_limit[1])), pdl=True)  # (B, H, P)
            else:
                y = ssd_step(*args, D=mix.D, dt_bias=mix.dt_bias, dt_softplus=True, dt_limit=mix.cfg.dt_limit)
            x = decode_gemv(y.reshape(B, di), mix.out_proj.weight, norm_weight=mix.norm.weight, eps=mix.norm.eps,
                            z=zx[:, :di], group_size=mix.norm.group_size, residual=x)
        if blk.mlp is not None:
            n2 = blk.norm2
            a = decode_gemv(x, blk.mlp.gate_up.weight, norm_weight=n2.weight, eps=n2.eps, swiglu=True)
            x = decode_gemv(a, blk.mlp.down.weight, residual=x)
    nf = model.norm_f
    return decode_gemv(x, model.lm_head.weight, norm_weight=nf.weight, eps=nf.eps)[:, : model.config.vocab_size]


def _check_sampling(temperature, top_k, top_p):
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature: expected a float >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a float in (0, 1], got {top_p!r}")


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row from logits (B, V): greedy when temperature == 0, else sampled from
    softmax(logits / temperature) restricted to the top_k tokens and the smallest set whose
    probability reaches top_p. Returns (B,) int64."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        srt, idx = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(srt, -1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens after the nucleus (the first always stays)
        logits = logits.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: HybriDNA, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_token_id: int | None = None, lengths=None, attention_mask=None, return_logits: bool = False,
             cuda_graph: bool = False, forced_tokens: torch.Tensor | None = None,
             suppress_tokens=(PAD_ID, BOS_ID), stats: dict | None = None):
    """Continue each prompt by up to max_new_tokens tokens.

    Args:
        input_ids: (B, L) prompts, right-padded with <pad> when their lengths differ.
        lengths / attention_mask: each row's prompt length (default: up to its last non-pad token).
        temperature: 0 is greedy; top_k / top_p: truncated sampling; seed: a private generator.
        eos_token_id: a row stops after emitting it (later positions are <pad>); generation ends
            when every row has stopped.
        return_logits: also return the logits each new token was drawn from, (B, T, V).
        cuda_graph: replay the decode step from CUDA graphs (CUDA, prompts of equal length).
        suppress_tokens: ids never sampled (default <pad> and <bos>, never continuations; an
            untrained model may still rank them high). return_logits gives the raw logits.
        stats: a dict to fill with wall times (the device synchronised at the boundaries):
            "prefill_s" (prompt into the cache), "setup_s" (graph capture), "decode_s" (the token
            loop, sampling included) and "new_tokens".
        forced_tokens: (B, max_new_tokens) tokens fed instead of sampled ones (teacher forcing, to
            compare decoding paths on the same tokens).
    Returns:
        (B, max(lengths) + T) int64 ids: row b holds its prompt, its T new tokens, then <pad>
        (T = max_new_tokens unless every row stopped earlier); with return_logits, (ids, logits).
    """
    model._check_ids(input_ids)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p)
    V = model.config.vocab_size
    if eos_token_id is not None and not 0 <= eos_token_id < V:
        raise ValueError(f"eos_token_id: expected an id in [0, {V}), got {eos_token_id!r}")
    B, L = input_ids.shape
    if forced_tokens is not None and tuple(forced_tokens.shape) != (B, max_new_tokens):
        raise ValueError(f"forced_tokens: expected shape {(B, max_new_tokens)}, got {tuple(forced_tokens.shape)}")
    lens = _lengths_from(input_ids, lengths, attention_mask).tolist()
    device = model.embedding.weight.device
    input_ids = input_ids.to(device)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

    uniform = all(n == lens[0] for n in lens)
    if cuda_graph and max_new_tokens > 1 and not (device.type == "cuda" and uniform):
        raise ValueError("cuda_graph: needs a CUDA model and prompts of equal length")

    def clock():
        if stats is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    t0 = clock()
    cache = allocate_cache(model, B, max(lens) + max_new_tokens)
    logits = prefill(model, input_ids, lens, cache)  # (B, V)
    t1 = clock()
    banned = torch.tensor(sorted(set(int(t) for t in suppress_tokens)), dtype=torch.long, device=device)
    if banned.numel() and (int(banned.min()) < 0 or int(banned.max()) >= V):
        raise ValueError(f"suppress_tokens: expected ids in [0, {V}), got {banned.tolist()}")
    if banned.numel() >= V:
        raise ValueError("suppress_tokens: suppresses every token")
    if (uniform and max_new_tokens > 1 and top_k is None and top_p is None and fused_decode_supported(model)
            and (cuda_graph or device.type != "cuda" or not DEVICE_LOOP_NEEDS_GRAPH)):
        out = _device_loop(model, cache, logits, lens, input_ids, max_new_tokens, banned, temperature=temperature,
                           seed=seed, eos_token_id=eos_token_id, forced=forced_tokens, return_logits=return_logits,
                           use_graphs=cuda_graph, stats=stats, clock=clock, t0=t0, t1=t1)
        return out
    decoder = CUDAGraphDecoder(model, cache) if cuda_graph and max_new_tokens > 1 else None
    t2 = clock()

    new_tokens, all_logits = [], []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        if return_logits:
            all_logits.append(logits)
        allowed = logits.index_fill(-1, banned, float("-inf")) if banned.numel() else logits
        tok = sample_next(allowed, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        if forced_tokens is not None:
            tok = forced_tokens[:, t]
        tok = tok.masked_fill(done, PAD_ID)
        new_tokens.append(tok)
        if eos_token_id is not None:
            done |= tok == eos_token_id
            if bool(done.all()):
                break
        if t + 1 < max_new_tokens:
            logits = decoder.step(tok) if decoder is not None else decode_step(model, tok, cache)

    T = len(new_tokens)
    if stats is not None:
        stats.update(prefill_s=t1 - t0, setup_s=t2 - t1, decode_s=clock() - t2, new_tokens=T)
    out = torch.full((B, max(lens) + T), PAD_ID, dtype=torch.long, device=device)
    new = torch.stack(new_tokens, 1) if T else out.new_zeros((B, 0))  # (B, T)
    for b, n in enumerate(lens):
        out[b, :n] = input_ids[b, :n]
        out[b, n: n + T] = new[b]
    if return_logits:
        return out, (torch.stack(all_logits, 1) if T else logits.new_zeros((B, 0, V)))
    return out


# The fused decode without CUDA graphs (eager, on CUDA) keeps torch sampling; on CPU (the interpreter
# tests) the device loop runs eagerly so that its sampling kernel and bookkeeping are tested there.
DEVICE_LOOP_NEEDS_GRAPH = True


def _device_loop(model, cache, logits, lens, input_ids, T, banned, *, temperature, seed, eos_token_id, forced,
                 return_logits, use_graphs, stats, clock, t0, t1):
    """generate()'s token loop with sampling on the device (hybridna_kernels.decode.sample_step): each
    new token is one fused decode step plus one sampling kernel, captured together, so a token costs
    one CUDA graph replay and no host sync (eos is polled every 16 tokens). Sampling is the
    Gumbel-max trick on Philox noise keyed by (seed, step, row): the same distribution as
    sample_next, not the same random stream."""
    from hybridna_kernels.decode import sample_step

    B, L0, V = len(lens), lens[0], model.config.vocab_size
    device = logits.device
    hist = torch.full((B, T), PAD_ID, dtype=torch.long, device=device)
    lhist = torch.empty((B, T, V), dtype=logits.dtype, device=device) if return_logits else None
    done = torch.zeros(B, dtype=torch.uint8, device=device)
    ban = torch.zeros(V, dtype=torch.uint8, device=device)
    ban[banned] = 1
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the global CPU generator
    fr = forced.to(device=device, dtype=torch.long).contiguous() if forced is not None else None
    kw = dict(temperature=temperature, seed=seed, forced=fr, eos_token_id=eos_token_id, pad_id=PAD_ID,
              logits_hist=lhist)

    def post(dec):
        sample_step(dec.logits, ban, dec.tok, hist, done, dec.pos, L0, **kw)

    dec = CUDAGraphDecoder(model, cache, use_graphs=use_graphs, post=post)
    hist.fill_(PAD_ID)  # the warm-up ran post at step 0
    done.zero_()
    t2 = clock()
    pos0 = torch.full((1,), L0, dtype=torch.long, device=device)
    sample_step(logits, ban, dec.tok, hist, done, pos0, L0, **kw)  # token 0, from the prefill's logits
    steps = 1
    for t in range(1, T):
        if eos_token_id is not None and t % 16 == 0 and bool(done.all()):
            break
        dec.advance()
        steps += 1
    n = steps
    if eos_token_id is not None:  # generation ends at the step where the last row emitted eos
        is_eos = hist[:, :steps] == eos_token_id
        if bool(is_eos.any(1).all()):
            n = int(is_eos.float().argmax(1).max()) + 1
    if stats is not None:
        stats.update(prefill_s=t1 - t0, setup_s=t2 - t1, decode_s=clock() - t2, new_tokens=n)
    out = torch.full((B, L0 + n), PAD_ID, dtype=torch.long, device=device)
    out[:, :L0] = input_ids[:, :L0]
    out[:, L0:] = hist[:, :n]
    if return_logits:
        return out, lhist[:, :n]
    return out


class CUDAGraphDecoder:
    """The decode step replayed from CUDA graphs, for prompts of equal length.

    Attention over a cache that grows each step has a new shape every step, so the step is captured
    piecewise: one graph from the token embedding up to the first attention layer's Q (its K and V are
    written into the cache at a position read from a device tensor), one from that layer's attention
    output up to the next attention layer's Q, ..., and the last one up to the logits. The
    `flash_attention` calls in between run eagerly. With 3 attention layers in 24 (300m) that is 4
    graph replays and 3 attention launches per token instead of a few hundred kernel launches."""

    def __init__(self, model: HybriDNA, cache: InferenceCache, warmup: int = 2, use_graphs: bool = True,
                 post=None):
        """use_graphs=False runs the same segments eagerly (a CPU check of the segmentation). post(self):
        fused mode only, run (and captured) after each step, e.g. the sampling of the next token into
        self.tok; `advance()` then steps without reading or returning anything on the host."""
        self.model, self.cache, self.post = model, cache, post
        n0 = cache.lengths[0]
        if any(n != n0 for n in cache.lengths):
            raise ValueError("cache: CUDA graphs need rows of equal length")
        dev = model.embedding.weight.device
        if use_graphs and dev.type != "cuda":
            raise ValueError(f"cuda_graph: needs a model on a CUDA device, got {dev}")
        self.B = len(cache.lengths)
        self.pos = torch.full((1,), n0, dtype=torch.long, device=dev)  # cache length before the token
        self.tok = torch.zeros(self.B, dtype=torch.long, device=dev)
        self.attn = [i for i, blk in enumerate(model.layers) if blk.is_attention]
        self.use_graphs = use_graphs
        # fused: the whole step (fused_decode_step, then pos + 1) is one graph
        self.fused = fused_decode_supported(model)
        if not use_graphs:
            return
        # Warm up (Triton autotuning, allocator) on copies of the state so the real cache is untouched.
        saved = [self._clone_state(st) for st in cache.layers]
        for _ in range(warmup):
            if self.fused:
                self._fused_step(advance=False)
                if post is not None:
                    post(self)
            else:
                self._run_eager_segments(n0)
        for st, sv in zip(cache.layers, saved):
            self._restore_state(st, sv)
        self._capture_fused() if self.fused else self._capture()
        for st, sv in zip(cache.layers, saved):
            self._restore_state(st, sv)

    @staticmethod
    def _clone_state(st):
        if isinstance(st, MambaState):
            return (st.conv.clone(), st.ssm.clone())
        return None  # K/V beyond the current length are overwritten before being read

    @staticmethod
    def _restore_state(st, saved):
        if saved is not None:
            st.conv.copy_(saved[0])
            st.ssm.copy_(saved[1])

    # Segment s runs blocks from the residual after attention layer attn[s-1] (or the embedding) up to
    # the Q projection of attn[s] (or the logits).
    def _segment(self, s: int):
        m, cache = self.model, self.cache
        start = 0 if s == 0 else self.attn[s - 1]
        end = self.attn[s] if s < len(self.attn) else len(m.layers)
        if s == 0:
            x = m.embedding(self.tok)  # (B, d)
        else:
            blk = m.layers[start]
            x = self.resid + blk.mixer.out_proj(self.o.reshape(self.B, -1))
            if blk.mlp is not None:
                x = x + blk.mlp(blk.norm2(x))
            start += 1
        for i in range(start, end):
            x = m.layers[i].step(x, cache.layers[i], None)
        if s == len(self.attn):
            self.logits = m.logits_from_hidden(m.norm_f(x))  # (B, V)
            return
        blk = m.layers[end]
        att: Attention = blk.mixer
        positions = self.pos.expand(self.B)[:, None] if att.cfg.rotary else None
        q, k, v = att._qkv(blk.norm1(x)[:, None], positions)  # (B, 1, h, hd)
        st: KVState = cache.layers[end]
        st.k.index_copy_(1, self.pos, k)
        st.v.index_copy_(1, self.pos, v)
        self.resid, self.q = x, q

    def _attend(self, s: int, n: int):
        att = self.model.layers[self.attn[s]].mixer
        st = self.cache.layers[self.attn[s]]
        W = att.cfg.attn_window
        lo = 0 if W is None else max(0, n + 1 - W)
        return flash_attention(self.q, st.k[:, lo: n + 1], st.v[:, lo: n + 1], causal=True)

    def _run_eager_segments(self, n: int):
        for s in range(len(self.attn) + 1):
            self._segment(s)
            if s < len(self.attn):
                self.o = self._attend(s, n)
        return self.logits

    def _fused_step(self, advance: bool = True):
        pos = self.pos if self.B == 1 else self.pos.expand(self.B).contiguous()
        self.logits = fused_decode_step(self.model, self.tok, self.cache, pos)
        if advance:
            self.pos.add_(1)
        return self.logits

    def _capture_fused(self):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                self._fused_step()
                if self.post is not None:
                    self.post(self)
        torch.cuda.current_stream().wait_stream(stream)
        self.graphs = [g]
        self.logits_buf = self.logits

    def _capture(self):
        self.graphs, self.q_bufs, self.o_bufs = [], [], []
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for s in range(len(self.attn) + 1):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool, stream=stream):
                    self._segment(s)
                pool = g.pool()
                self.graphs.append(g)
                if s < len(self.attn):
                    self.q_bufs.append(self.q)
                    # Static buffer the next segment reads; each step copies the attention output in.
                    self.o = torch.empty_like(self.q)  # (B, 1, hq, hd), like flash_attention's output
                    self.o_bufs.append(self.o)
        torch.cuda.current_stream().wait_stream(stream)
        self.logits_buf = self.logits

    def advance(self):
        """One step on self.tok (fused mode, with post filling self.tok for the next one)."""
        if self.use_graphs:
            self.graphs[0].replay()
        else:
            self._fused_step()
            if self.post is not None:
                self.post(self)
        self.cache.lengths = [n + 1 for n in self.cache.lengths]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as decode_step(model, tokens, cache)."""
        cache = self.cache
        n = cache.lengths[0]
        if n >= cache.max_len:
            raise ValueError(f"cache: full ({cache.max_len} tokens); allocate a larger cache")
        self.tok.copy_(tokens)
        if self.fused:
            if self.use_graphs:
                self.graphs[0].replay()  # advances pos
                logits = self.logits_buf.clone()
            else:
                logits = self._fused_step()
            cache.lengths = [n + 1] * self.B
            return logits
        if not self.use_graphs:
            logits = self._run_eager_segments(n)
            self.pos.add_(1)
            cache.lengths = [n + 1] * self.B
            return logits
        for s, g in enumerate(self.graphs):
            g.replay()
            if s < len(self.attn):
                self.q = self.q_bufs[s]
                self.o_bufs[s].copy_(self._attend(s, n))
        self.pos.add_(1)
        cache.lengths = [n + 1] * self.B
        return self.logits_buf.clone()
