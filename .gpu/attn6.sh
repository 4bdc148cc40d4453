#!/bin/bash
# attn6 (issue 10: the attention backward in the 300m training step), <= 110 s wall on one H100/H200:
# 10 processes compile every (head layout, dk/dv variant) at L4096 into a shared Triton cache (<= 40 s), then
# .gpu/attn6.py checks each variant (fp32 reference at L4096, the default at the timed shape) and times backward
# alone / forward + backward interleaved with SDPA cuDNN, model shape (B1 Hq16:Hkv4 L32768 D64) first, until
# ATTN6_S (default 100) s after this script's start. Output: stdout and $OUT/attn6.txt.
set -u
OUT=${OUT:-/tmp/attn6-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_attn6_cache}
S=${ATTN6_S:-100}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | head -1
echo "commit $(git rev-parse --short HEAD 2>/dev/null)"
N=10
for i in $(seq 0 $((N - 1))); do timeout 40 python3 .gpu/attn6.py warm $i $N > "$OUT/warm$i.txt" 2>&1 & done
wait
echo "warm-up done at $(el) s; $(cat "$OUT"/warm*.txt | grep -c .) lines of warm-up output:"
cat "$OUT"/warm*.txt | grep -v Warning | cut -c1-200 | sort | uniq -c | head -6
rm -f "$OUT"/warm*.txt
ATTN6_WARM_S=$(el) ATTN6_S=$S timeout -k 2 $(( S + 5 - $(el) )) python3 .gpu/attn6.py 2>&1 | tee "$OUT/attn6.txt"
echo "attn6.py rc=${PIPESTATUS[0]} at $(el) s"
