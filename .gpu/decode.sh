#!/bin/bash
# decode (issue 6 speed): GPU tests of the decode kernels + generation, then per-op vs fused decode timings.
# Run from the repo root with $OUT set. <= 150 s.
set -u
OUT=${OUT:-/tmp/decode_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
t0=$(date +%s)
echo "## decode: GPU tests (tests/test_decode_kernels.py, tests/test_generation.py -k 'gpu_ or kernels_')"
timeout 60 python3 -m pytest tests/test_decode_kernels.py tests/test_generation.py -k "decode_gemv or attention_step or gpu_ or kernels_" \
  -n 8 -q -rf -p no:cacheprovider -v > "$OUT/tests.txt" 2>&1
echo "tests rc=$? passed=$(grep -c ' PASSED' "$OUT/tests.txt") failed=$(grep -c ' FAILED' "$OUT/tests.txt") ($(( $(date +%s) - t0 )) s)"
grep -E "^FAILED|Error|error:" "$OUT/tests.txt" | head -12
echo "## decode: profile (300m bf16 batch 1; perop = HYBRIDNA_FUSED_DECODE=0 path, fused = new)"
timeout $(( 145 - ($(date +%s) - t0) )) python3 bench/profile_decode.py --prompts 1024,131072 --gemv --prefill --top 10 \
  --json "$OUT/profile.json" 2>&1 | grep -v "^USDT\|Warning\|warn(" | tail -70
echo "profile rc=${PIPESTATUS[0]} total $(( $(date +%s) - t0 )) s"
