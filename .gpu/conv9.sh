#!/bin/bash
# conv1d (issue 3) conv9, wave quantisation (<= 100 s wall on an H100 / H200): .gpu/conv9.py under a hard timeout of
# CONV9_S + 4 s; its own budget is CONV9_S (default 95): device, copy bandwidth, occupancy / waves per variant, fp64
# checks and determinism, forward and backward alone (default vs the forward's UNEVEN wave-sized grids, even-chunk
# controls, the backward's masked walk and R4), then forward + backward through autograd (eager and CUDA graph), then
# W8 and B1 L131072 forward records. CONV9_FWD / CONV9_BWD narrow the variants (e.g. CONV9_BWD=default,r4).
# Run from the repo root with $OUT and PYTHONPATH set. GPU test (not in this budget): python3 -m pytest
# tests/test_conv1d.py -q -k conv9
set -u
OUT=${OUT:-/tmp/conv9-out}
mkdir -p "$OUT"
timeout $(( ${CONV9_S:-95} + 4 )) python3 .gpu/conv9.py 2>&1 | tee "$OUT/conv9.txt" | grep -v "^\s*$" | cut -c1-240
echo "conv9.py rc=${PIPESTATUS[0]}"
