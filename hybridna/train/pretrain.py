"""`hybridna pretrain`: next-token pretraining on Zarr token shards.

    hybridna pretrain --preset tiny --data runs/lambda.zarr --out runs/tiny --steps 300 --seq-len 256
    torchrun --nproc_per_node 8 -m hybridna.cli pretrain --config big.json --data s1.zarr s2.zarr

One optimizer step: `grad_accum` micro-batches of `micro_batch` windows per rank, loss on every base
(N and padding masked), AdamW with decoupled weight decay, linear warmup then cosine decay, gradient
clipping. A context-length schedule ("8192:1000,32768:500") changes the window length while keeping
the tokens per step constant. Checkpoints hold the model (save_pretrained), the optimizer, the
data-loader positions and the RNG states, so `--resume` continues the same loss curve exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import (atomic_dir, checkpoint_name, latest_checkpoint, load_json, load_train_state, mark_latest,
                         prune_checkpoints, rng_state, save_json, save_train_state, set_rng_state)
from .dist import (DistInfo, all_reduce_mean, apply_activation_checkpointing, broadcast_object, cleanup_distributed,
                   init_distributed, unwrap_model, wrap_model)
from .metrics import LN2, MetricsLog, mfu, peak_flops, plot_loss_curve
from .schedule import ContextSchedule, lr_at, parse_context_schedule

__all__ = ["TrainConfig", "train", "lm_loss", "build_model", "make_optimizer", "model_flops_per_token",
           "add_arguments", "main"]

# Presets large enough that replicating weights + Adam state on every GPU is wasteful: shard them.
_FSDP_PRESETS = ("3b", "7b")


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; a JSON config file holds any subset of these keys.

    model: a preset name ("tiny", "300m", "3b", "7b") or a dict of HybriDNAConfig fields, optionally
    with "preset" naming the base they override.
    """

    model: str | dict = "tiny"
    data: list = field(default_factory=list)
    out: str = "runs/pretrain"
    steps: int | None = None           # total optimizer steps (None: the context schedule's sum)
    seq_len: int = 1024
    context_schedule: str | None = None  # "LEN:STEPS,LEN:STEPS"; overrides seq_len
    micro_batch: int = 8               # windows per micro-step per rank, at the first context length
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float | None = None        # default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    rc_prob: float = 0.0               # reverse-complement augmentation probability
    max_n_frac: float = 1.0            # skip windows with more N than this
    val_frac: float = 0.02             # tail of every contig held out for validation
    val_windows: int = 64
    val_seq_len: int | None = None     # default: the first stage's context length
    val_every: int = 200
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool | str = False         # True: the latest checkpoint under out/; or a checkpoint directory
    stop_at: int | None = None         # stop (with a checkpoint) after this step, as an interruption would
    time_limit_s: float | None = None  # stop early (validated, checkpointed) once training took this long
    eval_at_start: bool = False        # validate before the first step (the untrained baseline)
    keep_best: bool = False            # end with the weights of the best validation (not the last step's)
    cuda_graph: bool = False           # replay forward + backward from a CUDA graph (one GPU, one context length)
    device: str | None = None          # "cpu" / "cuda"; default CUDA when available
    dtype: str = "auto"                # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16", "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    mlp_recompute: float | None = None  # HybriDNA.set_mlp_recompute: 1 recompute the MLP's gate_up in the backward
                                        # (less memory), 0 save it (faster), None HYBRIDNA_MLP_RECOMPUTE (default 1)
    strategy: str = "auto"             # "ddp", "fsdp" or "auto" (fsdp for the 3b and 7b presets)
    kernel_backend: str = "auto"       # hybridna_kernels backend: "auto", "reference", "triton"
    peak_tflops: float | None = None   # for MFU when the device is not in the built-in table
    progress: bool = True
    plot: bool = True

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        with open(path) as f:
            d = json.load(f)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("data: expected at least one Zarr store (--data STORE ...)")
        for name in ("micro_batch", "grad_accum", "log_every", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ValueError(f"val_frac: expected 0 <= val_frac < 1, got {self.val_frac}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype: expected 'auto', 'bf16' or 'fp32', got {self.dtype!r}")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"strategy: expected 'auto', 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.cuda_graph and (self.grad_accum != 1 or self.compile):
            raise ValueError("cuda_graph: needs grad_accum 1 and no compile")
        if self.mlp_recompute is not None and not 0.0 <= float(self.mlp_recompute) <= 1.0:
            raise ValueError(f"mlp_recompute: expected a fraction in [0, 1], got {self.mlp_recompute}")
        if self.kernel_backend not in ("auto", "reference", "triton"):
            raise ValueError(f"kernel_backend: expected 'auto', 'reference' or 'triton', got {self.kernel_backend!r}")


# ---- model ---------------------------------------------------------------------------------------

def model_config(spec):
    """HybriDNAConfig from a preset name, a JSON file, or a dict of fields ({"preset": base, ...})."""
    from hybridna.config import HybriDNAConfig

    if isinstance(spec, HybriDNAConfig):
        return spec
    if isinstance(spec, str):
        if spec.endswith(".json"):
            if not os.path.exists(spec):
                raise ValueError(f"model: config file {spec!r} does not exist")
            with open(spec) as f:
                return model_config(json.load(f))
        return HybriDNAConfig.preset(spec)
    if isinstance(spec, dict):
        d = dict(spec)
        base = d.pop("preset", None)
        if base is not None:
            return HybriDNAConfig.preset(base, **d)
        return HybriDNAConfig.from_dict(d)
    raise ValueError(f"model: expected a preset name or a dict of config fields, got {type(spec).__name__}")


def build_model(spec):
    from hybridna.model import HybriDNA

    return HybriDNA(model_config(spec))


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul weights + attention scores + SSD scan (see metrics.py)."""
    from .metrics import attention_flops_per_token, linear_flops_per_token, ssd_flops_per_token

    cfg = model.config
    n_attn = len(cfg.attn_layer_idx)
    flops = linear_flops_per_token(model)
    flops += attention_flops_per_token(seq_len, n_layers=n_attn, q_dim=cfg.attn_n_heads * cfg.attn_head_dim,
                                       window=cfg.attn_window)
    flops += ssd_flops_per_token(n_layers=cfg.n_layer - n_attn, nheads=cfg.nheads, headdim=cfg.headdim,
                                 d_state=cfg.d_state, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size)
    return flops


def make_optimizer(model, cfg: TrainConfig, *, fused: bool | None = None):
    """AdamW, decoupled weight decay on matrices only (not on norms, biases, A_log, D, dt_bias)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {}
    if fused is None:
        fused = all(p.is_cuda for p in decay + no_decay)
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kw)


# ---- loss ----------------------------------------------------------------------------------------

def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, *, reduction: str = "mean"):
    """Next-token cross-entropy over every base; targets that are N or padding do not count.

    logits: (B, L, V); input_ids: (B, L). Returns the mean loss (nats), or with reduction="sum" the
    pair (sum of losses, number of counted targets).
    """
    from hybridna.tokenizer import N_ID, PAD_ID

    targets = input_ids[:, 1:]
    keep = (targets != N_ID) & (targets != PAD_ID)
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    losses = losses * keep.flatten()
    total, count = losses.sum(), keep.sum()
    if reduction == "sum":
        return total, count
    return total / count.clamp(min=1)


# ---- data ----------------------------------------------------------------------------------------

def _holdout(stores, val_frac: float) -> list[dict]:
    """Per store: {contig: cut}; bases at and after `cut` (the contig's last val_frac) are held out."""
    from hybridna.data import open_store

    out = []
    for path in stores:
        st = open_store(path)
        out.append({name: int(length) - int(round(int(length) * val_frac)) for name, length in zip(st.names, st.lengths)})
    return out


class _Batches:
    """Training windows from GenomeWindows stacked into (micro_batch, seq_len) batches.

    Windows that reach into a held-out contig tail are skipped. The stream's position (samples drawn,
    skipped ones included) is GenomeWindows' resume state, so a resumed run draws exactly the windows
    it would have drawn.
    """

    def __init__(self, cfg: TrainConfig, seq_len: int, info: DistInfo, stage: int, holdout: list[dict]):
        from hybridna.data import GenomeWindows

        self.seq_len = seq_len
        # Every stage draws its own stream (the seed fixes all of them); ranks are disjoint within it.
        self.ds = GenomeWindows(cfg.data, seq_len, seed=cfg.seed + 1000 * stage, rc_prob=cfg.rc_prob,
                                max_n_frac=cfg.max_n_frac, rank=info.rank, world_size=info.world_size)
        self.cut = {}
        for si, cuts in enumerate(holdout):
            sp = self.ds.species_of(si)
            for name, c in cuts.items():
                self.cut[(sp, name)] = min(c, self.cut.get((sp, name), c))
        self._it = None

    def next(self, n: int) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.ds)
        rows, skipped = [], 0
        while len(rows) < n:
            item = next(self._it)
            cut = self.cut.get((item["species"], item["contig"]))
            if cut is not None and item["start"] + self.seq_len > cut:
                skipped += 1
                if skipped > 100_000:
                    raise ValueError(f"val_frac: almost every {self.seq_len}-base window overlaps the held-out "
                                     "contig tails; lower --val-frac or --seq-len")
                continue
            rows.append(item["input_ids"])
        return torch.stack(rows)

    def state_dict(self):
        return self.ds.state_dict()

    def load_state_dict(self, state):
        self.ds.load_state_dict(state)
        self._it = None


def _val_batches(cfg: TrainConfig, seq_len: int, holdout: list[dict]) -> list[torch.Tensor]:
    """Held-out windows: the contig tails cut into non-overlapping windows, at most cfg.val_windows of
    them spread evenly; the same windows at every evaluation."""
    from hybridna.data import open_store

    spots = []
    for path, cuts in zip(cfg.data, holdout):
        st = open_store(path)
        for name, length in zip(st.names, st.lengths):
            start = cuts[name]
            while start + seq_len <= int(length):
                spots.append((st, name, start))
                start += seq_len
    if not spots:
        return []
    if len(spots) > cfg.val_windows:
        pick = np.linspace(0, len(spots) - 1, cfg.val_windows).round().astype(int)
        spots = [spots[i] for i in pick]
    rows = [torch.from_numpy(st.tokens(name, s, s + seq_len).astype(np.int64)) for st, name, s in spots]
    bs = max(1, cfg.micro_batch)
    return [torch.stack(rows[i:i + bs]) for i in range(0, len(rows), bs)]


# ---- training ------------------------------------------------------------------------------------

def _autocast(device: torch.device, dtype: str):
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _graph_supported(device: torch.device, info: DistInfo, stages: list) -> bool:
    return device.type == "cuda" and not info.enabled and len(stages) == 1


class _GraphStep:
    """Forward + loss + backward of one (micro_batch, seq_len) batch captured in a CUDA graph.

    The tiny preset on a GPU is host-bound (hundreds of kernel launches per step, each costing host
    time); a replay is one launch. The gradients are the graph's own tensors (captured with p.grad
    None, rewritten by every replay, never zeroed or freed afterwards); clipping and the optimizer run
    eagerly on them. Warm-up runs compile the Triton kernels first. The first replay is checked against
    an eager forward + backward of the same batch (loss and gradients); on a mismatch or a capture
    error the caller goes back to eager steps.
    """

    def __init__(self, model, params: list, x: torch.Tensor, use_bf16: bool, warmup: int = 2):
        self.model, self.params, self.use_bf16 = model, params, use_bf16
        self.x = x.clone()
        self.checked = False
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._fwd_bwd()
                for p in params:
                    p.grad = None
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._fwd_bwd()
        self.grad_ptrs = [p.grad.data_ptr() for p in params]

    def _fwd_bwd(self) -> torch.Tensor:
        # autocast's weight-cast cache must be off under capture (the casts belong in the graph)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if self.use_bf16 else nullcontext()
        with ctx:
            logits = self.model(self.x).logits
        loss = lm_loss(logits, self.x)
        loss.backward()
        return loss.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x, non_blocking=True)
        self.graph.replay()
        loss = self.loss.clone()
        if not self.checked:
            self.checked = True
            graph_grads = [p.grad.clone() for p in self.params]
            for p in self.params:
                p.grad.zero_()
            eager_loss = self._fwd_bwd()
            num = sum(float((g - p.grad).float().norm()) ** 2 for g, p in zip(graph_grads, self.params)) ** 0.5
            den = sum(float(p.grad.float().norm()) ** 2 for p in self.params) ** 0.5
            if not (abs(float(loss) - float(eager_loss)) <= 1e-2 * abs(float(eager_loss)) and num <= 2e-2 * den):
                raise RuntimeError(f"the graph's loss {float(loss):.5f} / gradients (relative difference "
                                   f"{num / max(den, 1e-30):.2e}) differ from eager ({float(eager_loss):.5f})")
            if [p.grad.data_ptr() for p in self.params] != self.grad_ptrs:
                raise RuntimeError("the eager check moved the gradient tensors")
            for g, p in zip(graph_grads, self.params):
                p.grad.copy_(g)
        return loss


@torch.no_grad()
def evaluate(model, batches, device, autocast, info: DistInfo) -> dict:
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for x in batches:
        x = x.to(device, non_blocking=True)
        with autocast():
            logits = model(x).logits
        s, c = lm_loss(logits, x, reduction="sum")
        total += s.double()
        count += c.double()
    if info.enabled:
        import torch.distributed as dist

        stacked = torch.stack([total, count])
        dist.all_reduce(stacked)
        total, count = stacked[0], stacked[1]
    model.train(was_training)
    loss = (total / count.clamp(min=1)).item()
    return {"val_loss": loss, "val_bpb": loss / LN2, "val_tokens": int(count.item())}


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) pretraining. Returns {"losses": [per-step train loss], "val": [...], "out": dir,
    "checkpoint": last checkpoint dir, "step": final step}."""
    cfg.validate()
    from hybridna_kernels.utils import backend as kernel_backend

    info = init_distributed(cfg.device)
    try:
        with kernel_backend(cfg.kernel_backend):
            return _train(cfg, info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    device = info.device
    torch.manual_seed(cfg.seed)

    # Resume: the model comes back from the checkpoint's weights, the rest from train_state.pt.
    resume_dir = None
    if cfg.resume:
        resume_dir = latest_checkpoint(ckpt_root) if cfg.resume is True else Path(cfg.resume)
        if resume_dir is None and info.is_main:
            print(f"[pretrain] no checkpoint under {ckpt_root}: starting from scratch")
    if resume_dir is not None:
        from hybridna.model import HybriDNA

        model = HybriDNA.from_pretrained(resume_dir)
    else:
        # Built on the training device: initialising a 7b model on the CPU takes minutes. Every rank
        # draws the same initial weights (same seed), which FSDP2 relies on when it keeps its shard.
        with torch.device(device):
            model = build_model(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(device)
    model.train()

    strategy = cfg.strategy
    if strategy == "auto":
        preset = cfg.model if isinstance(cfg.model, str) else (cfg.model or {}).get("preset")
        strategy = "fsdp" if (preset in _FSDP_PRESETS or n_params > 1.5e9) else "ddp"
    if cfg.mlp_recompute is not None:
        model.set_mlp_recompute(cfg.mlp_recompute)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    wrapped = wrap_model(model, info, strategy=strategy, param_dtype=torch.bfloat16 if use_bf16 else None)
    fsdp = info.enabled and strategy == "fsdp"
    base = unwrap_model(wrapped)
    optimizer = make_optimizer(wrapped, cfg, fused=(device.type == "cuda" and not fsdp))
    fwd_model = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = _autocast(device, cfg.dtype)
    if cfg.keep_best and fsdp:
        raise ValueError("keep_best: not with FSDP (the best weights are kept as a full copy)")

    stages = parse_context_schedule(cfg.context_schedule, default_seq_len=cfg.seq_len)
    sched = ContextSchedule(stages, micro_batch=cfg.micro_batch, grad_accum=cfg.grad_accum)
    use_graph = cfg.cuda_graph
    if use_graph and not _graph_supported(device, info, stages):
        raise ValueError("cuda_graph: needs one CUDA device (no torchrun) and one context length")
    graph_step: _GraphStep | None = None
    total_steps = cfg.steps if cfg.steps is not None else sched.total_steps()
    if total_steps < 1:
        raise ValueError("steps: give --steps or a context schedule with step counts")
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    tokens_per_step = sched.tokens_per_step * info.world_size
    holdout = _holdout(cfg.data, cfg.val_frac)
    val_seq = cfg.val_seq_len or stages[0].seq_len
    val_batches = _val_batches(cfg, val_seq, holdout) if cfg.val_frac > 0 else []
    if cfg.val_frac > 0 and not val_batches and info.is_main:
        print(f"[pretrain] no contig tail holds a {val_seq}-base window: validation is off")
    # Each rank evaluates its share of the held-out windows; the sums are all-reduced.
    val_batches = val_batches[info.rank::info.world_size]

    step = 0
    loaders: dict[int, _Batches] = {}
    losses: list[float] = []
    val_hist: list[dict] = []
    if resume_dir is not None:
        state = load_train_state(resume_dir / "train_state.pt")
        step = int(state["step"])
        losses = [float(x) for x in state.get("losses", [])]
        val_hist = list(state.get("val", []))
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(wrapped, optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        data_file = resume_dir / f"data_state.rank{info.rank}.json"
        if data_file.exists():
            for k, st in load_json(data_file).items():
                stage = int(k)
                loaders[stage] = _Batches(cfg, stages[stage].seq_len, info, stage, holdout)
                loaders[stage].load_state_dict(st)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "train_config.json", dataclasses.asdict(cfg))
    log = MetricsLog(out / "metrics.jsonl", truncate_after_step=step) if info.is_main else None

    def loader(stage: int) -> _Batches:
        if stage not in loaders:
            loaders[stage] = _Batches(cfg, stages[stage].seq_len, info, stage, holdout)
        return loaders[stage]

    def save(step_now: int) -> Path:
        import torch.distributed as dist

        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model_sd, optim_sd = get_state_dict(wrapped, optimizer,
                                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            model_sd, optim_sd = None, optimizer.state_dict()
        data_states = {str(k): v.state_dict() for k, v in loaders.items()}
        rngs = [rng_state()]
        all_data = [data_states]
        if info.enabled:
            all_data = [None] * info.world_size
            dist.all_gather_object(all_data, data_states)
            rngs = [None] * info.world_size
            dist.all_gather_object(rngs, rng_state())
        path = ckpt_root / checkpoint_name(step_now)
        if info.is_main:
            with atomic_dir(path) as tmp:
                if fsdp:
                    from hybridna.model import HybriDNA

                    plain = HybriDNA(base.config)
                    plain.load_state_dict(model_sd)
                    plain.save_pretrained(tmp)
                else:
                    base.save_pretrained(tmp)
                save_train_state(tmp / "train_state.pt", {
                    "step": step_now, "optimizer": optim_sd, "rng": rngs, "losses": list(losses), "val": val_hist,
                    "tokens_per_step": tokens_per_step, "world_size": info.world_size})
                for r, ds in enumerate(all_data):
                    save_json(tmp / f"data_state.rank{r}.json", ds)
                save_json(tmp / "train_config.json", dataclasses.asdict(cfg))
            mark_latest(ckpt_root, path.name)
            prune_checkpoints(ckpt_root, cfg.keep_checkpoints)
        if info.enabled:
            dist.barrier()
        return path

    peak = peak_flops(device, cfg.peak_tflops)
    flops_cache: dict[int, float] = {}
    if info.is_main:
        print(f"[pretrain] {n_params / 1e6:.2f}M parameters, {info.world_size} x {device.type}"
              f"{' (' + strategy + ')' if info.enabled else ''}, {'bf16' if use_bf16 else 'fp32'}, "
              f"{tokens_per_step} tokens/step, {total_steps} steps, context {cfg.context_schedule or cfg.seq_len}")
    bar = tqdm(total=total_steps, initial=step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True,
               mininterval=1.0, desc="pretrain")
    last_ckpt = resume_dir
    tok_last = 0
    stop = total_steps if cfg.stop_at is None else min(cfg.stop_at, total_steps)
    if cfg.eval_at_start and step == 0 and val_batches:
        v = evaluate(fwd_model, val_batches, device, autocast, info)
        v.update(kind="val", step=0, tokens=0)
        val_hist.append(v)
        if log:
            log.log(v)
        if info.is_main:
            bar.write(f"[pretrain] step 0: validation loss {v['val_loss']:.4f}, {v['val_bpb']:.4f} bits per base")
    best = {"step": None, "val_bpb": math.inf, "state": None}

    def note_best(v: dict, step_now: int) -> None:
        if cfg.keep_best and v["val_bpb"] < best["val_bpb"]:
            best.update(step=step_now, val_bpb=v["val_bpb"],
                        state={k: t.detach().to("cpu", copy=True) for k, t in base.state_dict().items()})

    if val_hist and resume_dir is None:
        note_best(val_hist[-1], 0)
    t_start = time.perf_counter()
    t_last = t_start
    t_paused = 0.0          # validation and checkpoint time inside the loop
    t_first = None          # the first step's time (kernel compiles, graph capture)
    step0 = step
    pending: list[torch.Tensor] = []  # per-step losses not yet read back from the device
    while step < stop:
        stage = sched.stage_index(step)
        seq_len, micro, accum = sched.at(step)
        lr = lr_at(step, max_lr=cfg.lr, min_lr=min_lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        src = loader(stage)
        x_drawn = None  # a batch drawn for a graph step that fell back to eager: the eager step trains on it
        if use_graph:
            x = src.next(micro).to(device, non_blocking=True)
            try:
                if graph_step is None:
                    graph_step = _GraphStep(wrapped, [p for p in wrapped.parameters() if p.requires_grad], x, use_bf16)
                loss_acc = graph_step(x)
            except Exception as e:  # noqa: BLE001 - any capture failure: go on eagerly
                if info.is_main:
                    bar.write(f"[pretrain] CUDA graph off ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                              "eager steps")
                use_graph, graph_step = False, None
                try:
                    torch.cuda.synchronize(device)
                except Exception:  # noqa: BLE001 - an error the eager step will raise again if it is real
                    pass
                optimizer.zero_grad(set_to_none=True)
                x_drawn = x
        if not use_graph:
            loss_acc = torch.zeros((), device=device)
        for k in range(0 if use_graph else accum):
            x = x_drawn if (k == 0 and x_drawn is not None) else src.next(micro).to(device, non_blocking=True)
            sync = (k == accum - 1)
            ctx = wrapped.no_sync() if (info.enabled and not fsdp and not sync) else nullcontext()
            if fsdp:
                wrapped.set_requires_gradient_sync(sync)
            with ctx:
                with autocast():
                    logits = fwd_model(x).logits
                loss = lm_loss(logits, x)
                (loss / accum).backward()
            loss_acc += loss.detach() / accum
        if cfg.grad_clip and cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            if hasattr(gnorm, "full_tensor"):
                gnorm = gnorm.full_tensor()
        else:
            gnorm = torch.zeros(())
        optimizer.step()
        if not use_graph:  # the graph's gradient tensors stay (each replay rewrites them)
            optimizer.zero_grad(set_to_none=True)
        step += 1
        if t_first is None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_first = time.perf_counter() - t_start
        tok_last += tokens_per_step
        pending.append(loss_acc)
        bar.update(1)
        if cfg.time_limit_s is not None and step < stop and (step % cfg.log_every == 0 or not info.enabled):
            # Rank 0's clock decides, at the same step on every rank (the broadcast is collective).
            over = broadcast_object(time.perf_counter() - t_start > cfg.time_limit_s, info)
            if over:
                if info.is_main:
                    bar.write(f"[pretrain] time limit of {cfg.time_limit_s:.0f} s reached: stopping at step {step}")
                stop = step
        final = step == stop
        if step % cfg.log_every == 0 or final or step % cfg.save_every == 0:
            # One host sync (and one all-reduce) per log interval, not per step.
            vals = all_reduce_mean(torch.stack(pending), info).tolist()
            pending.clear()
            losses.extend(vals)
            if not all(math.isfinite(v) for v in vals):
                raise FloatingPointError(f"loss is not finite ({vals[-1]}) at or before step {step}")
            loss_val = vals[-1]
        if step % cfg.log_every == 0 or final:
            dt = time.perf_counter() - t_last
            tps = tok_last / max(dt, 1e-9)
            if seq_len not in flops_cache:
                flops_cache[seq_len] = model_flops_per_token(base, seq_len)
            m = mfu(flops_cache[seq_len], tps, peak, info.world_size)
            rec = {"kind": "train", "step": step, "tokens": step * tokens_per_step, "loss": loss_val,
                   "bpb": loss_val / LN2, "lr": lr, "grad_norm": float(gnorm), "seq_len": seq_len,
                   "tokens_per_s": tps, "mfu": m}
            if device.type == "cuda":
                rec["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            if log:
                log.log(rec)
            post = {"loss": f"{loss_val:.4f}", "tok/s": f"{tps:,.0f}"}
            if m is not None:
                post["MFU"] = f"{100 * m:.1f}%"
            bar.set_postfix(post, refresh=False)
            t_last, tok_last = time.perf_counter(), 0
        t_pause = time.perf_counter()
        if val_batches and (step % cfg.val_every == 0 or final):
            v = evaluate(fwd_model, val_batches, device, autocast, info)
            v.update(kind="val", step=step, tokens=step * tokens_per_step)
            val_hist.append(v)
            note_best(v, step)
            if log:
                log.log(v)
            if info.is_main:
                bar.write(f"[pretrain] step {step}: validation loss {v['val_loss']:.4f}, "
                          f"{v['val_bpb']:.4f} bits per base")
        if step % cfg.save_every == 0 or final:
            last_ckpt = save(step)
        paused = time.perf_counter() - t_pause
        t_last += paused  # tokens/s counts training time only
        t_paused += paused
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_loop = time.perf_counter() - t_start
    bar.close()
    # Timing of this call's steps: the whole loop, its training part (validation and checkpoints
    # excluded), and the steps after the first (which compiles kernels / captures the graph).
    n_steps = step - step0
    t_train = t_loop - t_paused
    t_rest = t_train - (t_first or 0.0)
    timing = {"steps": n_steps, "tokens": n_steps * tokens_per_step, "loop_s": t_loop, "train_s": t_train,
              "first_step_s": t_first, "tokens_per_s": n_steps * tokens_per_step / max(t_train, 1e-9),
              "steady_tokens_per_s": ((n_steps - 1) * tokens_per_step / t_rest) if n_steps > 1 and t_rest > 0 else None,
              "cuda_graph": bool(use_graph)}
    best_info = None
    if cfg.keep_best and best["state"] is not None:
        best_info = {"step": best["step"], "val_bpb": best["val_bpb"]}
        if val_hist and best["step"] != val_hist[-1]["step"]:
            base.load_state_dict(best["state"])
            if info.is_main:
                print(f"[pretrain] kept the weights of step {best['step']} (best validation, "
                      f"{best['val_bpb']:.4f} bits per base); the last checkpoint holds step {step}'s")
    if log:
        log.close()
        if cfg.plot:
            plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    return {"losses": losses, "val": val_hist, "out": str(out), "checkpoint": str(last_ckpt) if last_ckpt else None,
            "step": step, "n_params": n_params, "model": base, "timing": timing, "best": best_info}


# ---- CLI -----------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # unset flags leave the config file's (or the dataclass's) value alone
    p.add_argument("--config", help="JSON file with any TrainConfig keys (flags override it)")
    p.add_argument("--preset", dest="model", default=S, metavar="NAME", help="model preset: tiny, 300m, 3b, 7b (default tiny)")
    p.add_argument("--model-config", dest="model", default=S, metavar="JSON", help="JSON file of HybriDNAConfig fields")
    p.add_argument("--data", nargs="+", default=S, metavar="STORE", help="Zarr token stores (hybridna data build)")
    p.add_argument("--out", default=S, help="run directory: metrics.jsonl, loss_curve.png, checkpoints/")
    p.add_argument("--steps", type=int, default=S, help="optimizer steps")
    p.add_argument("--seq-len", type=int, default=S, help="context length (default 1024)")
    p.add_argument("--context-schedule", default=S, help='e.g. "8192:1000,32768:500" (constant tokens per step)')
    p.add_argument("--micro-batch", type=int, default=S, help="windows per micro-step per rank (default 8)")
    p.add_argument("--grad-accum", type=int, default=S, help="micro-steps per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate (default 3e-4)")
    p.add_argument("--min-lr", type=float, default=S, help="final learning rate (default lr/10)")
    p.add_argument("--warmup-steps", type=int, default=S)
    p.add_argument("--weight-decay", type=float, default=S)
    p.add_argument("--grad-clip", type=float, default=S)
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--rc-prob", type=float, default=S, help="reverse-complement augmentation probability")
    p.add_argument("--val-frac", type=float, default=S, help="held-out tail of each contig (default 0.02)")
    p.add_argument("--val-windows", type=int, default=S)
    p.add_argument("--val-every", type=int, default=S)
    p.add_argument("--log-every", type=int, default=S)
    p.add_argument("--save-every", type=int, default=S)
    p.add_argument("--keep-checkpoints", type=int, default=S)
    p.add_argument("--resume", nargs="?", const=True, default=S,
                   help="continue from the latest checkpoint under --out (or the checkpoint directory given)")
    p.add_argument("--stop-at", type=int, default=S, help="stop with a checkpoint after this step (schedule unchanged)")
    p.add_argument("--time-limit", dest="time_limit_s", type=float, default=S,
                   help="seconds of training after which to stop (validated and checkpointed)")
    p.add_argument("--eval-at-start", action="store_true", default=S, help="validate the untrained model too")
    p.add_argument("--keep-best", action="store_true", default=S,
                   help="end with the weights of the best validation (the returned / reported model)")
    p.add_argument("--cuda-graph", action="store_true", default=S,
                   help="replay forward + backward from a CUDA graph (one GPU, one context length; eager on failure)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=S)
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default=S)
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    p.add_argument("--activation-checkpointing", action="store_true", default=S)
    p.add_argument("--mlp-recompute", type=float, default=S, metavar="FRACTION",
                   help="recompute the MLP's gate_up in the backward in this fraction of the blocks: 1 (default) saves "
                        "memory, 0 is faster where memory allows")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"], default=S, help="multi-GPU (torchrun) wrapping")
    p.add_argument("--kernel-backend", choices=["auto", "reference", "triton"], default=S)
    p.add_argument("--peak-tflops", type=float, default=S, help="device peak for MFU when not known")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    p.add_argument("--no-plot", dest="plot", action="store_false", default=S)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    d = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "config")}
    if getattr(args, "config", None):
        return TrainConfig.from_json(args.config, **d)
    return TrainConfig.from_dict(d)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    res = train(cfg)
    if res["val"] and int(os.environ.get("RANK", "0")) == 0:
        v = res["val"][-1]
        print(f"[pretrain] done: step {res['step']}, validation {v['val_bpb']:.4f} bits per base; "
              f"checkpoint {res['checkpoint']}")
    return 0
