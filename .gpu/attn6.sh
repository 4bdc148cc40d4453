#!/bin/bash
# attn6 (issue 10: the attention backward in the 300m training step), <= 110 s wall on one H100/H200:
# 10 processes compile every (head layout, dk/dv variant) at L4096 into a shared Triton cache (<= 40 s), then
# .gpu/attn6.py checks each variant (fp32 reference at L4096, the default at the timed shape) and times backward
# alone / forward + backward interleaved with SDPA cuDNN, model shape (B1 Hq16:Hkv4 L32768 D64) first, until
# ATTN6_S (default 100) s after this script's start. Output: stdout and $OUT/attn6.txt.
exec bash "$(dirname "$0")/attnrun.sh" attn6 10
