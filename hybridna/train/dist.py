"""Process groups and model wrapping, applied from the training code (the model knows nothing of them).

One script runs everywhere: `python -m hybridna.cli pretrain ...` is a single process (CPU or one
GPU); `torchrun --nproc_per_node=8 -m hybridna.cli pretrain ...` sets RANK / WORLD_SIZE / LOCAL_RANK
and the same code trains data-parallel with DDP, or fully sharded with FSDP2 (`fully_shard`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "find_blocks", "apply_activation_checkpointing",
           "wrap_model", "unwrap_model", "all_reduce_mean", "broadcast_object"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, *, backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK), or run alone.

    device: "cpu", "cuda" or None (CUDA when available). Backend: nccl on CUDA, gloo on CPU.
    """
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but torch.cuda.is_available() is False")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if want == "cuda":
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if want == "cuda" else "gloo")
        kw = {"device_id": dev} if want == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's residual blocks: the longest nn.ModuleList in it (model.layers / model.blocks)."""
    best = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and (best is None or len(m) > len(best)):
            best = m
    if best is None:
        raise ValueError("model: found no nn.ModuleList of blocks to wrap")
    return list(best)


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> int:
    """Recompute each block's activations in the backward pass instead of storing them.

    The block's `forward` is wrapped in place (non-reentrant torch.utils.checkpoint), so parameter
    names and state dicts are unchanged. every=2 checkpoints every other block. Returns the count.
    """
    from torch.utils.checkpoint import checkpoint

    n = 0
    for i, block in enumerate(find_blocks(model)):
        if i % every:
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        n += 1
    return n


def wrap_model(model: nn.Module, info: DistInfo, *, strategy: str = "ddp", param_dtype: torch.dtype | None = None):
    """DDP or FSDP2 across the process group (no-op for a single process).

    strategy: "ddp" (replicated weights, all-reduced gradients) or "fsdp" (FSDP2: each block and then
    the root sharded with `fully_shard`; with param_dtype=bf16 the gathered weights and the
    reduce-scatter run in bf16 while the master weights and optimizer state stay fp32).
    """
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy: expected 'ddp' or 'fsdp', got {strategy!r}")
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The logits are a slice (padded vocabulary) of the head's output; nothing modifies them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    blocks = find_blocks(model)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (FSDP2 shards in place: same module)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
