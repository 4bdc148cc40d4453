"""The README's main job (`make demo`): shards -> pretraining -> validation -> save -> reload -> sample.

    python -m hybridna.demo --out runs/demo            # CPU: ~1 minute on 2 idle cores (training capped at 7)
    python -m hybridna.demo --out runs/demo --steps 5  # a smoke run

On a fresh CPU machine it pretrains the tiny preset on the bundled lambda phage genome (48,502 bases)
with the pure-PyTorch reference ops, validates on the genome's held-out last 5%, and samples a
continuation. On a GPU the same command runs the Triton kernels in bf16, replays each training step
from a CUDA graph (the tiny model is otherwise bound by the host's kernel-launch cost) and trains on
four times the CPU's tokens: 8x larger batches at a 4x longer context, with reverse-complement
augmentation. Both keep the weights of the best validation, so training past the point where the
small genome starts to be overfitted cannot make the final model worse.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "markov_bits_per_base"]


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def markov_bits_per_base(train_tokens, test_tokens, order: int, alpha: float = 0.5) -> float:
    """Bits per base of an order-k Markov chain (add-alpha counts) fitted on train_tokens and scored on
    test_tokens; both uint8 token arrays, positions whose context or target holds a non-ACGT base skipped."""
    import numpy as np

    from hybridna.tokenizer import A_ID

    def codes(t):
        c = t.astype(np.int64) - A_ID
        return np.where((c >= 0) & (c < 4), c, -1)

    def kmers(c):
        n = len(c) - order
        idx = np.zeros(n, np.int64)
        ok = np.ones(n, bool)
        for j in range(order + 1):
            col = c[j:j + n]
            ok &= col >= 0
            idx = idx * 4 + np.maximum(col, 0)
        return idx[ok]

    counts = np.bincount(kmers(codes(train_tokens)), minlength=4 ** (order + 1)).reshape(-1, 4) + alpha
    logp = np.log2(counts / counts.sum(1, keepdims=True)).reshape(-1)
    test = kmers(codes(test_tokens))
    return float(-logp[test].mean())


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def _wrap(seq: str, width: int = 60, indent: str = "      ") -> str:
    return "\n".join(indent + seq[i:i + width] for i in range(0, len(seq), width))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hybridna.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 300 on CPU, 150 on GPU)")
    p.add_argument("--seq-len", type=int, help="context length (default 128 on CPU, 512 on GPU)")
    p.add_argument("--micro-batch", type=int, help="windows per step (default 16 on CPU, 32 on GPU)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--rc-prob", type=float, help="reverse-complement augmentation (default 0 on CPU, 0.5 on GPU)")
    p.add_argument("--val-every", type=int, help="steps between validations (default steps/10 on CPU, 10 on GPU)")
    p.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="end with the last step's weights, not the best validation's")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="GPU: launch every kernel of every step (no CUDA graph)")
    p.add_argument("--time-limit", type=float,
                   help="stop training after this many seconds (default 420 on CPU: the demo stays under 10 minutes)")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--sample-len", type=int, default=180, help="bases to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    import numpy as np
    import torch

    from hybridna.config import HybriDNAConfig
    from hybridna.data import LAMBDA_GENOME, build_store, open_store
    from hybridna.model import HybriDNA
    from hybridna.tokenizer import N_ID, NUCLEOTIDE_IDS, DNATokenizer
    from hybridna.train.pretrain import TrainConfig, train

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    device = "cuda" if cuda else "cpu"
    # CPU: 614k training tokens (about 13 passes over the 46 kb training part of the genome). GPU: 4x as
    # many, in 8x larger steps (the step's host cost is the same, so tokens/s grows with the batch), with
    # reverse-complement augmentation; training on this small genome much longer overfits it (2000 steps
    # of 16 x 1024 on an H100 drove held-out bits per base from 2.03 up to 8.9), which keep_best guards.
    steps = args.steps or (150 if cuda else 300)
    seq_len = args.seq_len or (512 if cuda else 128)
    micro = args.micro_batch or (32 if cuda else 16)
    rc_prob = args.rc_prob if args.rc_prob is not None else (0.5 if cuda else 0.0)
    val_every = args.val_every or (10 if cuda else max(1, steps // 10))
    cuda_graph = cuda and args.cuda_graph
    time_limit = args.time_limit if args.time_limit is not None else (None if cuda else 420.0)
    ops = "PyTorch reference ops, fp32"
    if cuda:
        ops = "Triton kernels, bf16 autocast" + (", CUDA graph" if cuda_graph else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    _say(f"HybriDNA demo: torch {torch.__version__} on {device} ({ops}); output in {out}/")

    # 1. Token shards from the bundled genome.
    t = time.perf_counter()
    store_path = build_store([LAMBDA_GENOME], out / "lambda.zarr", species="lambda", overwrite=True, progress=False)
    store = open_store(store_path)
    _say(f"[1/5] Token shards: {LAMBDA_GENOME.name} ({int(store.lengths.sum()):,} bases, "
         f"{len(store.names)} contig) -> {store_path} ({_fmt_time(time.perf_counter() - t)})")

    # 2. Pretraining.
    val_frac = 0.05
    warmup = max(1, min(30, steps // 10))
    cfg = TrainConfig(model="tiny", data=[str(store_path)], out=str(out / "pretrain"), steps=steps, seq_len=seq_len,
                      micro_batch=micro, lr=args.lr, min_lr=args.lr / 10, warmup_steps=warmup,
                      weight_decay=args.weight_decay, rc_prob=rc_prob, val_frac=val_frac, val_windows=32,
                      val_every=val_every, log_every=max(1, min(10, steps)), save_every=steps, keep_checkpoints=1,
                      seed=args.seed, device=device, kernel_backend="auto" if cuda else "reference",
                      time_limit_s=time_limit, eval_at_start=True, keep_best=args.keep_best, cuda_graph=cuda_graph,
                      progress=args.progress)
    n_params = HybriDNAConfig.preset("tiny").num_params()
    _say(f"[2/5] Pretraining the tiny preset ({n_params / 1e6:.2f}M parameters): {steps} steps of "
         f"{micro} x {seq_len} tokens, next-base prediction, AdamW lr {args.lr:g} (warmup + cosine)"
         + (f", reverse-complement augmentation {rc_prob:g}" if rc_prob else "")
         + (f", at most {time_limit:.0f} s" if time_limit else ""))
    t = time.perf_counter()
    res = train(cfg)
    t_train = time.perf_counter() - t
    model = res["model"].eval()
    v0, v_last = res["val"][0]["val_bpb"], res["val"][-1]["val_bpb"]
    best = res.get("best")
    v1 = best["val_bpb"] if best else v_last  # the returned model's (keep_best: the best validation's weights)
    tm = res["timing"]
    name = store.names[0]
    length = int(store.lengths[0])
    cut = length - int(round(length * val_frac))
    tokens = store.tokens(name, 0, length)
    markov = {k: markov_bits_per_base(tokens[:cut], tokens[cut:], k) for k in range(0, 7)}
    best_k = min(markov, key=markov.get)
    first = ""
    if tm["first_step_s"] is not None:  # None when the call ran no steps (a resume at the final step)
        first = (f"; its first step {tm['first_step_s']:.1f} s"
                 + ((" (kernel compiles" + (", CUDA graph capture" if cuda_graph else "") + ")") if cuda else ""))
    steady = (f", {tm['steady_tokens_per_s']:,.0f} tokens/s after the first step"
              if tm["steady_tokens_per_s"] else "")
    _say(f"      trained {res['step']} steps ({tm['tokens']:,} tokens, {tm['tokens'] / cut:.1f} passes over "
         f"the training part) in {_fmt_time(t_train)}: training steps {tm['train_s']:.1f} s{first}, "
         f"validations and checkpoint {tm['loop_s'] - tm['train_s']:.1f} s")
    _say(f"      throughput: {tm['tokens_per_s']:,.0f} tokens/s over all steps{steady}"
         + ("" if not cuda else (", CUDA graph replays" if tm["cuda_graph"] else ", eager kernel launches")))
    _say(f"      validation on the held-out last {100 * val_frac:.0f}% of the genome ({length - cut:,} bases never "
         f"trained on):")
    _say(f"        untrained model      {v0:.3f} bits per base")
    if best and best["step"] != res["val"][-1]["step"]:
        _say(f"        after pretraining    {v1:.3f} bits per base (best of {len(res['val'])} validations, step "
             f"{best['step']}: these weights are kept; last step {v_last:.3f})")
    else:
        _say(f"        after pretraining    {v1:.3f} bits per base")
    v128 = v1
    if seq_len != 128:
        # The CPU demo validates on 128-base windows (the first 2,304 held-out bases); the same windows here,
        # so the two runs' figures cover the same bases.
        from hybridna.train.dist import DistInfo
        from hybridna.train.pretrain import _autocast, _holdout, _val_batches, evaluate
        from hybridna_kernels.utils import backend

        vb = _val_batches(cfg, 128, _holdout(cfg.data, val_frac))
        with backend("auto" if cuda else "reference"):
            dev = torch.device(device)
            v128 = evaluate(model, vb, dev, _autocast(dev, "auto"), DistInfo())["val_bpb"]
        _say(f"        on the CPU demo's held-out windows ({sum(len(b) for b in vb)} x 128 bases): "
             f"{v128:.3f} bits per base")
    _say(f"        for reference: uniform over ACGT 2.000, base composition (order 0) {markov[0]:.3f}, "
         f"best order-k Markov chain (k={best_k}) {markov[best_k]:.3f}")

    # 3. Save.
    model_dir = out / "model"
    model.save_pretrained(model_dir, tokenizer=DNATokenizer())
    _say(f"[3/5] Saved {model_dir}/ (config.json, model.safetensors, tokenizer.json); "
         f"metrics {cfg.out}/metrics.jsonl, loss curve {cfg.out}/loss_curve.png")

    # 4. Reload and check it is the same model.
    from hybridna_kernels.utils import backend

    with backend("auto" if cuda else "reference"):
        again = HybriDNA.from_pretrained(model_dir, device=device).eval()
        x = torch.from_numpy(tokens[cut:cut + seq_len].astype(np.int64))[None].to(device)
        with torch.no_grad():
            same = torch.equal(model(x).logits, again(x).logits)
        _say(f"[4/5] Reloaded {model_dir}: logits {'identical to' if same else 'DIFFERENT from'} the trained model's "
             f"on a held-out window")

        # 5. Sample a continuation of a held-out prompt with the recurrent cache.
        prompt_len = 60
        prompt = torch.from_numpy(tokens[cut:cut + prompt_len].astype(np.int64))[None].to(device)
        suppress = [i for i in range(again.config.vocab_size) if i not in NUCLEOTIDE_IDS or i == N_ID]  # lambda has no N
        t = time.perf_counter()
        with torch.no_grad():
            gen = again.generate(prompt, args.sample_len, temperature=0.8, seed=args.seed, suppress_tokens=suppress)
        t_gen = time.perf_counter() - t
    tok = DNATokenizer()
    sample = tok.decode(gen[0, prompt_len:].cpu())
    truth = tok.decode(torch.from_numpy(tokens[cut + prompt_len:cut + prompt_len + args.sample_len].astype(np.int64)))
    gc = lambda s: 100.0 * sum(c in "GC" for c in s) / max(1, len(s))  # noqa: E731
    _say(f"[5/5] Sampled {len(sample)} bases (temperature 0.8, {len(sample) / t_gen:,.0f} bases/s) after a "
         f"{prompt_len}-base held-out prompt:")
    _say("      prompt:")
    _say(_wrap(tok.decode(prompt[0].cpu())))
    _say("      sample:")
    _say(_wrap(sample))
    _say(f"      GC content: sample {gc(sample):.1f}%, lambda genome {gc(tok.decode(torch.from_numpy(tokens.astype(np.int64)))):.1f}%, "
         f"true continuation {gc(truth):.1f}%")
    _say(f"      the same from the command line: hybridna generate --model {model_dir} --seq {tok.decode(prompt[0, :12].cpu())} "
         f"--max-new-tokens {args.sample_len} --temperature 0.8")
    wall = time.perf_counter() - t0
    _say(f"Done in {_fmt_time(wall)}. Validation: {v0:.3f} -> {v1:.3f} bits per base.")
    _say(f"SUMMARY device={device} steps={res['step']} tokens={tm['tokens']} batch={micro}x{seq_len} "
         f"train_wall_s={t_train:.1f} train_steps_s={tm['train_s']:.1f} first_step_s={tm['first_step_s'] or 0:.1f} "
         f"tokens_per_s={tm['tokens_per_s']:.0f} steady_tokens_per_s={tm['steady_tokens_per_s'] or 0:.0f} "
         f"cuda_graph={int(tm['cuda_graph'])} val_bpb={v1:.4f} last_val_bpb={v_last:.4f} val128_bpb={v128:.4f} "
         f"best_step={best['step'] if best else res['step']} demo_wall_s={wall:.1f}")
    return 0 if same and math.isfinite(v1) else 1


if __name__ == "__main__":
    sys.exit(main())
