"""`hybridna generate | score | embed`: inference subcommands over a save_pretrained directory."""
from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import sys

__all__ = ["add_generate_arguments", "generate_main", "add_score_arguments", "score_main",
           "add_embed_arguments", "embed_main", "read_sequences"]


def read_sequences(path: str) -> list[tuple[str, str]]:
    """(name, sequence) pairs from a FASTA file (optionally .gz) or a text file of one sequence per line."""
    opener = gzip.open if path.endswith(".gz") else open
    out, name, chunks = [], None, []
    with opener(path, "rt") as f:
        lines = [ln.strip() for ln in f]
    if not any(ln.startswith(">") for ln in lines):
        return [(f"seq{i}", ln) for i, ln in enumerate(ln for ln in lines if ln)]
    for ln in lines:
        if ln.startswith(">"):
            if name is not None:
                out.append((name, "".join(chunks)))
            name, chunks = ln[1:].split()[0] if ln[1:].split() else f"seq{len(out)}", []
        elif ln:
            chunks.append(ln)
    if name is not None:
        out.append((name, "".join(chunks)))
    return out


def _common(p: argparse.ArgumentParser, inputs: bool = True):
    p.add_argument("--model", required=True,
                   help="directory written by save_pretrained (config.json, model.safetensors)")
    if inputs:
        p.add_argument("--seq", "--prompt", dest="seq", action="append", default=[],
                       help="a sequence or prompt (repeatable); '<HepG2>ACGT' for prompt tokens")
        p.add_argument("--fasta", help="FASTA (.gz ok) or text file with one sequence per line")
        p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--add-bos", action="store_true", help="prepend <bos> to every sequence")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")


def _load(args):
    import torch

    from .model import HybriDNA
    from .tokenizer import DNATokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = HybriDNA.from_pretrained(args.model, device=device, dtype=dtype).eval()
    return model, DNATokenizer.from_pretrained(args.model), device


def _inputs(args) -> list[tuple[str, str]]:
    seqs = [(f"seq{i}", s) for i, s in enumerate(args.seq)]
    if args.fasta:
        seqs += read_sequences(args.fasta)
    if not seqs:
        raise SystemExit("no input: give --seq and/or --fasta")
    return seqs


@contextlib.contextmanager
def _output(path: str):
    """The --out file, or standard output for "-" (left open)."""
    if path == "-":
        yield sys.stdout
    else:
        with open(path, "w") as f:
            yield f


def _batches(items, n):
    if n < 1:
        raise SystemExit(f"--batch-size: expected >= 1, got {n}")
    for i in range(0, len(items), n):
        yield items[i: i + n]


# ---- generate -------------------------------------------------------------------------------------------
def add_generate_arguments(p: argparse.ArgumentParser):
    _common(p)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--num-samples", type=int, default=1, help="continuations per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-at-eos", action="store_true", help="stop a sample when it emits <eos>")
    p.add_argument("--cuda-graph", action="store_true", help="replay the decode step from CUDA graphs")
    p.add_argument("--out", default="-", help="FASTA output (default stdout)")


def generate_main(args) -> int:
    import torch

    from .tokenizer import BOS_ID, EOS_ID, NUCLEOTIDE_IDS, PAD_ID

    model, tok, device = _load(args)
    prompts = _inputs(args) if (args.seq or args.fasta) else [("sample", "")]
    items = [(f"{name}_{k}", s) for name, s in prompts for k in range(args.num_samples)]
    # Samples are DNA: every token but A C G T N (and <eos> with --stop-at-eos) is suppressed.
    keep = set(NUCLEOTIDE_IDS) | ({EOS_ID} if args.stop_at_eos else set())
    suppress = [i for i in range(model.config.vocab_size) if i not in keep]
    with _output(args.out) as out:
        for bi, batch in enumerate(_batches(items, args.batch_size)):
            texts = [s for _, s in batch]
            add_bos = args.add_bos or any(not t for t in texts)  # an empty prompt starts from <bos>
            enc = tok.batch_encode(texts, add_bos=add_bos, return_tensors="pt")
            ids = enc["input_ids"].to(device)
            seed = None if args.seed is None else args.seed + bi
            with torch.no_grad():
                res = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                     top_p=args.top_p, seed=seed, eos_token_id=EOS_ID if args.stop_at_eos else None,
                                     lengths=enc["lengths"], cuda_graph=args.cuda_graph,
                                     suppress_tokens=suppress)
            for (name, _), row, n in zip(batch, res.cpu(), enc["lengths"].tolist()):
                text = tok.decode(row[n:])
                prompt = tok.decode(row[:n][row[:n] != BOS_ID])
                n_new = int((row[n:] != PAD_ID).sum())
                out.write(f">{name} prompt={prompt[:60]}{'...' if len(prompt) > 60 else ''} new_tokens={n_new}\n")
                for i in range(0, len(text), 80):
                    out.write(text[i: i + 80] + "\n")
    return 0


# ---- score --------------------------------------------------------------------------------------------
def add_score_arguments(p: argparse.ArgumentParser):
    _common(p)
    p.add_argument("--reduce", choices=["sum", "mean"], default="sum", help="sum of log p, or mean per base (nats)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's score")
    p.add_argument("--variants", help="TSV: name, 0-based position, alt base(s) per line; the reference is the "
                   "single --seq/--fasta sequence, or the sequence whose name is in an optional 4th column. "
                   "Prints the log-likelihood ratio alt - ref")
    p.add_argument("--out", default="-", help="TSV output (default stdout)")


def _apply_variant(ref: str, pos: int, alt: str, name: str) -> str:
    if not 0 <= pos < len(ref):
        raise SystemExit(f"variant {name}: position {pos} outside the reference (length {len(ref)})")
    return ref[:pos] + alt + ref[pos + len(alt):]


def score_main(args) -> int:
    model, tok, device = _load(args)
    seqs = _inputs(args)

    def score_texts(texts):
        res = []
        for batch in _batches(texts, args.batch_size):
            ids = tok.batch_encode(batch, add_bos=args.add_bos, return_tensors="pt")["input_ids"].to(device)
            res += model.score(ids, reduce=args.reduce, rc_average=args.rc_average).tolist()
        return res

    with _output(args.out) as out:
        if args.variants:
            refs = dict(seqs)
            rows = []
            with open(args.variants) as f:
                for ln in f:
                    if not ln.strip() or ln.startswith("#"):
                        continue
                    parts = ln.rstrip("\n").split("\t")
                    if len(parts) < 3:
                        raise SystemExit(f"--variants: expected name, position, alt[, ref name] per line, got {ln!r}")
                    ref_name = parts[3] if len(parts) > 3 else (seqs[0][0] if len(seqs) == 1 else None)
                    if ref_name not in refs:
                        raise SystemExit(f"--variants: variant {parts[0]} names no known reference sequence")
                    ref = refs[ref_name]
                    rows.append((parts[0], ref_name, int(parts[1]), parts[2], ref))
            ref_scores = dict(zip(refs, score_texts(list(refs.values()))))
            alt_scores = score_texts([_apply_variant(r, p, a, n) for n, _, p, a, r in rows])
            out.write("name\tref\tpos\talt\tllr\n")
            for (n, rn, p, a, _), s in zip(rows, alt_scores):
                out.write(f"{n}\t{rn}\t{p}\t{a}\t{s - ref_scores[rn]:.6f}\n")
        else:
            out.write(f"name\tlength\tloglik_{args.reduce}\n")
            for (n, s), v in zip(seqs, score_texts([s for _, s in seqs])):
                out.write(f"{n}\t{len(s)}\t{v:.6f}\n")
    return 0


# ---- embed --------------------------------------------------------------------------------------------
def add_embed_arguments(p: argparse.ArgumentParser):
    _common(p)
    p.add_argument("--no-echo", dest="echo", action="store_false", help="plain embeddings (no echo)")
    p.add_argument("--pool", choices=["mean", "last"], default="mean")
    p.add_argument("--layer", type=int, default=-1, help="hidden state index: 0 embeddings, i block i, -1 final")
    p.add_argument("--out", required=True, help=".npy file for the (n, d_model) float32 embeddings "
                   "(names go to OUT.names.txt)")


def embed_main(args) -> int:
    import numpy as np

    model, tok, device = _load(args)
    seqs = _inputs(args)
    embs = []
    for batch in _batches(seqs, args.batch_size):
        enc = tok.batch_encode([s for _, s in batch], add_bos=args.add_bos, return_tensors="pt")
        e = model.embed(enc["input_ids"].to(device), echo=args.echo, pool=args.pool, layer=args.layer,
                        lengths=enc["lengths"])
        embs.append(e.float().cpu().numpy())
    arr = np.concatenate(embs)
    np.save(args.out, arr)
    with open(os.path.splitext(args.out)[0] + ".names.txt", "w") as f:
        f.write("\n".join(n for n, _ in seqs) + "\n")
    print(f"wrote {arr.shape} embeddings to {args.out}", file=sys.stderr)
    return 0
