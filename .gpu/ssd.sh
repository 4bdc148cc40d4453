#!/bin/bash
# SSD (issue 4), session 3 round 2: benchmarks and profiles only (the lead runs tests/ separately), <= 80 s wall.
# Defaults now = round 1's "launch3" (BK_SCAN 32, 3 stages, dB/dC rows 128), measured in round 1.
# (1) The variants' kernels compile first in background processes (22 s cap, nothing timed meanwhile).
# (2) bench_ssd.py --session3 (52 s cap): ssd_step at batch 64 (public call and CUDA graph), per-kernel profile
#     of the default (fwd without grad, fwd+bwd; the profile total is the host-free kernel time), every variant
#     of $V at B8 T8192 (do_bench fwd / fwd+bwd, CUDA-graph fwd; each checked first against the fp64 reference
#     at B1 T4096: y, y without grad, worst gradient), B1 T131072 / B2 T32768 for the fastest fwd+bwd variant
#     and the default, the fastest one's profile. Peer not re-timed (session 2: 1.43 / 5.96 ms).
V="default,nograd16,hin16nog2,xwtf32,r1 bwd,r1 bwd dx8,r1 bwd tsum,tsum,split,mr,scan w8"
date -u +%T
IFS=',' read -ra VS <<< "$V"
for v in "${VS[@]}"; do
  SSD_VARIANTS="$v" timeout 22 python3 bench/bench_ssd.py --warm > "/tmp/ssd_warm_${v// /_}.txt" 2>&1 &
done
wait
date -u +%T
SSD_GRAPH=1 SSD_VARIANTS="$V" timeout 52 python3 bench/bench_ssd.py --session3 2>&1 \
  | grep -E "^\||^---|^   total|^ssd_step|^NVIDIA|GB/s|rror" | grep -v "^/" | cut -c1-400
date -u +%T
