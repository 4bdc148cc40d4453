"""Training metrics: JSONL log, loss-curve PNG, model FLOPs per token and MFU."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

__all__ = ["MetricsLog", "read_metrics", "plot_loss_curve", "linear_flops_per_token", "attention_flops_per_token",
           "ssd_flops_per_token", "peak_flops", "mfu", "LN2"]

LN2 = math.log(2.0)

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity); MFU is quoted against these.
_PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class MetricsLog:
    """Append-only JSONL: one object per line, each with at least "step" and "kind" ("train"/"val")."""

    def __init__(self, path: str | os.PathLike, *, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # A resumed run continues the same curve: drop records written after the checkpoint.
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after_step]
            with open(self.path, "w") as f:
                for r in keep:
                    f.write(json.dumps(r) + "\n")
        self._f = open(self.path, "a")

    def log(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike, *, title: str = "") -> str:
    """Train and validation loss in bits per base against tokens seen; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = read_metrics(metrics_path)
    train = [r for r in rec if r.get("kind") == "train"]
    val = [r for r in rec if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot([r["tokens"] for r in train], [r["loss"] / LN2 for r in train], lw=1, alpha=0.8, label="train")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_bpb"] for r in val], "o-", ms=4, label="validation")
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="uniform over ACGT (2 bits)")
    ys = [r["loss"] / LN2 for r in train] + [r["val_bpb"] for r in val]
    if ys:
        # The first steps (about log2(vocab) = 3.3 bits) would flatten the part worth reading.
        lo = min(ys)
        ax.set_ylim(lo - 0.02, max(min(max(ys), lo + 0.6), 2.02) + 0.02)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits per base")
    ax.set_title(title or "HybriDNA pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return str(png_path)


def linear_flops_per_token(model: torch.nn.Module) -> float:
    """6 x (weights of every nn.Linear): forward (2) + backward (4) multiply-adds per token.

    Embedding lookups are not matmuls and are left out; a tied output projection that is an
    nn.Linear counts once.
    """
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return 6.0 * n


def attention_flops_per_token(seq_len: int, *, n_layers: int, q_dim: int, window: int | None = None) -> float:
    """Training FLOPs per token of causal softmax attention outside the projections.

    QK^T and PV cost 2 * 2 * keys * q_dim forward; causal masking halves the average keys (a window
    caps them); backward is twice the forward.
    """
    keys = seq_len / 2 if window is None else min(window, seq_len / 2)
    return 3.0 * 4.0 * keys * q_dim * n_layers


def ssd_flops_per_token(*, n_layers: int, nheads: int, headdim: int, d_state: int, ngroups: int,
                        chunk_size: int) -> float:
    """Training FLOPs per token of the chunked SSD scan outside the projections.

    Per token and chunk length Q (causal halves the intra-chunk work): C B^T scores 2 * Q/2 * N per
    group, scores @ x 2 * Q/2 * P per head, chunk state and state-to-output 2 * P * N each per head.
    """
    q = chunk_size
    fwd = ngroups * q * d_state + nheads * q * headdim + 4.0 * nheads * headdim * d_state
    return 3.0 * fwd * n_layers


def peak_flops(device: torch.device | str, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of the device (None when unknown, for example on CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in _PEAK_BF16.items():
        if key in name:
            return val
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    if not peak:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)
