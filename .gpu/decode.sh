#!/bin/bash
# decode (issue 6 speed), round 2: per-op vs fused vs fused+PDL decode timings first, then the GPU tests.
# Run from the repo root with $OUT set. Must finish within 120 s (wrapped in timeout 125). One file under $OUT.
set -u
OUT=${OUT:-/tmp/decode_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
t0=$(date +%s)
echo "## decode: 300m bf16 batch 1. perop = HYBRIDNA_FUSED_DECODE=0 path; fused = decode kernels, one graph; fusedpdl = + HYBRIDNA_DECODE_PDL=1"
echo "## graph ms = CUDA events over 100 replayed steps (host included, median of 5); GPU ms = torch.profiler kernel sum"
timeout 68 python3 -u bench/profile_decode.py --prompts 1024,131072 --modes perop,fused,fusedpdl --gen-modes fused,fusedpdl \
  --check-modes fusedpdl --tiles "4096,8;8192,8,p2;4096,8,p4" --prefill --top 9 2>&1 | grep -v "^USDT\|Warning\|warn(\|^ *warnings\.\|^$" | tail -45
echo "profile rc=${PIPESTATUS[0]} ($(( $(date +%s) - t0 )) s)"
left=$(( 116 - ($(date +%s) - t0) ))
echo "## decode: GPU tests (tests/test_decode_kernels.py, tests/test_generation.py -k 'gpu_ or kernels_'), timeout ${left}s"
timeout $left python3 -m pytest tests/test_decode_kernels.py tests/test_generation.py -k "decode_gemv or attention_step or sample_step or gpu_ or kernels_" \
  -n 8 -rf -p no:cacheprovider -v > "$OUT/tests.txt" 2>&1
echo "tests rc=$? passed=$(grep -c ' PASSED' "$OUT/tests.txt") failed=$(grep -c ' FAILED' "$OUT/tests.txt") ($(( $(date +%s) - t0 )) s total)"
grep -E "^FAILED|^ERROR|Error:" "$OUT/tests.txt" | head -10
grep -E "PASSED|FAILED" "$OUT/tests.txt" | grep -E "gpu_|kernels_" | sed 's/^.*:://' | head -14
