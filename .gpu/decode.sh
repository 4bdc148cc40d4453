#!/bin/bash
# decode (issue 6 speed): per-op vs fused decode timings first, then the GPU tests of the files touched.
# Run from the repo root with $OUT set. Must finish within 120 s (wrapped in timeout 125). One file under $OUT.
set -u
OUT=${OUT:-/tmp/decode_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
t0=$(date +%s)
echo "## decode: profile (300m bf16 batch 1; perop = HYBRIDNA_FUSED_DECODE=0 path, fused = new; graph ms = events over 100 replayed steps incl. host; GPU ms = profiler kernel sum)"
timeout 80 python3 bench/profile_decode.py --prompts 1024,131072 --gemv --prefill --top 8 2>&1 \
  | grep -v "^USDT\|Warning\|warn(\|^ *warnings\.\|^$" | tail -60
echo "profile rc=${PIPESTATUS[0]} ($(( $(date +%s) - t0 )) s)"
left=$(( 115 - ($(date +%s) - t0) ))
echo "## decode: GPU tests (tests/test_decode_kernels.py, tests/test_generation.py -k 'gpu_ or kernels_'), timeout ${left}s"
timeout $left python3 -m pytest tests/test_decode_kernels.py tests/test_generation.py -k "decode_gemv or attention_step or gpu_ or kernels_" \
  -n 8 -q -rf -p no:cacheprovider -v > "$OUT/tests.txt" 2>&1
echo "tests rc=$? passed=$(grep -c ' PASSED' "$OUT/tests.txt") failed=$(grep -c ' FAILED' "$OUT/tests.txt") ($(( $(date +%s) - t0 )) s total)"
grep -E "^FAILED|Error" "$OUT/tests.txt" | head -10
