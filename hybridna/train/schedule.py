"""Learning-rate and context-length schedules (pure functions of the step: nothing to checkpoint but it)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["lr_at", "ContextStage", "parse_context_schedule", "ContextSchedule"]


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from max_lr / warmup_steps to max_lr, then cosine decay to min_lr at total_steps.

    step counts optimizer steps from 0; the first step already gets a non-zero rate. Past total_steps
    the rate stays at min_lr.
    """
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    span = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@dataclass(frozen=True)
class ContextStage:
    seq_len: int
    steps: int  # optimizer steps at this context length; the last stage also runs any steps past the sum


def parse_context_schedule(spec: str | None, *, default_seq_len: int | None = None) -> list[ContextStage]:
    """"8192:1000,32768:500" -> [ContextStage(8192, 1000), ContextStage(32768, 500)].

    A bare "8192" (no ":steps") means one stage for the whole run. None or "" gives one stage at
    default_seq_len.
    """
    if not spec:
        if default_seq_len is None:
            raise ValueError("context_schedule: empty and no seq_len given")
        return [ContextStage(int(default_seq_len), 0)]
    stages = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, b = part.split(":")
                stage = ContextStage(int(a), int(b))
            else:
                stage = ContextStage(int(part), 0)
        except ValueError:
            raise ValueError(f"context_schedule: expected 'LEN:STEPS,LEN:STEPS,...', got {spec!r}") from None
        if stage.seq_len < 2 or stage.steps < 0:
            raise ValueError(f"context_schedule: lengths must be >= 2 and steps >= 0, got {part!r}")
        stages.append(stage)
    if not stages:
        raise ValueError(f"context_schedule: no stages in {spec!r}")
    return stages


class ContextSchedule:
    """Which context length and batch shape each optimizer step uses, at constant tokens per step.

    The first stage fixes the token budget: `micro_batch` sequences of `stages[0].seq_len` tokens per
    micro-step and `grad_accum` micro-steps per optimizer step (per rank). A longer context keeps the
    tokens per micro-step (the activation memory) by dividing the micro-batch; once that is down to
    one window the accumulation steps grow. Every optimizer step sees the same number of tokens, so
    the learning-rate schedule means the same thing across stages.
    """

    def __init__(self, stages: list[ContextStage], *, micro_batch: int, grad_accum: int = 1):
        if micro_batch < 1:
            raise ValueError(f"micro_batch: expected >= 1, got {micro_batch}")
        if grad_accum < 1:
            raise ValueError(f"grad_accum: expected >= 1, got {grad_accum}")
        self.stages = list(stages)
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self.tokens_per_step = micro_batch * grad_accum * self.stages[0].seq_len  # per rank
        for s in self.stages:
            self.shape(s.seq_len)  # validate divisibility up front, not hours into a run

    def shape(self, seq_len: int) -> tuple[int, int]:
        """(micro_batch, grad_accum) for seq_len at the token budget of the first stage."""
        tokens = self.tokens_per_step
        if tokens % seq_len:
            raise ValueError(
                f"context_schedule: {seq_len} does not divide the tokens per step ({tokens} = micro_batch "
                f"{self.micro_batch} x grad_accum {self.grad_accum} x seq_len {self.stages[0].seq_len})")
        seqs = tokens // seq_len
        # Same tokens per micro-step as the first stage (same activation memory), at least 1 window.
        micro = min(max(1, self.micro_batch * self.stages[0].seq_len // seq_len), seqs)
        while seqs % micro:
            micro -= 1
        return micro, seqs // micro

    def stage_index(self, step: int) -> int:
        end = 0
        for i, s in enumerate(self.stages[:-1]):
            end += s.steps
            if step < end:
                return i
        return len(self.stages) - 1

    def at(self, step: int) -> tuple[int, int, int]:
        """(seq_len, micro_batch, grad_accum) for optimizer step `step` (0-based)."""
        seq_len = self.stages[self.stage_index(step)].seq_len
        return (seq_len, *self.shape(seq_len))

    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
