"""Mamba2 SSD (DESIGN.md): `ssd_scan` (chunked scan) and its decode step `ssd_step`.

Dispatch (DESIGN.md): Triton kernels on CUDA, the same kernels through Triton's interpreter on CPU
when TRITON_INTERPRET=1, otherwise the pure-PyTorch chunked reference of naive.py. The maths and the
chunked algorithm are derived in README.md.
"""
from ._api import ssd_scan, ssd_step
from .naive import ssd_chunked_ref, ssd_sequential_ref, ssd_step_ref

__all__ = ["ssd_scan", "ssd_step", "ssd_sequential_ref", "ssd_chunked_ref", "ssd_step_ref"]
