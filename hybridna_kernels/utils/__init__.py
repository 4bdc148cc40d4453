"""Shared helpers for the kernels: dispatch, input checks, output allocation, autotune configs."""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterable, Sequence

import torch
import triton

__all__ = [
    "interpret_mode",
    "use_kernel",
    "backend",
    "get_backend",
    "set_poison",
    "poison_enabled",
    "new_empty",
    "new_empty_like",
    "rows_view",
    "check_tensor",
    "check_same_device",
    "autotune",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpret_mode() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# "auto" follows DESIGN.md's dispatch rule; "reference" forces the pure-PyTorch references (the
# model's CPU tests use it: the interpreter is too slow for whole models); "triton" forces kernels.
_BACKEND = os.environ.get("HYBRIDNA_BACKEND", "auto")
_BACKENDS = ("auto", "reference", "triton")


def get_backend() -> str:
    return _BACKEND


@contextlib.contextmanager
def backend(name: str):
    """Temporarily choose the op backend: "auto", "reference" or "triton"."""
    global _BACKEND
    if name not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {name!r}")
    old, _BACKEND = _BACKEND, name
    try:
        yield
    finally:
        _BACKEND = old


def use_kernel(*tensors: torch.Tensor | None) -> bool:
    """Dispatch rule of DESIGN.md: Triton on CUDA, the interpreter on CPU when TRITON_INTERPRET=1,
    otherwise the pure-PyTorch reference. `backend(...)` / HYBRIDNA_BACKEND override it."""
    if _BACKEND == "reference":
        return False
    if _BACKEND == "triton":
        return True
    for t in tensors:
        if t is not None:
            return t.is_cuda or interpret_mode()
    return False


# Tests fill every new output buffer with NaN so an element a kernel forgets to write fails loudly.
_POISON = os.environ.get("HYBRIDNA_POISON", "0") == "1"


def set_poison(flag: bool) -> None:
    global _POISON
    _POISON = bool(flag)


def poison_enabled() -> bool:
    return _POISON


def new_empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """torch.empty for kernel outputs; NaN-filled when poisoning is on (tests)."""
    t = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _POISON and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def new_empty_like(t: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return new_empty(t.shape, dtype=dtype or t.dtype, device=t.device)


def rows_view(t: torch.Tensor, n: int, any_col_stride: bool = False) -> torch.Tensor:
    """(..., n) -> (M, n) for row-wise kernels: a view with unit stride along n unless any_col_stride
    (incoming gradients, such as the stride-0 expansion of a sum's gradient, are read in place); a
    copy only when no such view exists (leading dims that do not merge)."""
    if t.stride(-1) != 1 and not any_col_stride:
        t = t.contiguous()
    try:
        return t.view(-1, n)
    except RuntimeError:
        return t.reshape(-1, n)


def _fmt_dtypes(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    min_len: dict[int, int] | None = None,
    contiguous_dims: Sequence[int] = (),
) -> None:
    """Raise ValueError naming `name` and what was expected when `t` does not fit.

    shape: expected sizes, None where any size goes (also fixes the rank).
    contiguous_dims: dimensions that must have stride 1.
    min_len: {dim: minimum size}, for example {1: 1} to refuse empty sequences.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")" if shape is not None else ""
        raise ValueError(f"{name}: expected a {ndim}-d tensor {want}, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is not None and want != got:
                exp = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
                raise ValueError(f"{name}: expected shape {exp}, got {tuple(t.shape)} (dim {i})")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {_fmt_dtypes(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    for d, n in (min_len or {}).items():
        if t.shape[d] < n:
            raise ValueError(f"{name}: dim {d} must have at least {n} elements, got shape {tuple(t.shape)}")
    for d in contiguous_dims:
        if t.shape[d] > 1 and t.stride(d) != 1:
            raise ValueError(f"{name}: dim {d} must be contiguous (stride 1), got strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    devs = {k: v.device for k, v in tensors.items() if v is not None}
    ref_name, ref = next(iter(devs.items()))
    for k, d in devs.items():
        if d != ref:
            raise ValueError(f"{k}: expected a tensor on {ref} (like {ref_name}), got {d}")
    return ref


def autotune(configs: list, key: list[str], **kwargs):
    """triton.autotune that keeps only the first config under the interpreter, where timing the
    configs fails ("0 active drivers"). Put the config that is correct everywhere first."""
    if interpret_mode():
        configs = configs[:1]
    return triton.autotune(configs=configs, key=key, **kwargs)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


LOG2E = math.log2(math.e)
