"""`hybridna finetune`: echo-embedding heads (classification, regression) and prompt-token generation.

    hybridna finetune classify --model runs/demo/model --train train.csv --val val.csv --out runs/cls
    hybridna finetune classify --model M --fasta promoter=prom.fa background=bg.fa --out runs/cls
    hybridna finetune regress  --model M --train expr.csv --out runs/reg
    hybridna finetune generate --model M --train labelled.csv --out runs/gen --steps 200
    hybridna generate --model runs/gen --seq "<HepG2>" --max-new-tokens 200

Classification and regression read each sequence twice ([x, x], echo embeddings) and pool the hidden
states of the second copy, so every pooled position has seen the whole sequence. The backbone is
frozen (features computed once) or fine-tuned with the head; the head is an MLP on the pooled
embedding or a small CNN over the per-position hidden states. The checkpoint with the best
validation metric is kept (`<out>/best`).

Generative fine-tuning turns each labelled sequence into `<label>` + sequence + <eos>, adds the
`<label>` tokens to the tokenizer and the embedding, and trains the next-token loss, so that
`hybridna generate --seq "<label>"` samples sequences of that class.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import random
import re
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_dir, save_json
from .metrics import LN2
from .schedule import lr_at

__all__ = ["read_labelled_csv", "read_fasta_classes", "echo_hidden", "MLPHead", "CNNHead", "SequenceModel",
           "accuracy", "mcc", "auroc", "pearson", "spearman", "classification_metrics", "regression_metrics",
           "finetune_supervised", "finetune_generative", "load_finetuned", "predict", "add_arguments", "main"]


# ---- data ------------------------------------------------------------------------------------------

def read_labelled_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Rows of a CSV with a header naming the columns `sequence` and `label` (others ignored)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "sequence" not in cols or "label" not in cols:
            raise ValueError(f"{path}: expected a header with columns 'sequence' and 'label', got {reader.fieldnames}")
        key = {c.strip().lower(): c for c in reader.fieldnames}
        seqs, labels = [], []
        for i, row in enumerate(reader, start=2):
            s = (row[key["sequence"]] or "").strip()
            lab = (row[key["label"]] or "").strip()
            if not s or not lab:
                raise ValueError(f"{path}:{i}: empty sequence or label")
            seqs.append(s)
            labels.append(lab)
    if not seqs:
        raise ValueError(f"{path}: no rows")
    return seqs, labels


def _read_fasta_records(path: str) -> list[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    seqs, cur = [], None
    with opener(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if cur is not None:
                    seqs.append("".join(cur))
                cur = []
            elif line:
                if cur is None:
                    raise ValueError(f"{path}: sequence data before the first '>' header")
                cur.append(line)
    if cur is not None:
        seqs.append("".join(cur))
    return [s for s in seqs if s]


def read_fasta_classes(specs: list[str]) -> tuple[list[str], list[str]]:
    """One FASTA per class: "label=path.fa" or a bare path (the label is the file name's stem)."""
    seqs, labels = [], []
    for spec in specs:
        if "=" in spec:
            label, path = spec.split("=", 1)
        else:
            path = spec
            label = re.sub(r"\.(fa|fasta|fna)(\.gz)?$", "", os.path.basename(spec))
        if not os.path.exists(path):
            raise ValueError(f"fasta: {path} does not exist")
        recs = _read_fasta_records(path)
        if not recs:
            raise ValueError(f"fasta: {path} holds no sequences")
        seqs += recs
        labels += [label] * len(recs)
    return seqs, labels


def _split(n: int, frac: float, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(n * frac)))
    return sorted(idx[k:]), sorted(idx[:k])


def _length_batches(lengths: list[int], batch_size: int, *, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Batches of indices whose sequences have the same length: no padding inside the model."""
    groups = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    rng = random.Random(seed)
    batches = []
    for n in sorted(groups):
        g = groups[n]
        if shuffle:
            rng.shuffle(g)
        batches += [g[i:i + batch_size] for i in range(0, len(g), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


# ---- features ---------------------------------------------------------------------------------------

def echo_hidden(model, ids: torch.Tensor, *, echo: bool = True, layer: int = -1) -> torch.Tensor:
    """Per-position hidden states (B, L, d) of the second copy of [x, x] (echo) or of x, with gradients
    (HybriDNA.embed is the no-grad pooled version of the same thing). ids: (B, L) without padding."""
    inp = torch.cat([ids, ids], 1) if echo else ids
    want_all = layer not in (-1, model.config.n_layer)
    h, hs = model.hidden(inp, output_hidden_states=want_all)
    if want_all:
        h = hs[layer]
    return h[:, ids.shape[1]:] if echo else h


class MLPHead(nn.Module):
    """Mean-pooled embedding (B, d) -> (B, n_out)."""

    def __init__(self, d_model: int, n_out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_out))

    def forward(self, h):  # (B, L, d) -> (B, n_out)
        return self.net(h.float().mean(1))


class CNNHead(nn.Module):
    """Per-position hidden states (B, L, d) -> two conv layers -> mean and max pooling -> (B, n_out)."""

    def __init__(self, d_model: int, n_out: int, channels: int = 64, kernel: int = 9, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv1 = nn.Conv1d(d_model, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * channels, n_out)

    def forward(self, h):  # (B, L, d)
        x = self.norm(h.float()).transpose(1, 2)  # (B, d, L)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))  # (B, C, L)
        x = torch.cat([x.mean(2), x.amax(2)], 1)  # (B, 2C)
        return self.out(self.drop(x))


class SequenceModel(nn.Module):
    """Backbone + head; `forward(ids)` gives (B, n_out)."""

    def __init__(self, backbone, head: nn.Module, *, echo: bool = True, layer: int = -1):
        super().__init__()
        self.backbone, self.head, self.echo, self.layer = backbone, head, echo, layer

    def forward(self, ids):
        return self.head(echo_hidden(self.backbone, ids, echo=self.echo, layer=self.layer))


# ---- metrics -----------------------------------------------------------------------------------------

def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean())


def mcc(y_true, y_pred, n_classes: int | None = None) -> float:
    """Matthews correlation coefficient (Gorodkin's multiclass form; the usual one for two classes)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    k = n_classes or int(max(y_true.max(), y_pred.max()) + 1)
    c = np.zeros((k, k), dtype=np.float64)
    np.add.at(c, (y_true, y_pred), 1)
    t, p, n, correct = c.sum(1), c.sum(0), c.sum(), np.trace(c)
    num = correct * n - (t * p).sum()
    den = math.sqrt(max(n * n - (p * p).sum(), 0.0)) * math.sqrt(max(n * n - (t * t).sum(), 0.0))
    return float(num / den) if den > 0 else 0.0


def _binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = int(y.sum()), int((1 - y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    ss = s[order]
    i = 0
    while i < len(ss):  # average ranks over ties
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auroc(y_true, scores) -> float:
    """Area under the ROC curve: scores (N,) or (N, 2) for two classes, (N, K) one-vs-rest macro."""
    y = np.asarray(y_true, int)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim == 1:
        return _binary_auroc(y, s)
    vals = [_binary_auroc((y == k).astype(int), s[:, k]) for k in range(s.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a, b) -> float:
    def rank(x):
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    return pearson(rank(a), rank(b))


def classification_metrics(y_true, logits, n_classes: int) -> dict:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    prob = torch.softmax(logits, -1).numpy()
    pred = prob.argmax(1)
    return {"accuracy": accuracy(y_true, pred), "mcc": mcc(y_true, pred, n_classes), "auroc": auroc(y_true, prob)}


def regression_metrics(y_true, y_pred) -> dict:
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64).reshape(-1)
    return {"mse": float(((y_true - y_pred) ** 2).mean()), "pearson": pearson(y_true, y_pred),
            "spearman": spearman(y_true, y_pred)}


# ---- supervised fine-tuning -----------------------------------------------------------------------

def _load_backbone(model: str | None, preset: str | None, device):
    from hybridna.model import HybriDNA

    if model:
        return HybriDNA.from_pretrained(model).to(device)
    from .pretrain import build_model

    return build_model(preset or "tiny").to(device)


def _encode(tok, seqs: list[str], max_len: int | None) -> list[torch.Tensor]:
    out = []
    for s in seqs:
        ids = torch.from_numpy(tok.encode(s))
        if max_len:
            ids = ids[:max_len]
        if ids.numel() == 0:
            raise ValueError(f"sequence: empty after encoding: {s[:30]!r}")
        out.append(ids)
    return out


@torch.no_grad()
def _predict_rows(model: SequenceModel, ids: list[torch.Tensor], batch_size: int, device, autocast) -> torch.Tensor:
    model.eval()
    out = [None] * len(ids)
    for b in _length_batches([len(x) for x in ids], batch_size, shuffle=False):
        x = torch.stack([ids[i] for i in b]).to(device)
        with autocast():
            y = model(x).float().cpu()
        for i, row in zip(b, y):
            out[i] = row
    return torch.stack(out)


def finetune_supervised(*, task: str, train_seqs: list[str], train_labels: list, val_seqs: list[str] | None = None,
                        val_labels: list | None = None, model: str | None = None, preset: str | None = None,
                        out: str = "runs/finetune", head: str = "mlp", freeze: bool = True, echo: bool = True,
                        layer: int = -1, epochs: int = 10, batch_size: int = 16, lr: float = 1e-3,
                        backbone_lr: float = 1e-5, weight_decay: float = 0.01, val_frac: float = 0.1,
                        max_len: int | None = None, metric: str | None = None, seed: int = 0,
                        device: str | None = None, progress: bool = True, kernel_backend: str = "auto") -> dict:
    """Train a head (and optionally the backbone) on labelled sequences; keep the best checkpoint.

    task: "classification" (labels are class names) or "regression" (labels are numbers).
    Returns {"best": metrics at the best epoch, "history": per-epoch metrics, "classes": [...], "path": dir}.
    """
    from hybridna.tokenizer import DNATokenizer
    from hybridna_kernels.utils import backend as kbackend

    if task not in ("classification", "regression"):
        raise ValueError(f"task: expected 'classification' or 'regression', got {task!r}")
    if head not in ("mlp", "cnn"):
        raise ValueError(f"head: expected 'mlp' or 'cnn', got {head!r}")
    if len(train_seqs) != len(train_labels):
        raise ValueError("train_labels: expected one label per sequence")
    metric = metric or ("mcc" if task == "classification" else "pearson")
    valid_metrics = ("mcc", "accuracy", "auroc") if task == "classification" else ("pearson", "spearman", "mse")
    if metric not in valid_metrics:
        raise ValueError(f"metric: expected one of {valid_metrics} for {task}, got {metric!r}")
    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else nullcontext

    if val_seqs is None:
        tr, va = _split(len(train_seqs), val_frac, seed)
        val_seqs, val_labels = [train_seqs[i] for i in va], [train_labels[i] for i in va]
        train_seqs, train_labels = [train_seqs[i] for i in tr], [train_labels[i] for i in tr]
    if task == "classification":
        classes = sorted(set(train_labels) | set(val_labels))
        if len(classes) < 2:
            raise ValueError(f"train_labels: expected at least two classes, got {classes}")
        cidx = {c: i for i, c in enumerate(classes)}
        y_tr = torch.tensor([cidx[c] for c in train_labels])
        y_va = torch.tensor([cidx[c] for c in val_labels])
        n_out = len(classes)
    else:
        classes = None
        try:
            y_tr = torch.tensor([float(v) for v in train_labels])
            y_va = torch.tensor([float(v) for v in val_labels])
        except ValueError:
            raise ValueError("train_labels: regression needs numeric labels") from None
        n_out = 1
    # Regression targets standardised for the loss; predictions are mapped back.
    mu, sd = (float(y_tr.mean()), float(y_tr.std().clamp(min=1e-8))) if task == "regression" else (0.0, 1.0)

    tok = DNATokenizer()
    with kbackend(kernel_backend):
        backbone = _load_backbone(model, preset, dev)
        d = backbone.config.d_model
        head_mod = (MLPHead(d, n_out) if head == "mlp" else CNNHead(d, n_out)).to(dev)
        net = SequenceModel(backbone, head_mod, echo=echo, layer=layer)
        for p in backbone.parameters():
            p.requires_grad_(not freeze)
        x_tr, x_va = _encode(tok, train_seqs, max_len), _encode(tok, val_seqs, max_len)

        # A frozen backbone runs once per sequence: cache its hidden states (mean-pooled for the MLP).
        cache = None
        if freeze:
            backbone.eval()
            cache = {}
            with torch.no_grad():
                for name, xs in (("train", x_tr), ("val", x_va)):
                    feats = [None] * len(xs)
                    for b in _length_batches([len(x) for x in xs], batch_size, shuffle=False):
                        xb = torch.stack([xs[i] for i in b]).to(dev)
                        with autocast():
                            h = echo_hidden(backbone, xb, echo=echo, layer=layer).float()
                        if head == "mlp":
                            h = h.mean(1, keepdim=True)  # MLPHead mean-pools: the same result, 1/L memory
                        for i, row in zip(b, h):
                            feats[i] = row
                    cache[name] = feats

        groups = [{"params": list(head_mod.parameters()), "lr": lr}]
        if not freeze:
            groups.append({"params": [p for p in backbone.parameters()], "lr": backbone_lr})
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        base_lrs = [g["lr"] for g in opt.param_groups]
        steps_per_epoch = len(_length_batches([len(x) for x in x_tr], batch_size, shuffle=False))
        total = max(1, epochs * steps_per_epoch)
        warm = max(1, total // 20)

        def loss_fn(out, y):
            if task == "classification":
                return F.cross_entropy(out.float(), y)
            return F.mse_loss(out.float().squeeze(-1), (y - mu) / sd)

        def run_val():
            if cache is not None:
                head_mod.eval()
                with torch.no_grad():
                    outs = torch.stack([head_mod(f[None].to(dev))[0].float().cpu() for f in cache["val"]])
            else:
                outs = _predict_rows(net, x_va, batch_size, dev, autocast)
            if task == "classification":
                return classification_metrics(y_va.numpy(), outs, n_out)
            return regression_metrics(y_va.numpy(), outs.squeeze(-1).numpy() * sd + mu)

        outdir = Path(out)
        best, best_val, history, step = None, None, [], 0
        meta = {"task": task, "head": head, "n_out": n_out, "classes": classes, "echo": echo, "layer": layer,
                "freeze": freeze, "backbone": str(model) if model else None, "preset": preset, "metric": metric,
                "target_mean": mu, "target_std": sd, "max_len": max_len}
        from tqdm.auto import tqdm

        for epoch in range(epochs):
            net.train()
            if freeze:
                backbone.eval()
            batches = _length_batches([len(x) for x in x_tr], batch_size, shuffle=True, seed=seed + epoch)
            tot = 0.0
            for b in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr_at(step, max_lr=base, min_lr=base / 20, warmup_steps=warm, total_steps=total)
                y = y_tr[b].to(dev)
                if cache is not None:
                    out_b = head_mod(torch.stack([cache["train"][i] for i in b]).to(dev))
                else:
                    with autocast():
                        out_b = net(torch.stack([x_tr[i] for i in b]).to(dev))
                loss = loss_fn(out_b, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
                opt.step()
                tot += loss.item() * len(b)
                step += 1
            m = run_val()
            m.update(epoch=epoch + 1, train_loss=tot / len(x_tr))
            history.append(m)
            score = m[metric] if metric != "mse" else -m[metric]
            if best_val is None or score > best_val:
                best_val, best = score, m
                _save_finetuned(outdir / "best", backbone, head_mod, dict(meta, val_metrics=m), save_backbone=not freeze)
            if progress:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("epoch",))
                print(f"[finetune] epoch {epoch + 1}/{epochs}: {shown}{'  (best)' if best is m else ''}")
        save_json(outdir / "history.json", history)
    return {"best": best, "history": history, "classes": classes, "path": str(outdir / "best")}


def _save_finetuned(path: Path, backbone, head: nn.Module, meta: dict, *, save_backbone: bool) -> None:
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(tmp / "head.safetensors"))
        if save_backbone or not meta.get("backbone"):
            backbone.save_pretrained(tmp / "backbone")
            meta = dict(meta, backbone="backbone")
        save_json(tmp / "finetune.json", meta)


def load_finetuned(path: str | os.PathLike, *, device=None) -> tuple[SequenceModel, dict]:
    """(SequenceModel, metadata) from a `finetune classify/regress` checkpoint directory."""
    from safetensors.torch import load_file

    from hybridna.model import HybriDNA

    path = Path(path)
    with open(path / "finetune.json") as f:
        meta = json.load(f)
    bb = meta["backbone"]
    bb_path = path / bb if (path / bb).exists() else Path(bb)
    backbone = HybriDNA.from_pretrained(bb_path)
    d = backbone.config.d_model
    head = MLPHead(d, meta["n_out"]) if meta["head"] == "mlp" else CNNHead(d, meta["n_out"])
    head.load_state_dict(load_file(str(path / "head.safetensors")))
    net = SequenceModel(backbone, head, echo=meta["echo"], layer=meta["layer"]).to(device or "cpu")
    net.eval()
    return net, meta


@torch.no_grad()
def predict(path: str | os.PathLike, seqs: list[str], *, batch_size: int = 16, device=None):
    """Class probabilities (N, K) or regression values (N,) from a fine-tuned checkpoint."""
    from hybridna.tokenizer import DNATokenizer

    net, meta = load_finetuned(path, device=device)
    dev = next(net.parameters()).device
    ids = _encode(DNATokenizer(), seqs, meta.get("max_len"))
    out = _predict_rows(net, ids, batch_size, dev, nullcontext)
    if meta["task"] == "classification":
        return torch.softmax(out, -1)
    return out.squeeze(-1) * meta["target_std"] + meta["target_mean"]


# ---- generative fine-tuning ------------------------------------------------------------------------

def label_token(label: str) -> str:
    """"HepG2" -> "<HepG2>" (spaces become _); an already bracketed label is kept."""
    label = label.strip()
    if label.startswith("<") and label.endswith(">"):
        return label
    return "<" + re.sub(r"\s+", "_", label) + ">"


def finetune_generative(*, train_seqs: list[str], train_labels: list[str], model: str | None = None,
                        preset: str | None = None, out: str = "runs/finetune-gen", steps: int = 200,
                        batch_size: int = 8, lr: float = 3e-4, warmup_steps: int = 20, weight_decay: float = 0.1,
                        max_len: int = 1024, seed: int = 0, device: str | None = None, progress: bool = True,
                        kernel_backend: str = "auto") -> dict:
    """Prompt-token fine-tuning: train `<label>sequence<eos>`; save a model `hybridna generate` loads.

    No <bos>: a prompt is just "<label>", as `hybridna generate --seq "<label>"` encodes it (pretraining
    windows have no <bos> either).

    Sequences longer than max_len - 2 are cut to a random window each time they are drawn.
    Returns {"losses": [...], "tokens": ["<label>", ...], "path": out}.
    """
    from hybridna.tokenizer import EOS_ID, PAD_ID, DNATokenizer
    from hybridna_kernels.utils import backend as kbackend

    from .pretrain import lm_loss

    if len(train_seqs) != len(train_labels) or not train_seqs:
        raise ValueError("train_labels: expected one label per sequence (and at least one sequence)")
    if max_len < 8:
        raise ValueError(f"max_len: expected >= 8, got {max_len}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else nullcontext
    with kbackend(kernel_backend):
        backbone = _load_backbone(model, preset, dev)
        tok = DNATokenizer.from_pretrained(model) if model else DNATokenizer(backbone.config.added_tokens)
        tokens = sorted({label_token(l) for l in train_labels})
        backbone.add_tokens(tok, tokens)
        backbone.to(dev)
        body = [torch.from_numpy(tok.encode(s)) for s in train_seqs]
        heads = [tok.token_to_id(label_token(l)) for l in train_labels]
        room = max_len - 2

        def example(i):
            x = body[i]
            if x.numel() > room:
                s = rng.randrange(0, x.numel() - room + 1)
                x = x[s:s + room]
            return torch.cat([torch.tensor([heads[i]]), x, torch.tensor([EOS_ID])])

        from .pretrain import TrainConfig, make_optimizer

        opt = make_optimizer(backbone, TrainConfig(lr=lr, weight_decay=weight_decay), fused=dev.type == "cuda")
        from tqdm.auto import tqdm

        backbone.train()
        losses = []
        order = []
        bar = tqdm(range(steps), desc="finetune-gen", disable=not progress, dynamic_ncols=True, mininterval=1.0)
        for step in bar:
            if len(order) < batch_size:
                more = list(range(len(body)))
                rng.shuffle(more)
                order += more
            b, order = order[:batch_size], order[batch_size:]
            rows = [example(i) for i in b]
            width = max(r.numel() for r in rows)
            x = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
            for r, row in enumerate(rows):
                x[r, :row.numel()] = row
            x = x.to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, max_lr=lr, min_lr=lr / 10, warmup_steps=warmup_steps, total_steps=steps)
            with autocast():
                logits = backbone(x).logits
            loss = lm_loss(logits, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", bpb=f"{losses[-1] / LN2:.3f}", refresh=False)
        bar.close()
        backbone.eval()
        with atomic_dir(out) as tmp:
            backbone.save_pretrained(tmp, tokenizer=tok)
            save_json(tmp / "finetune.json", {"task": "generative", "tokens": tokens, "steps": steps,
                                              "final_loss": losses[-1], "base_model": model or preset})
    if progress:
        print(f"[finetune] generative: {len(tokens)} prompt tokens {tokens}, final loss {losses[-1]:.4f} "
              f"({losses[-1] / LN2:.3f} bits per token); saved {out}")
    return {"losses": losses, "tokens": tokens, "path": str(out)}


# ---- CLI -----------------------------------------------------------------------------------------

def _common(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="pretrained model directory (save_pretrained / a pretrain checkpoint)")
    src.add_argument("--preset", help="start from a randomly initialised preset instead (tiny, 300m, ...)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--kernel-backend", choices=["auto", "reference", "triton"], default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="mode", metavar="MODE")
    sub.required = True
    for mode, help_ in (("classify", "echo-embedding classification (MCC, accuracy, AUROC)"),
                        ("regress", "echo-embedding regression (MSE, Pearson, Spearman)")):
        q = sub.add_parser(mode, help=help_, description=help_)
        _common(q)
        q.add_argument("--train", help="CSV with columns sequence,label")
        if mode == "classify":
            q.add_argument("--fasta", nargs="+", metavar="LABEL=FASTA", help="one FASTA per class instead of --train")
        q.add_argument("--val", help="validation CSV (default: --val-frac of the training rows)")
        q.add_argument("--val-frac", type=float, default=0.1)
        q.add_argument("--head", choices=["mlp", "cnn"], default="mlp")
        q.add_argument("--train-backbone", action="store_true", help="fine-tune the backbone too (default frozen)")
        q.add_argument("--no-echo", dest="echo", action="store_false", help="read each sequence once")
        q.add_argument("--layer", type=int, default=-1, help="hidden state to use (-1 = final)")
        q.add_argument("--epochs", type=int, default=10)
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
        q.add_argument("--backbone-lr", type=float, default=1e-5)
        q.add_argument("--max-len", type=int, help="truncate sequences to this many tokens")
        q.add_argument("--metric", help="selects the best checkpoint: mcc/accuracy/auroc or pearson/spearman/mse")
    q = sub.add_parser("generate", help="prompt-token generative fine-tuning (<label> + sequence)")
    _common(q)
    q.add_argument("--train", required=True, help="CSV with columns sequence,label")
    q.add_argument("--steps", type=int, default=200)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--lr", type=float, default=3e-4)
    q.add_argument("--warmup-steps", type=int, default=20)
    q.add_argument("--max-len", type=int, default=1024)


def main(args: argparse.Namespace) -> int:
    if args.mode == "generate":
        seqs, labels = read_labelled_csv(args.train)
        finetune_generative(train_seqs=seqs, train_labels=labels, model=args.model, preset=args.preset, out=args.out,
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                            max_len=args.max_len, seed=args.seed, device=args.device, progress=args.progress,
                            kernel_backend=args.kernel_backend)
        return 0
    fasta = getattr(args, "fasta", None)
    if bool(args.train) == bool(fasta):
        raise ValueError("train: give exactly one of --train CSV or --fasta LABEL=FASTA ...")
    seqs, labels = read_labelled_csv(args.train) if args.train else read_fasta_classes(fasta)
    vs, vl = read_labelled_csv(args.val) if args.val else (None, None)
    res = finetune_supervised(
        task="classification" if args.mode == "classify" else "regression", train_seqs=seqs, train_labels=labels,
        val_seqs=vs, val_labels=vl, model=args.model, preset=args.preset, out=args.out, head=args.head,
        freeze=not args.train_backbone, echo=args.echo, layer=args.layer, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr, val_frac=args.val_frac,
        max_len=args.max_len, metric=args.metric, seed=args.seed, device=args.device, progress=args.progress,
        kernel_backend=args.kernel_backend)
    b = res["best"]
    print(f"[finetune] best epoch {b['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in b.items()
                                                              if k != "epoch") + f"; saved {res['path']}")
    return 0
