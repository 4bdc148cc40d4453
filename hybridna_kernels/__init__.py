"""hybridna_kernels: Triton kernels for hybrid Mamba2 + attention models.

Public ops (see each op folder's naive.py for the plain PyTorch definition):
    ssd_scan, ssd_step                  Mamba2 SSD chunked scan and its decode step
    causal_conv1d, causal_conv1d_step   causal depthwise conv1d and its decode step
    flash_attention                     causal / sliding-window / GQA / varlen attention
"""
from .attention import flash_attention
from .conv1d import causal_conv1d, causal_conv1d_step
from .ssd import ssd_scan, ssd_step

__all__ = ["ssd_scan", "ssd_step", "causal_conv1d", "causal_conv1d_step", "flash_attention"]
__version__ = "0.1.0"
