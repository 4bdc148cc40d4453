"""A pure Transformer baseline for the model benchmark (issue 9): SDPA attention, SwiGLU, RMSNorm.

Same width (d_model), depth, vocabulary and attention heads as a HybriDNA config, every layer an
attention layer; by default the SwiGLU hidden size is chosen so the parameter count matches the
hybrid's ("same size and width"), see `TransformerConfig.matching`. It lives in bench/ because it is
a measuring stick, not part of the hybridna package.

    model = TransformerLM(TransformerConfig.matching(hybrid_config, hybrid_params))
    out = model(input_ids, labels=input_ids)  # out.loss, out.logits
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F


def _first_attr(obj, names, default=None):
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


@dataclass
class TransformerConfig:
    vocab_size: int = 16
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int = 16
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int = 2816
    norm_eps: float = 1e-5
    rope: bool = True
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"n_heads: must divide d_model={self.d_model} when head_dim is None, got {self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: must divide n_heads={self.n_heads}, got {self.n_kv_heads}")

    def layer_params(self, d_ff: int | None = None) -> int:
        """Parameters of one layer: q/k/v/o projections, SwiGLU (3 matrices), two RMSNorm weights."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2
        return attn + 3 * d * (self.d_ff if d_ff is None else d_ff) + 2 * d

    def num_params(self) -> int:
        emb = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return self.n_layers * self.layer_params() + emb + self.d_model

    @classmethod
    def matching(cls, hybrid_config, target_params: int | None = None, *, multiple_of: int = 64, **overrides):
        """Width, depth, vocabulary and heads taken from a HybriDNA config (field names looked up
        leniently); d_ff solved so the parameter count is closest to `target_params` when given,
        otherwise the hybrid's own MLP hidden size (or 8/3 d_model)."""
        d_model = int(_first_attr(hybrid_config, ("d_model", "hidden_size", "dim")))
        n_layers = int(_first_attr(hybrid_config, ("n_layers", "n_layer", "num_layers", "num_hidden_layers")))
        vocab = int(_first_attr(hybrid_config, ("padded_vocab_size", "vocab_size"), 16))
        n_heads = int(_first_attr(hybrid_config, ("n_heads", "attn_n_heads", "num_heads", "num_attention_heads",
                                                  "attn_num_heads"), max(1, d_model // 64)))
        n_kv = int(_first_attr(hybrid_config, ("n_kv_heads", "attn_n_kv_heads", "num_kv_heads", "num_key_value_heads",
                                               "attn_num_kv_heads"), n_heads))
        head_dim = _first_attr(hybrid_config, ("attn_head_dim", "head_dim"))
        d_ff = _first_attr(hybrid_config, ("d_intermediate", "d_ff", "mlp_hidden", "intermediate_size", "ffn_dim"))
        if not d_ff:
            d_ff = multiple_of * math.ceil(8 * d_model / 3 / multiple_of)
        tie = bool(_first_attr(hybrid_config, ("tie_embeddings", "tie_word_embeddings"), True))
        kw = dict(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                  head_dim=None if head_dim is None else int(head_dim), d_ff=int(d_ff), tie_embeddings=tie)
        kw.update(overrides)
        cfg = cls(**kw)
        if target_params and "d_ff" not in overrides:
            fixed = cfg.num_params() - cfg.n_layers * 3 * cfg.d_model * cfg.d_ff
            per_ff = cfg.n_layers * 3 * cfg.d_model  # parameters per unit of d_ff
            d_ff = max(multiple_of, round((target_params - fixed) / per_ff / multiple_of) * multiple_of)
            cfg = cls(**{**asdict(cfg), "d_ff": int(d_ff)})
        return cfg


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _rope_tables(seqlen: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seqlen, device=device, dtype=torch.float32), inv)  # (L, hd/2)
    return ang.cos(), ang.sin()


def _apply_rope(x, cos, sin):
    # x: (B, L, H, hd); rotate pairs (x[..., :hd/2], x[..., hd/2:]) as in GPT-NeoX / Llama.
    # In the activations' dtype, as common Llama implementations do: cheap, and precise enough here.
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (L, 1, hd/2)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.wqkv = nn.Linear(d, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, d, bias=False)

    def forward(self, x, rope=None):
        cfg = self.cfg
        B, L, _ = x.shape
        hd = cfg.head_dim
        q, k, v = self.wqkv(x).split([cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd], dim=-1)
        q = q.view(B, L, cfg.n_heads, hd)  # (B, L, H, hd)
        k = k.view(B, L, cfg.n_kv_heads, hd)
        v = v.view(B, L, cfg.n_kv_heads, hd)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd), last dim contiguous
        # enable_gqa (torch >= 2.5) keeps the flash backend without materialising repeated K/V,
        # which would add 2 * L * d_model bf16 of saved activations per layer.
        gqa = {"enable_gqa": True} if cfg.n_kv_heads != cfg.n_heads else {}
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)  # (B, H, L, hd)
        return self.wo(o.transpose(1, 2).reshape(B, L, cfg.n_heads * hd))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w13 = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x, rope=None):
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    """Decoder-only Transformer; forward(input_ids, labels=None) -> .logits, .loss (next-token CE)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def reset_parameters(self):
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual-branch outputs scaled down with depth (GPT-2).
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("wo.weight", "w2.weight")) else std
                nn.init.normal_(p, std=s)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, labels=None):
        B, L = input_ids.shape
        x = self.embedding(input_ids)  # (B, L, D)
        rope = _rope_tables(L, self.config.head_dim, self.config.rope_theta, x.device) if self.config.rope else None
        for layer in self.layers:
            x = layer(x, rope)
        logits = self.lm_head(self.norm_f(x))  # (B, L, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return SimpleNamespace(logits=logits, loss=loss)
