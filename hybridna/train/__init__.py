"""Training: `pretrain` (next-token pretraining on Zarr shards) and `finetune` (echo-embedding heads,
prompt-token generation). Helpers: schedule (LR, context length), checkpoint (atomic, exact resume),
metrics (JSONL, loss curve, MFU), dist (DDP / FSDP2 / activation checkpointing)."""
from .schedule import ContextSchedule, lr_at, parse_context_schedule

__all__ = ["ContextSchedule", "lr_at", "parse_context_schedule"]
