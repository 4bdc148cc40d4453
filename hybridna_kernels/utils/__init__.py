"""Shared helpers for the kernels: dispatch, input checks, output allocation, autotune configs."""
from __future__ import annotations

import contextlib
import functools
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
    "num_sms",
    "FLOAT_DTYPES",
    "GradSlab",
    "GradDest",
    "grad_slabs",
    "grad_dest",
    "take_dest",
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


def next_pow2(n: int) -> int:
    """triton.next_power_of_2 for host code (0 -> 0, 1 -> 1, 5 -> 8), in plain Python: Triton's is a
    constexpr_function whose wrapper costs ~7 us per call on the CI machine (0.4 us here), and launchers
    call it on every launch."""
    n = int(n)
    return 1 << (n - 1).bit_length() if n > 0 else 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached per device: the property query costs host time, and
    launchers size their grids with it on every call)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


LOG2E = math.log2(math.e)


# ---- gradients written into slices of one buffer (issue 10: no backward cats) ----------------------
# A caller that splits one tensor (say a projection's output) into pieces for several ops can register
# it as a GradSlab: while `grad_slabs(...)` is active, an op's eager forward asks `grad_dest(t)` for each
# input; if t's memory is exactly one registered piece, its backward writes t's gradient into the same
# place of a mirror buffer (one per slab and backward pass, laid out like the registered tensor) instead
# of a new tensor, and the caller's split backward finds the pieces' gradients already side by side
# (GradSlab.assemble): no cat. Every piece is handed out once per buffer; a second request for it (a
# second backward pass, or two ops on the same piece) starts a new buffer, so nothing is overwritten,
# and assemble then falls back to the cat.

def _canon(t: torch.Tensor):
    """The set of storage elements a strided tensor covers, in a layout-independent form."""
    dims = sorted(((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1), reverse=True)
    out = []
    for st, sz in dims:  # merge (outer, inner) where outer stride == inner stride * inner size
        if out and out[-1][0] == st * sz:
            out[-1] = (st, out[-1][1] * sz)
        else:
            out.append((st, sz))
    return t.storage_offset(), tuple(out)


class GradSlab:
    """A tensor (the base) whose pieces' gradients are written into one mirror buffer. Holds only the
    base's address and layout, never the tensor (recompute hooks may free it)."""

    def __init__(self, base: torch.Tensor, pieces: Sequence[torch.Tensor]):
        st = base.untyped_storage()
        self.ptr, self.device, self.dtype = st.data_ptr(), base.device, base.dtype
        self.numel = st.nbytes() // base.element_size()
        self.layout = (tuple(base.shape), tuple(base.stride()), base.storage_offset())
        self.pieces = [_canon(p) for p in pieces]
        self.views = [(tuple(p.shape), tuple(p.stride()), p.storage_offset()) for p in pieces]
        self.buf, self.taken = None, set()

    def dest(self, t: torch.Tensor):
        if t.device != self.device or t.dtype != self.dtype or t.untyped_storage().data_ptr() != self.ptr:
            return None
        c = _canon(t)
        for i, p in enumerate(self.pieces):
            if c == p:
                return GradDest(self, i, tuple(t.shape), tuple(t.stride()), t.storage_offset())
        return None

    def take(self, i: int, shape, stride, offset) -> torch.Tensor:
        """The gradient buffer of piece i (backward), viewed like the forward's input."""
        if self.buf is None or i in self.taken:
            self.buf, self.taken = new_empty((self.numel,), dtype=self.dtype, device=self.device), set()
        self.taken.add(i)
        return self.buf.as_strided(shape, stride, offset)

    def assemble(self, grads) -> torch.Tensor | None:
        """The base's gradient as one view of the buffer when grads (of the registered pieces, in
        order) are exactly its views written by the ops; else None (the caller cats). Releases the
        buffer either way (its memory then lives as long as the returned gradient)."""
        buf, taken = self.buf, self.taken
        self.buf, self.taken = None, set()
        if buf is None or len(taken) != len(self.views):
            return None
        ptr = buf.untyped_storage().data_ptr()
        for g, (shape, stride, off) in zip(grads, self.views):
            if (g is None or g.untyped_storage().data_ptr() != ptr or tuple(g.shape) != shape
                    or tuple(g.stride()) != stride or g.storage_offset() != off or g.dtype != buf.dtype):
                return None
        return buf.as_strided(*self.layout)


class GradDest:
    """Where an op's backward writes the gradient of one input (see GradSlab)."""

    def __init__(self, slab: GradSlab, i: int, shape, stride, offset):
        self.slab, self.i, self.key = slab, i, (shape, stride, offset)

    def take(self) -> torch.Tensor:
        return self.slab.take(self.i, *self.key)


_SLABS: list[GradSlab] = []


@contextlib.contextmanager
def grad_slabs(*slabs: GradSlab):
    """Within this context, ops' eager forwards look up grad_dest for their inputs."""
    _SLABS.extend(slabs)
    try:
        yield
    finally:
        del _SLABS[len(_SLABS) - len(slabs):]


def grad_dest(t: torch.Tensor | None) -> GradDest | None:
    """The GradDest of t when an active GradSlab registers its memory as a piece (forward, eager)."""
    if not _SLABS or t is None or not isinstance(t, torch.Tensor):
        return None
    for s in reversed(_SLABS):
        d = s.dest(t)
        if d is not None:
            return d
    return None


def take_dest(d: GradDest | None, like: torch.Tensor | None = None) -> torch.Tensor | None:
    """Backward: the out tensor for a gradient (None: allocate as usual). With like, only when the
    gradient would have like's shape and dtype."""
    if d is None:
        return None
    shape, _, _ = d.key
    if like is not None and (tuple(like.shape) != shape or like.dtype != d.slab.dtype):
        return None
    return d.take()
