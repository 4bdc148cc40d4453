#!/bin/bash
# attn7 (issue 10: the attention backward): the dq options (dq_opt, a register cap) and DKDV_FAST's extensions
# (dkdv_fast=mha,d128) against the defaults, <= ATTN7_S (default 100) s wall on one H100/H200: 16 processes
# compile every (head layout, variant) at L4096 into a shared Triton cache (<= 40 s), then .gpu/attn7.py checks
# each variant (fp32 reference at L4096, the default at the timed shape) and times backward / dq alone /
# forward + backward interleaved: model shape (B1 Hq16:Hkv4 L32768 D64), MHA B8 H16 L8192 D64, B1 H8 L32768
# D128, then (budget left) a ragged L30000 and a short L2048 shape. Output: stdout and $OUT/attn7.txt.
set -u
OUT=${OUT:-/tmp/attn7-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_attn7_cache}
S=${ATTN7_S:-100}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | head -1
echo "commit $(git rev-parse --short HEAD 2>/dev/null)"
N=16
for i in $(seq 0 $((N - 1))); do timeout 40 python3 .gpu/attn7.py warm $i $N > "$OUT/warm$i.txt" 2>&1 & done
wait
echo "warm-up done at $(el) s; $(cat "$OUT"/warm*.txt | grep -c .) lines of warm-up output:"
cat "$OUT"/warm*.txt | grep -v Warning | cut -c1-200 | sort | uniq -c | head -6
rm -f "$OUT"/warm*.txt
ATTN7_WARM_S=$(el) ATTN7_S=$S timeout -k 2 $(( S + 5 - $(el) )) python3 .gpu/attn7.py 2>&1 | tee "$OUT/attn7.txt"
echo "attn7.py rc=${PIPESTATUS[0]} at $(el) s"
