#!/bin/bash
# decode (issue 6 speed), round 2: benchmarks only (the lead runs tests/ separately). <= 80 s wall.
# perop = HYBRIDNA_FUSED_DECODE=0 path; fused = decode kernels, one graph per token (the default now);
# fusedpdl = fused + HYBRIDNA_DECODE_PDL=1 (programmatic dependent launch); "tile E,W[,pN]" rows =
# fusedpdl with HYBRIDNA_GEMV_TILE=E,W (weight elements per GEMV program, warps) [+ GEMV_PERSIST=N].
# graph ms = CUDA events over 100 replayed steps (median of 5); GPU ms = profiler kernel sum; host us = enqueue.
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-}
t0=$(date +%s)
timeout 77 python3 -u bench/profile_decode.py --prompts 1024,131072 --modes perop,fused,fusedpdl \
  --gen-modes fused,fusedpdl --check-modes fusedpdl --tiles "4096,8;4096,8,p4" --prefill --top 9 2>&1 \
  | grep -v "^USDT\|Warning\|warn(\|^ *warnings\.\|^$" | tail -45
echo "profile rc=${PIPESTATUS[0]} ($(( $(date +%s) - t0 )) s)"
