"""Batch-1 decode of the 300m preset (bf16): per-op vs fused decode step, GEMV sweep, prefill vs forward.

    python bench/profile_decode.py [--prompts 1024,131072] [--modes perop,fused] [--top 12] [--gemv]

Per prompt length, one prefill; then per mode (HYBRIDNA_FUSED_DECODE off / on, switched at run time)
a CUDAGraphDecoder on the same cache (states restored between modes): ms/token of a replayed step
(median of 5 runs of 100 steps, events), kernels and GPU time per token (torch.profiler, first prompt
only), the error of that mode's cached decode against the full forward (greedy, 2,048-token prompt),
and generate()'s token loop (256 sampled tokens, CUDA graphs, sampling included) after the longest
prompt. --gemv times the fused GEMV against cuBLAS (F.linear) on every weight shape of the model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "tests"))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_generation import DEVICE, check_decode, copy_bandwidth, get_model, prefill_fn, step_bytes  # noqa: E402

from hybridna import generation  # noqa: E402
from hybridna.generation import CUDAGraphDecoder, allocate_cache, generate, prefill  # noqa: E402
from hybridna.model import MambaState  # noqa: E402


def _events_ms(fn, n):
    if not torch.cuda.is_available():  # CPU smoke run of the script (tiny preset)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e3
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


def _profile(fn, steps):
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows, total, count = [], 0.0, 0.0
    for ev in prof.key_averages():
        tt = (getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)) if cuda \
            else (ev.self_cpu_time_total if ev.key.startswith("triton") or "::" in ev.key else 0)
        if tt > 0:
            rows.append((tt / steps, ev.count / steps, ev.key[:80]))
            total += tt / steps
            count += ev.count / steps
    return total, count, sorted(rows, reverse=True)


def _bench_graph(fn, n=20):
    """Median ms of fn replayed from a CUDA graph of n calls (host-free: the GPU host is slow)."""
    import triton.testing

    return triton.testing.do_bench_cudagraph(lambda: [fn() for _ in range(n)], rep=30, return_mode="median") / n


def attn_sweep(model, L, out):
    """attention_step over a cache of L keys (the 300m attention shape, batch 1): split count x BN x
    warps x stages, host-free, against the bytes of K and V."""
    from hybridna_kernels.decode import attention_step, attention_step_ref

    cfg = model.config
    Hq, Hkv, D = cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim
    dt = model.embedding.weight.dtype
    kc = torch.randn(1, L, Hkv, D, device=DEVICE, dtype=dt)
    vc = torch.randn(1, L, Hkv, D, device=DEVICE, dtype=dt)
    q = torch.randn(1, Hq, D, device=DEVICE, dtype=dt)
    pos = torch.tensor([L - 1], device=DEVICE)
    ref = attention_step_ref(q.float(), kc.float(), vc.float(), pos)
    gb = 2 * kc.numel() * kc.element_size() / 1e9
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = []
    for mult in (2, 4, 8):
        for BN, w, st in ((64, 4, 3), (128, 4, 3), (64, 4, 4), (128, 8, 3), (64, 8, 4)):
            kw = dict(n_splits=mult * sms // Hkv, BN=BN, num_warps=w, num_stages=st)
            o = attention_step(q, kc, vc, pos, **kw)
            err = ((o.float() - ref).norm() / ref.norm()).item()
            if not err < 2e-2:
                res.append((float("inf"), kw, err))
                continue
            res.append((_bench_graph(lambda: attention_step(q, kc, vc, pos, **kw), n=5), kw, err))
    res.sort(key=lambda r: r[0])
    out["attn"] = [(r[0], r[1]) for r in res]
    print(f"attention_step L{L} (K+V {gb * 1e3:.0f} MB), best 4 of {len(res)}: " + "; ".join(
        f"{r[0] * 1e3:.1f} us ({gb / (r[0] * 1e-3):.0f} GB/s) x{r[1]['n_splits']} BN{r[1]['BN']} w{r[1]['num_warps']} "
        f"s{r[1]['num_stages']}" for r in res[:4]), flush=True)
    dflt = _bench_graph(lambda: attention_step(q, kc, vc, pos), n=5)
    print(f"attention_step default: {dflt * 1e3:.1f} us ({gb / (dflt * 1e-3):.0f} GB/s)", flush=True)


_DEFAULTS = {}


def set_mode(mode):
    """perop: Block.step + piecewise graphs; fused: the decode kernels, one graph; fusedpdl: + PDL;
    default: the library's defaults (HYBRIDNA_FUSED_DECODE / HYBRIDNA_DECODE_PDL as imported)."""
    import hybridna_kernels.decode.gemv as gm

    _DEFAULTS.setdefault("fused", generation.FUSED_DECODE)
    _DEFAULTS.setdefault("pdl", gm.PDL)
    if mode == "default":
        generation.FUSED_DECODE, gm.PDL = _DEFAULTS["fused"], _DEFAULTS["pdl"]
        return
    generation.FUSED_DECODE = mode.startswith("fused")
    gm.PDL = mode == "fusedpdl"


def gemv_sweep(model, out):
    """Fused GEMV vs cuBLAS on the 300m weight shapes (checked against F.linear first)."""
    import triton.testing

    from hybridna_kernels.decode import decode_gemv, gemv_config

    blk = next(b for b in model.layers if not b.is_attention)
    att = next(b for b in model.layers if b.is_attention)
    shapes = [("in_proj", blk.mixer.in_proj.weight, False), ("out_proj", blk.mixer.out_proj.weight, False),
              ("gate_up+swiglu", blk.mlp.gate_up.weight, True), ("down", blk.mlp.down.weight, False),
              ("qkv", att.mixer.qkv_proj.weight, False)]
    cfgs = [None, (4, 1024, 4), (8, 1024, 8), (16, 1024, 8), (8, 512, 4), (4, 2048, 8), (2, 2048, 4),
            (2, 1024, 4)]
    rows = []
    for name, w, sw in shapes:
        N, K = w.shape
        x = torch.randn(1, K, device=DEVICE, dtype=w.dtype)
        ref = torch.nn.functional.linear(x, w)
        if sw:
            g, u = ref.float().chunk(2, -1)
            ref = torch.nn.functional.silu(g) * u
        cub = _bench_graph(lambda: torch.nn.functional.linear(x, w))
        gb = w.numel() * w.element_size() / 1e9
        res = {"shape": name, "N": N, "K": K, "cublas_us": cub * 1e3, "cublas_gbs": gb / (cub * 1e-3)}
        best = None
        for c in cfgs:
            if c is not None and c[0] * min(c[1], K) * (2 if sw else 1) > 2048 * c[2]:
                continue  # spills registers (sm_90, Triton 3.6)
            cc = c or gemv_config(N // 2 if sw else N, K, sw)
            y = decode_gemv(x, w, swiglu=sw, config=cc)
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            if not err < 2e-2:
                res[f"err {cc}"] = err
                continue
            t = _bench_graph(lambda: decode_gemv(x, w, swiglu=sw, config=cc))
            res[str(cc) + (" (default)" if c is None else "")] = t * 1e3
            if best is None or t < best[0]:
                best = (t, cc)
        res["best"] = (best[0] * 1e3, best[1], gb / (best[0] * 1e-3)) if best else None
        rows.append(res)
    out["gemv"] = rows
    print("| weight | N x K | cuBLAS us (GB/s) | fused default us | best us (GB/s) cfg |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        dflt = next((v for k, v in r.items() if k.endswith("(default)")), float("nan"))
        b = r["best"]
        print(f"| {r['shape']} | {r['N']}x{r['K']} | {r['cublas_us']:.1f} ({r['cublas_gbs']:.0f}) | {dflt:.1f} | "
              + (f"{b[0]:.1f} ({b[2]:.0f}) {b[1]}" if b else "none correct") + " |")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="1024,131072")
    ap.add_argument("--modes", default="perop,fused,fusedpdl")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--top", type=int, default=0, help="print the top kernels of each mode (first prompt)")
    ap.add_argument("--gemv", action="store_true")
    ap.add_argument("--gen-modes", default=None, help="modes for the generate() timing (default: --modes)")
    ap.add_argument("--check-modes", default=None, help="modes for the 300m decode check (default: --modes)")
    ap.add_argument("--tiles", default="", help='extra fusedpdl rows at the first prompt, e.g. "4096,8;4096,4" '
                    "(HYBRIDNA_GEMV_TILE: weight elements per GEMV program, warps)")
    ap.add_argument("--attn", action="store_true", help="attention_step sweep at the longest prompt")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--prefill", action="store_true", help="prefill vs forward at the longest prompt")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    prompts = [int(p) for p in args.prompts.split(",")]
    modes = args.modes.split(",")
    model = get_model()
    bw = copy_bandwidth()
    cuda = torch.cuda.is_available()
    bw = bw or 1.0
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "copy_gbs": bw, "rows": []}
    print(f"device {out['device']}, copy {bw:.0f} GB/s", flush=True)
    table = []
    slack = args.steps + 8
    for i, L in enumerate(prompts):
        g = torch.Generator(device=DEVICE).manual_seed(0)
        ids = torch.randint(5, 9, (1, L), device=DEVICE, generator=g)
        cache = allocate_cache(model, 1, L + slack)
        with torch.no_grad():
            prefill(model, ids, [L], cache)
        saved = [(st.conv.clone(), st.ssm.clone()) if isinstance(st, MambaState) else None for st in cache.layers]
        floor = step_bytes(model, L) / (bw * 1e9) * 1e3
        tok = torch.randint(5, 9, (1,), device=DEVICE, generator=g)
        runs = [(m, None) for m in modes]
        if i == 0 and args.tiles:
            runs += [("fusedpdl", t) for t in args.tiles.split(";")]
        for mode, tile in runs:
            set_mode(mode)
            if tile is not None:  # "elements,warps[,pN]": HYBRIDNA_GEMV_TILE (+ HYBRIDNA_GEMV_PERSIST=N)
                parts = tile.split(",")
                os.environ["HYBRIDNA_GEMV_TILE"] = ",".join(parts[:2])
                if len(parts) > 2:
                    os.environ["HYBRIDNA_GEMV_PERSIST"] = parts[2].lstrip("p")
            for st, sv in zip(cache.layers, saved):
                if sv is not None:
                    st.conv.copy_(sv[0])
                    st.ssm.copy_(sv[1])
            cache.lengths = [L]
            with torch.no_grad():
                dec = CUDAGraphDecoder(model, cache, use_graphs=cuda)

                def step():
                    if cache.lengths[0] >= L + slack - 1:
                        cache.lengths = [L]
                        dec.pos.fill_(L)
                    return dec.step(tok)

                for _ in range(5):
                    step()
                ms = sorted(_events_ms(step, args.steps) for _ in range(5))[2]
                if cuda:
                    torch.cuda.synchronize()
                th = time.perf_counter()
                for _ in range(20):  # host time to enqueue a step (the GPU queue does not fill in 20)
                    step()
                host_us = (time.perf_counter() - th) / 20 * 1e6
                if cuda:
                    torch.cuda.synchronize()
                row = {"prompt": L, "mode": mode + (f" tile {tile}" if tile else ""), "graph_ms": ms, "floor_ms": floor,
                       "host_us": host_us}
                if i == 0 or mode != "perop":
                    gpu_us, nk, top = _profile(step, 10)
                    attn_us = sum(us for us, _, key in top if "attn" in key)
                    row.update(gpu_ms=gpu_us / 1e3, kernels=nk, non_attn_ms=(gpu_us - attn_us) / 1e3)
                    if args.top and mode == modes[-1] and tile is None:
                        print(f"--- {mode}, prompt {L}: top kernels (us/token, launches/token)")
                        for us, cnt, key in top[: args.top]:
                            print(f"{us:8.1f} us x{cnt:<5.1f} {key}")
            del dec
            os.environ.pop("HYBRIDNA_GEMV_TILE", None)
            os.environ.pop("HYBRIDNA_GEMV_PERSIST", None)
            table.append(row)
            print(json.dumps(row), flush=True)
        del cache, saved
    L = prompts[-1]
    g = torch.Generator(device=DEVICE).manual_seed(3)
    ids = torch.randint(5, 9, (1, L), device=DEVICE, generator=g)
    gen = {}
    for mode in (args.gen_modes or args.modes).split(","):
        set_mode(mode)
        generate(model, ids[:, :1024], 8, cuda_graph=cuda)  # warm-up
        st = {}
        generate(model, ids, args.new_tokens, temperature=1.0, seed=0, cuda_graph=cuda, stats=st)
        gen[mode] = (st["new_tokens"] - 1) / st["decode_s"]
        th = time.perf_counter()
        st2 = {}
        generate(model, ids[:, :1024], 64, temperature=1.0, seed=0, cuda_graph=cuda, stats=st2)
        print(f"generate {mode} after 1024: {(st2['new_tokens'] - 1) / st2['decode_s']:.0f} tok/s "
              f"(whole call {(time.perf_counter() - th) * 1e3:.0f} ms)", flush=True)
        print(f"generate {mode} after {L}: {gen[mode]:.0f} tok/s (prefill {st['prefill_s'] * 1e3:.1f} ms, "
              f"capture {st['setup_s'] * 1e3:.0f} ms)", flush=True)
    out["generate_tok_s"] = gen
    print("| prompt | mode | graph ms/token (tok/s) | floor ms | GPU ms (non-attention) | kernels/token | host us/step "
          "| generate tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        gpu = f"{r['gpu_ms']:.3f} ({r['non_attn_ms']:.3f})" if "gpu_ms" in r else ""
        nk = f"{r['kernels']:.0f}" if "kernels" in r else ""
        gt = f"{gen[r['mode']]:.0f}" if r["prompt"] == L and r["mode"] in gen else ""
        print(f"| {r['prompt']} | {r['mode']} | {r['graph_ms']:.3f} ({1e3 / r['graph_ms']:.0f}) | {r['floor_ms']:.3f} | "
              f"{gpu} | {nk} | {r['host_us']:.0f} | {gt} |")
    if args.gemv:
        gemv_sweep(model, out)
    if args.prefill:
        run, fwd = prefill_fn(model, L)
        fwd(), run()  # warm-up
        fs, ps = [], []
        for _ in range(3):  # alternating, events (GPU-bound at this length)
            fs.append(_events_ms(fwd, 1))
            ps.append(_events_ms(run, 1))
        f_ms, p_ms = sorted(fs)[1], sorted(ps)[1]
        out["prefill"] = {"prompt": L, "forward_ms": fs, "prefill_ms": ps}
        print(f"prefill {L}: {p_ms:.1f} ms vs forward {f_ms:.1f} ms ({p_ms / f_ms:.3f}); runs fwd "
              f"{[round(v, 1) for v in fs]} prefill {[round(v, 1) for v in ps]}", flush=True)
        del run, fwd
    if not args.no_check:
        for mode in (args.check_modes or args.modes).split(","):
            set_mode(mode)
            print(f"check {mode}: decode vs full forward rel err {check_decode(model, 2048)}", flush=True)
    if args.attn:
        attn_sweep(model, L, out)
    out["rows"] = table
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
