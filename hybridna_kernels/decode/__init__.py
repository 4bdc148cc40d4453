"""Decode-only kernels (batch-1 generation, issue 6): a GEMV with the step's norms, SwiGLU, residual
adds, conv step and K/V cache writes fused in (gemv.py), and an attention step whose cache length is
read from a device tensor, so a whole decode step is one CUDA graph (attention.py). References in
naive.py. Kernels run on CUDA or through the interpreter; callers choose the path (no fallback here)."""
from .attention import attention_step
from .gemv import decode_gemv, gemv_config
from .naive import attention_step_ref, decode_gemv_ref
from .sample import sample_step

__all__ = ["decode_gemv", "gemv_config", "attention_step", "decode_gemv_ref", "attention_step_ref", "sample_step"]
