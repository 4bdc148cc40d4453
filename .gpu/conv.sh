#!/bin/bash
# conv1d (issue 3) GPU round: correctness tests, then the benchmark sweep (defaults + every config in
# conv._fwd_configs() / conv._bwd_configs(), each checked against the fp64 reference before timing).
# Run from the repo root with $OUT set; whole script <= ~150 s. Full outputs under $OUT.
set -u
OUT=${OUT:-/tmp/conv-out}
mkdir -p "$OUT"
t0=$(date +%s)
# -v into the file: a run cut by the timeout still shows which tests passed or failed
timeout 80 python3 -m pytest tests/test_conv1d.py -n 8 -v -rf -p no:cacheprovider --durations=15 > "$OUT/tests.txt" 2>&1
rc=$?
echo "tests: rc=$rc in $(( $(date +%s) - t0 )) s: $(grep -c ' PASSED' "$OUT/tests.txt") passed," \
     "$(grep -c ' FAILED' "$OUT/tests.txt") failed, $(grep -c ' SKIPPED' "$OUT/tests.txt") skipped: $(tail -1 "$OUT/tests.txt" | cut -c1-100)"
grep -E "^(FAILED|ERROR)| FAILED| ERROR" "$OUT/tests.txt" | cut -c1-200 | head -12
left=$(( 148 - ($(date +%s) - t0) ))
echo "bench: $left s left (python bench/bench_conv1d.py --sweep)"
timeout "$left" python3 bench/bench_conv1d.py --sweep --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? after $(( $(date +%s) - t0 )) s"
grep -v "skipped (" "$OUT/bench.txt" | grep -v "^\s*$" | cut -c1-220 | tail -75
