#!/bin/bash
# attn (issue 5): GPU correctness of tests/test_attention.py (whole file, -n 8), then the variant sweep
# of bench/bench_attention.py at the three causal shapes with SDPA flash / cuDNN timed in the same run.
# Runs from the repo root after the wheel line; writes details under $OUT. About 140 s.
T0=$(date +%s)
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_attn_cache}
OUT=${OUT:-/tmp/attn_out}; mkdir -p $OUT
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# compile the sweep's variants (4 processes, tiny shapes) while the tests run
for i in 0 1 2 3; do
  timeout 75 python3 bench/bench_attention.py warm-sweep $i 4 > $OUT/warm$i.txt 2>&1 &
done
timeout 80 python3 -m pytest tests/test_attention.py -n 8 -q -rf -p no:cacheprovider > $OUT/tests.txt 2>&1
echo "tests rc=$? ($(( $(date +%s) - T0 )) s): $(grep -E 'passed|failed|error' $OUT/tests.txt | tail -1)"
grep -E "^FAILED|^ERROR" $OUT/tests.txt | head -8
wait
grep -l -E "Error|Traceback" $OUT/warm*.txt > /dev/null && echo "warm errors: $(grep -h -E '^[A-Za-z]*Error' $OUT/warm*.txt | sort | uniq -c | head -3)"
timeout 25 python3 bench/bench_attention.py host 2> $OUT/host_err.txt || tail -3 $OUT/host_err.txt
LEFT=$(( 148 - ($(date +%s) - T0) ))
echo "sweep (limit ${LEFT} s):"
timeout $LEFT python3 bench/bench_attention.py sweep $OUT 2> $OUT/sweep_err.txt
echo "sweep rc=$? total $(( $(date +%s) - T0 )) s"; tail -3 $OUT/sweep_err.txt
