"""Fine-tuning: metrics against hand-computed values, echo features against HybriDNA.embed,
classification / regression on tiny synthetic data, prompt-token generation, and the demo end to end."""
from __future__ import annotations

import csv
import math
import random

import numpy as np
import pytest
import torch

from hybridna.train.finetune import (accuracy, auroc, classification_metrics, echo_hidden, label_token, mcc, pearson,
                                     read_fasta_classes, read_labelled_csv, spearman)
from hybridna_kernels.utils import backend


# ---- metrics ---------------------------------------------------------------------------------------

def test_binary_metrics_by_hand():
    y = [1, 1, 0, 0, 1, 0]
    p = [1, 0, 0, 0, 1, 1]
    assert accuracy(y, p) == pytest.approx(4 / 6)
    tp, tn, fp, fn = 2, 2, 1, 1
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(y, p) == pytest.approx(want)
    assert mcc(y, y) == pytest.approx(1.0)
    assert mcc(y, [1 - v for v in y]) == pytest.approx(-1.0)
    assert mcc(y, [1] * 6) == 0.0  # constant prediction: undefined, reported as 0
    # AUROC: fraction of (positive, negative) pairs ranked correctly, ties count half.
    s = [0.9, 0.4, 0.4, 0.1, 0.8, 0.3]
    pairs = [(a, b) for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auroc(y, s) == pytest.approx(want)
    assert auroc(y, np.stack([1 - np.array(s), s], 1)) == pytest.approx(want)


def test_multiclass_metrics():
    y = [0, 1, 2, 2, 1, 0]
    assert mcc(y, y, 3) == pytest.approx(1.0)
    logits = torch.eye(3)[y] * 5
    m = classification_metrics(y, logits, 3)
    assert m["accuracy"] == 1.0 and m["mcc"] == pytest.approx(1.0) and m["auroc"] == pytest.approx(1.0)


def test_correlations():
    a = [1.0, 2.0, 3.0, 4.0]
    assert pearson(a, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0)
    assert spearman(a, [1.0, 10.0, 100.0, 1000.0]) == pytest.approx(1.0)
    assert pearson(a, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)


# ---- inputs ----------------------------------------------------------------------------------------

def test_read_inputs(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("id,Sequence,Label\n1,ACGT,pos\n2,GGCC,neg\n")
    assert read_labelled_csv(p) == (["ACGT", "GGCC"], ["pos", "neg"])
    bad = tmp_path / "bad.csv"
    bad.write_text("seq,y\nACGT,1\n")
    with pytest.raises(ValueError, match="sequence"):
        read_labelled_csv(bad)
    fa = tmp_path / "promoter.fa"
    fa.write_text(">a\nACGT\nAC\n>b\nGG\n")
    assert read_fasta_classes([str(fa), f"other={fa}"]) == (["ACGTAC", "GG"] * 2, ["promoter"] * 2 + ["other"] * 2)
    assert label_token("Hep G2") == "<Hep_G2>" and label_token("<x>") == "<x>"


def test_echo_features_match_embed():
    from hybridna.config import HybriDNAConfig
    from hybridna.model import HybriDNA

    with backend("reference"):
        torch.manual_seed(0)
        m = HybriDNA(HybriDNAConfig.preset("tiny")).eval()
        ids = torch.randint(5, 9, (3, 17))
        want = m.embed(ids, echo=True, pool="mean")
        got = echo_hidden(m, ids).float().mean(1)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        want3 = m.embed(ids, echo=False, pool="mean", layer=3)
        got3 = echo_hidden(m, ids, echo=False, layer=3).float().mean(1)
        assert torch.allclose(got3, want3, atol=1e-5, rtol=1e-5)
        # differentiable (HybriDNA.embed is not), for fine-tuning the backbone
        echo_hidden(m, ids).sum().backward()
        assert m.embedding.weight.grad is not None


# ---- supervised fine-tuning on synthetic data ------------------------------------------------------------

def _motif_data(n, seed, length=24):
    """Class "yes" carries GGGGCCCC somewhere; "no" is random ACGT without it."""
    rng = random.Random(seed)
    seqs, labels = [], []
    for i in range(n):
        s = [rng.choice("AT") for _ in range(length)]
        if i % 2 == 0:
            k = rng.randrange(0, length - 8)
            s[k:k + 8] = "GGGGCCCC"
            labels.append("yes")
        else:
            labels.append("no")
        seqs.append("".join(s))
    return seqs, labels


def _write_csv(path, seqs, labels):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", "label"])
        w.writerows(zip(seqs, labels))


def test_classify_cli_frozen_mlp(tmp_path):
    from hybridna.cli import main
    from hybridna.train.finetune import predict

    seqs, labels = _motif_data(48, 0)
    _write_csv(tmp_path / "train.csv", seqs, labels)
    vs, vl = _motif_data(16, 1)
    _write_csv(tmp_path / "val.csv", vs, vl)
    rc = main(["finetune", "classify", "--preset", "tiny", "--train", str(tmp_path / "train.csv"), "--val",
               str(tmp_path / "val.csv"), "--out", str(tmp_path / "cls"), "--epochs", "15", "--batch-size", "8",
               "--lr", "3e-3", "--kernel-backend", "reference", "--no-progress"])
    assert rc == 0
    import json

    hist = json.load(open(tmp_path / "cls" / "history.json"))
    best = max(h["mcc"] for h in hist)
    # GC-rich motif vs AT-only background: even a random backbone's features separate them.
    assert best > 0.8, hist
    meta = json.load(open(tmp_path / "cls" / "best" / "finetune.json"))
    assert meta["val_metrics"]["mcc"] == best and meta["classes"] == ["no", "yes"]
    with backend("reference"):
        prob = predict(tmp_path / "cls" / "best", vs)
    assert prob.shape == (16, 2) and torch.allclose(prob.sum(1), torch.ones(16))
    acc = (prob.argmax(1).numpy() == np.array([1 if v == "yes" else 0 for v in vl])).mean()
    assert acc == pytest.approx(meta["val_metrics"]["accuracy"])


def test_regress_trainable_backbone_cnn(tmp_path):
    from hybridna.train.finetune import finetune_supervised

    rng = random.Random(0)
    seqs = ["".join(rng.choice("ACGT") for _ in range(16)) for _ in range(32)]
    gc = [sum(c in "GC" for c in s) / len(s) for s in seqs]  # target: GC content
    res = finetune_supervised(task="regression", train_seqs=seqs, train_labels=gc, preset="tiny",
                              out=str(tmp_path / "reg"), head="cnn", freeze=False, epochs=4, batch_size=8, lr=3e-3,
                              backbone_lr=1e-3, val_frac=0.25, progress=False, kernel_backend="reference")
    assert len(res["history"]) == 4
    assert res["best"]["pearson"] > 0.5, res["history"]
    assert (tmp_path / "reg" / "best" / "backbone" / "model.safetensors").exists()


def test_finetune_rejects_bad_arguments(tmp_path):
    from hybridna.train.finetune import finetune_supervised

    with pytest.raises(ValueError, match="task"):
        finetune_supervised(task="ranking", train_seqs=["A"], train_labels=["x"])
    with pytest.raises(ValueError, match="two classes"):
        finetune_supervised(task="classification", train_seqs=["ACGT"] * 4, train_labels=["x"] * 4, preset="tiny",
                            out=str(tmp_path), kernel_backend="reference", progress=False)
    with pytest.raises(ValueError, match="numeric"):
        finetune_supervised(task="regression", train_seqs=["ACGT"] * 4, train_labels=["x"] * 4, preset="tiny",
                            out=str(tmp_path), kernel_backend="reference", progress=False)


# ---- generative fine-tuning -------------------------------------------------------------------------

def test_generative_prompt_tokens(tmp_path):
    from hybridna.cli import main
    from hybridna.model import HybriDNA
    from hybridna.tokenizer import DNATokenizer

    # <polyA> sequences are all A, <polyC> all C: after fine-tuning the prompt decides the sample.
    seqs = ["A" * 16] * 8 + ["C" * 16] * 8
    labels = ["polyA"] * 8 + ["polyC"] * 8
    _write_csv(tmp_path / "gen.csv", seqs, labels)
    rc = main(["finetune", "generate", "--preset", "tiny", "--train", str(tmp_path / "gen.csv"), "--out",
               str(tmp_path / "gen"), "--steps", "20", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "3",
               "--kernel-backend", "reference", "--no-progress"])
    assert rc == 0
    tok = DNATokenizer.from_pretrained(tmp_path / "gen")
    assert tok.added_tokens == ["<polyA>", "<polyC>"]
    with backend("reference"):
        m = HybriDNA.from_pretrained(tmp_path / "gen").eval()
        assert m.config.vocab_size == tok.vocab_size
        for label, base in (("<polyA>", "A"), ("<polyC>", "C")):
            ids = torch.from_numpy(tok.encode(label))[None]
            out = m.generate(ids, 12, temperature=0)
            text = tok.decode(out[0, 1:])
            assert text == base * 12, (label, text)


def test_generate_cli_loads_finetuned(tmp_path, capsys):
    """The checkpoint written by `finetune generate` works with `hybridna generate --prompt "<label>"` (issue 8's spelling; --seq is the same option)."""
    from hybridna.cli import main

    seqs, labels = ["G" * 20] * 4, ["g"] * 4
    _write_csv(tmp_path / "g.csv", seqs, labels)
    main(["finetune", "generate", "--preset", "tiny", "--train", str(tmp_path / "g.csv"), "--out", str(tmp_path / "m"),
          "--steps", "2", "--kernel-backend", "reference", "--no-progress"])
    capsys.readouterr()
    with backend("reference"):
        rc = main(["generate", "--model", str(tmp_path / "m"), "--prompt", "<g>", "--max-new-tokens", "5", "--seed", "0"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(">") and "<g>" in out[0]
    assert len(out[1]) == 5 and set(out[1]) <= set("ACGTN")


# ---- the demo -------------------------------------------------------------------------------------------

def test_demo_short(tmp_path, capsys):
    from hybridna.demo import main

    rc = main(["--out", str(tmp_path / "demo"), "--steps", "3", "--seq-len", "64", "--micro-batch", "4",
               "--sample-len", "20", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "bits per base", "identical", "tokens/s"):
        assert stage in out, out
    # the comparison line for CPU and GPU runs
    summary = dict(kv.split("=") for kv in out.splitlines()[-1].split()[1:])
    assert out.splitlines()[-1].startswith("SUMMARY")
    assert summary["steps"] == "3" and summary["tokens"] == str(3 * 4 * 64)
    assert float(summary["tokens_per_s"]) > 0 and float(summary["val_bpb"]) <= float(summary["last_val_bpb"])
    assert (tmp_path / "demo" / "model" / "model.safetensors").exists()
    assert (tmp_path / "demo" / "pretrain" / "loss_curve.png").exists()


def test_markov_baseline():
    from hybridna.demo import markov_bits_per_base

    rng = np.random.default_rng(0)
    iid = rng.integers(5, 9, 20000).astype(np.uint8)
    assert markov_bits_per_base(iid[:10000], iid[10000:], 0) == pytest.approx(2.0, abs=0.01)
    periodic = np.tile(np.array([5, 6, 7, 8], np.uint8), 2000)
    assert markov_bits_per_base(periodic[:4000], periodic[4000:], 1) < 0.01
