#!/bin/bash
# attn7 (issue 10: the attention backward): the dq options (dq_opt, a register cap) and DKDV_FAST's extensions
# (dkdv_fast=mha,d128) against the defaults, <= ATTN7_S (default 100) s wall on one H100/H200: 16 processes
# compile every (head layout, variant) at L4096 into a shared Triton cache (<= 40 s), then .gpu/attn7.py checks
# each variant (fp32 reference at L4096, the default at the timed shape) and times backward / dq alone /
# forward + backward interleaved: model shape (B1 Hq16:Hkv4 L32768 D64), MHA B8 H16 L8192 D64, B1 H8 L32768
# D128, then (budget left) a ragged L30000 and a short L2048 shape. Output: stdout and $OUT/attn7.txt.
exec bash "$(dirname "$0")/attnrun.sh" attn7 16
