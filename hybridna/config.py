"""HybriDNAConfig: every size of the model, presets tiny / 300m / 3b / 7b, validation, parameter count."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from .tokenizer import NUM_BASE_TOKENS

__all__ = ["HybriDNAConfig", "PRESETS"]


@dataclass
class HybriDNAConfig:
    """Sizes of a HybriDNA model. Blocks are Mamba2 except every `attn_layer_period`-th one at
    `i % attn_layer_period == attn_layer_offset`, which is attention; every block is
    `x + mixer(norm(x))` then `x + mlp(norm(x))` (RMSNorm, SwiGLU)."""

    d_model: int = 1024
    n_layer: int = 24
    d_intermediate: int = 2048  # SwiGLU hidden size; 0 disables the MLP of every block
    vocab_size: int = NUM_BASE_TOKENS  # real tokens: the base vocabulary plus added prompt tokens
    pad_vocab_size_multiple: int = 8  # embedding / head rows rounded up for the matrix units
    added_tokens: list[str] = field(default_factory=list)  # prompt tokens with ids 10, 11, ...
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    # Layout: attention at layer i when i % attn_layer_period == attn_layer_offset.
    attn_layer_period: int = 8
    attn_layer_offset: int = 4

    # Mamba2 mixer
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    conv_bias: bool = True
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)

    # Attention mixer (grouped-query; no positional encoding unless rotary)
    attn_n_heads: int = 16
    attn_n_kv_heads: int = 4
    attn_head_dim: int = 64
    attn_window: int | None = None  # sliding window (keys per query, itself included); None = full causal
    rotary: bool = False
    rope_theta: float = 10000.0

    # Initialisation
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    # Loss: label ids never predicted (pad always; N by default, it carries no sequence information)
    loss_ignore_n: bool = True

    def __post_init__(self):
        self.A_init_range = tuple(self.A_init_range)
        self.dt_limit = tuple(float(v) for v in self.dt_limit)
        self.added_tokens = list(self.added_tokens)
        self.validate()

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def attn_layer_idx(self) -> list[int]:
        return [i for i in range(self.n_layer) if i % self.attn_layer_period == self.attn_layer_offset]

    def is_attention(self, i: int) -> bool:
        return i % self.attn_layer_period == self.attn_layer_offset

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond, name, msg):
            if not cond:
                raise ValueError(f"HybriDNAConfig.{name}: {msg}, got {getattr(self, name)!r}")

        for name in ("d_model", "n_layer", "d_state", "headdim", "expand", "ngroups", "chunk_size",
                     "attn_n_heads", "attn_n_kv_heads", "attn_head_dim", "pad_vocab_size_multiple",
                     "attn_layer_period"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, name, "expected a positive int")
        need(isinstance(self.d_intermediate, int) and self.d_intermediate >= 0, "d_intermediate",
             "expected an int >= 0")
        need(0 <= self.attn_layer_offset < self.attn_layer_period, "attn_layer_offset",
             f"expected 0 <= offset < attn_layer_period ({self.attn_layer_period})")
        need(self.vocab_size >= NUM_BASE_TOKENS + len(self.added_tokens), "vocab_size",
             f"expected at least {NUM_BASE_TOKENS} base tokens + {len(self.added_tokens)} added tokens")
        need(2 <= self.d_conv <= 8, "d_conv", "expected a conv width in 2..8")
        need(self.d_inner % self.headdim == 0, "headdim",
             f"must divide d_inner = expand * d_model = {self.d_inner}")
        need(self.nheads % self.ngroups == 0, "ngroups", f"must divide the number of SSD heads ({self.nheads})")
        need(self.attn_n_heads % self.attn_n_kv_heads == 0, "attn_n_kv_heads",
             f"must divide attn_n_heads ({self.attn_n_heads})")
        need(not self.rotary or self.attn_head_dim % 2 == 0, "attn_head_dim", "must be even with rotary")
        need(self.attn_window is None or (isinstance(self.attn_window, int) and self.attn_window >= 1),
             "attn_window", "expected None or an int >= 1")
        need(len(self.A_init_range) == 2 and 0 < self.A_init_range[0] <= self.A_init_range[1], "A_init_range",
             "expected (low, high) with 0 < low <= high")
        need(0 < self.dt_min <= self.dt_max, "dt_min", f"expected 0 < dt_min <= dt_max ({self.dt_max})")
        need(len(self.dt_limit) == 2 and 0.0 <= self.dt_limit[0] < self.dt_limit[1], "dt_limit",
             "expected (low, high) with 0 <= low < high")
        need(self.norm_eps > 0, "norm_eps", "expected > 0")

    # ---- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "HybriDNAConfig":
        """One of "tiny", "300m", "3b", "7b", with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"preset: unknown config fields {bad}")
        return cls(**{**PRESETS[name], **overrides})

    # ---- parameter count (no model needed) -------------------------------------------------------
    def num_params(self, *, include_embeddings: bool = True) -> int:
        d, di, H, N, G = self.d_model, self.d_inner, self.nheads, self.d_state, self.ngroups
        mamba = d * (2 * di + 2 * G * N + H)  # in_proj: z, x, B, C, dt
        mamba += self.conv_dim * self.d_conv + (self.conv_dim if self.conv_bias else 0)
        mamba += 3 * H + di  # A_log, D, dt_bias, gated-norm weight
        mamba += di * d  # out_proj
        hq, hkv, hd = self.attn_n_heads, self.attn_n_kv_heads, self.attn_head_dim
        attn = d * (hq + 2 * hkv) * hd + hq * hd * d
        mlp = 3 * d * self.d_intermediate if self.d_intermediate else 0
        norms = 2 * d if self.d_intermediate else d
        n_attn = len(self.attn_layer_idx)
        total = (self.n_layer - n_attn) * mamba + n_attn * attn + self.n_layer * (mlp + norms) + d
        if include_embeddings:
            emb = self.padded_vocab_size * d
            total += emb if self.tie_embeddings else 2 * emb
        return total

    def summary(self) -> str:
        n = self.num_params()
        return (f"HybriDNA d_model={self.d_model} n_layer={self.n_layer} (attention at {self.attn_layer_idx}) "
                f"d_intermediate={self.d_intermediate} ssd heads={self.nheads}x{self.headdim} d_state={self.d_state} "
                f"attn heads={self.attn_n_heads}/{self.attn_n_kv_heads}x{self.attn_head_dim} "
                f"vocab={self.vocab_size} (padded {self.padded_vocab_size}): {n / 1e6:.1f}M parameters")

    # ---- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["A_init_range"] = list(self.A_init_range)
        d["dt_limit"] = [v if math.isfinite(v) else "inf" for v in self.dt_limit]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HybriDNAConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        if "dt_limit" in d:
            d["dt_limit"] = tuple(float(v) for v in d["dt_limit"])
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HybriDNAConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


# Sizes: DESIGN.md fixes d_model / n_layer and the Mamba2 shape; d_intermediate and the attention
# heads are chosen so that num_params() lands near the preset's name (printed by `summary()`):
# 300m -> 0.30B, 3b -> 3.03B, 7b -> 7.06B.
PRESETS: dict[str, dict] = {
    # Small enough for CPU tests: 8 layers so that layer 4 is still attention; attention headdim 32
    # (the smallest the attention kernel is built for).
    "tiny": dict(d_model=64, n_layer=8, d_intermediate=128, d_state=16, headdim=16, chunk_size=64,
                 attn_n_heads=4, attn_n_kv_heads=2, attn_head_dim=32),
    "300m": dict(d_model=1024, n_layer=24, d_intermediate=2048, d_state=128, headdim=64, chunk_size=256,
                 attn_n_heads=16, attn_n_kv_heads=4, attn_head_dim=64),
    "3b": dict(d_model=4096, n_layer=16, d_intermediate=7680, d_state=128, headdim=64, chunk_size=256,
               attn_n_heads=32, attn_n_kv_heads=8, attn_head_dim=128),
    "7b": dict(d_model=4096, n_layer=32, d_intermediate=10240, d_state=128, headdim=64, chunk_size=256,
               attn_n_heads=32, attn_n_kv_heads=8, attn_head_dim=128),
}
