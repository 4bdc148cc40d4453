#!/bin/bash
# SSD (issue 4), session 3 final call: the FINAL defaults only, <= 60 s wall (hard).
# (1) Kernels compiled first in 3 background processes (fwd+bwd, no-grad fwd, ssd_step; 18 s cap).
# (2) bench_ssd.py --final (36 s cap): B8 T8192 fwd (no grad) / fwd+bwd with do_bench and the CUDA-graph fwd,
#     checked first against the fp64 reference at B1 T4096; B1 T131072 and B2 T32768; ssd_step at batch 64;
#     per-kernel profile (host-free kernel sum) of the B8 T8192 fwd and fwd+bwd.
date -u +%T
SSD_VARIANTS=default timeout 18 python3 bench/bench_ssd.py --warm > /tmp/ssd_warm_a.txt 2>&1 &
timeout 18 python3 -c "
import sys; sys.path.insert(0, 'bench')
import bench_ssd as b, torch
b.step_table(3000.0)
" > /tmp/ssd_warm_b.txt 2>&1 &
wait
date -u +%T
SSD_GRAPH=1 timeout 36 python3 bench/bench_ssd.py --final 2>&1 \
  | grep -E "^\||^---|^   total|^ssd_step|^NVIDIA|GB/s|rror" | grep -v "^/" | cut -c1-400
date -u +%T
