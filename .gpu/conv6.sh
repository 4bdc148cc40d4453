#!/bin/bash
# conv1d (issue 3) session 5 (<= 60 s wall on an H100 / H200): .gpu/conv6.py under a hard 60 s timeout; its own
# budget is CONV6_S (default 55): copy bandwidth, fp64 checks, then fwd+bwd at B8 D2304 L8192 W4 bf16 (default vs
# RESET counters and forward / backward variants, eager and CUDA graph, interleaved rounds, medians), host cost
# per call, W8 and B1 L131072 forward records. Run from the repo root with $OUT and PYTHONPATH set.
# The new GPU tests (not in this budget, ~30-60 s): python3 -m pytest tests/test_conv1d.py -q -k "reset or fast_launch"
# (the rows backward on _bwd_row2 at the GPU shapes, longer: -k "rows" -n 8)
set -u
OUT=${OUT:-/tmp/conv6-out}
mkdir -p "$OUT"
timeout $(( ${CONV6_S:-55} + 5 )) python3 .gpu/conv6.py 2>&1 | tee "$OUT/conv6.txt" | grep -v "^\s*$" | cut -c1-240
echo "conv6.py rc=${PIPESTATUS[0]}"
